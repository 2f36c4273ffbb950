package forwarded

import (
	"net/http"
	"strings"
	"testing"
)

func req(remote string, xff ...string) *http.Request {
	r, _ := http.NewRequest(http.MethodGet, "/v2/", nil)
	r.RemoteAddr = remote
	for _, v := range xff {
		r.Header.Add(Header, v)
	}
	return r
}

// X-Forwarded-For counts only as far as trusted proxies wrote it.
func TestClient(t *testing.T) {
	trusted, err := Parse([]string{"10.1.0.0/16", "192.0.2.7"}, "http.trustedproxies")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		r       *http.Request
		want    string
		proxied bool
	}{
		{req("203.0.113.5:4000"), "203.0.113.5", false},
		{req("203.0.113.5:4000", "198.51.100.1"), "203.0.113.5", false},         // an untrusted peer's claim
		{req("10.1.2.3:4000", "198.51.100.1"), "198.51.100.1", true},            // a gateway's
		{req("10.1.2.3:4000", "6.6.6.6, 198.51.100.1"), "198.51.100.1", true},   // the client's own prefix ignored
		{req("10.1.2.3:4000", "198.51.100.1, 192.0.2.7"), "198.51.100.1", true}, // load balancer, then gateway
		{req("10.1.2.3:4000", "6.6.6.6", "198.51.100.1"), "198.51.100.1", true}, // two header lines
		{req("10.1.2.3:4000", "10.1.9.9"), "10.1.9.9", true},                    // all trusted: the first
		{req("10.1.2.3:4000", "junk, 10.1.9.9"), "10.1.9.9", true},              // garbage: the last hop known
		{req("10.1.2.3:4000"), "10.1.2.3", false},
		{req("[::ffff:10.1.2.3]:4000", "198.51.100.1"), "198.51.100.1", true},
	} {
		got, proxied := trusted.Client(tc.r)
		if got != tc.want || proxied != tc.proxied {
			t.Errorf("%s %q: %s %v, want %s %v", tc.r.RemoteAddr, tc.r.Header.Values(Header), got, proxied, tc.want, tc.proxied)
		}
	}
	if c, _ := Trusted(nil).Client(req("10.1.2.3:4000", "198.51.100.1")); c != "10.1.2.3" {
		t.Errorf("nothing trusted: %s", c)
	}
	if _, err := Parse([]string{"10.0.0.0/8", "gateway-1"}, "http.trustedproxies"); err == nil || !strings.Contains(err.Error(), "http.trustedproxies[1]") {
		t.Errorf("bad entry: %v", err)
	}
}

// A proxy passes on what a trusted proxy said, and only that.
func TestChain(t *testing.T) {
	trusted, _ := Parse([]string{"192.0.2.7"}, "k")
	if got := trusted.Chain(req("203.0.113.5:4000", "6.6.6.6")); got != "203.0.113.5" {
		t.Errorf("from a client: %q", got)
	}
	if got := trusted.Chain(req("192.0.2.7:4000", "198.51.100.1")); got != "198.51.100.1, 192.0.2.7" {
		t.Errorf("from the load balancer: %q", got)
	}
}
