package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/registry/internaltoken"
	"github.com/gaia-registry/gaia/tests/harness"
	"github.com/gaia-registry/gaia/tests/testca"
)

// sentReq is what a test server was sent.
type sentReq struct {
	method, path, xff, token string
	tls, close               bool
	body                     int64
}

type sentLog struct {
	mu   sync.Mutex
	reqs []sentReq
}

func (rc *sentLog) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.reqs)
}

func (rc *sentLog) last() sentReq {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.reqs) == 0 {
		return sentReq{}
	}
	return rc.reqs[len(rc.reqs)-1]
}

// fakeRegistry answers blob GETs with blob, upload PATCHes with 202 and
// everything else with a small 200, recording each request.
func fakeRegistry(rc *sentLog, blob []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		rc.mu.Lock()
		rc.reqs = append(rc.reqs, sentReq{method: r.Method, path: r.URL.Path, xff: r.Header.Get("X-Forwarded-For"),
			token: r.Header.Get(internaltoken.Header), tls: r.TLS != nil, close: r.Close, body: n})
		rc.mu.Unlock()
		switch {
		case strings.Contains(r.URL.Path, "/blobs/uploads/"):
			w.Header().Set("Location", r.URL.Path)
			w.WriteHeader(http.StatusAccepted)
		case strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet:
			w.Header().Set("Content-Length", fmt.Sprint(len(blob)))
			w.Write(blob)
		default:
			w.Write([]byte("{}"))
		}
	})
}

// httpsUpstream serves h over TLS with a certificate of ca.
func httpsUpstream(t *testing.T, ca *testca.CA, id string, h http.Handler) *Upstream {
	certFile, keyFile := ca.LeafFiles(t, id)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, ErrorLog: stdlog.New(io.Discard, "", 0)}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return &Upstream{ID: id, Addr: ln.Addr().String(), IDC: "idc-a", Scheme: "https"}
}

func configFrom(t *testing.T, text string) *Config {
	t.Helper()
	p := filepath.Join(t.TempDir(), "gw.yml")
	os.WriteFile(p, []byte("idc: idc-a\nconsul: {addr: 127.0.0.1:1}\n"+text), 0o644)
	cfg, err := LoadConfig(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// serveTLS runs g.Serve until the test ends and waits until it answers.
func serveTLS(t *testing.T, g *Gateway, client *http.Client) string {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	base := "https://" + g.cfg.HTTP.Addr
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := client.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			return base
		}
		select {
		case err := <-done:
			t.Fatalf("Serve: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not serving TLS: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func servedName(t *testing.T, ca *testca.CA, url string) string {
	t.Helper()
	client := ca.Client()
	client.Transport.(*http.Transport).DisableKeepAlives = true
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.TLS.PeerCertificates[0].Subject.CommonName
}

// TLS end to end through the gateway: it terminates TLS with the
// configured certificate (and the replacement, once the files are
// replaced), and speaks TLS to a server registered as https, verified
// with servers.tls.ca, on every path: large blob downloads and uploads
// (spliced, on connections of their own) as well as ordinary requests.
func TestTLSEndToEnd(t *testing.T) {
	ca := testca.New(t)
	blob := make([]byte, 3<<20)
	rand.Read(blob)
	var rc sentLog
	u := httpsUpstream(t, ca, "s1", fakeRegistry(&rc, blob))
	cert, key := ca.LeafFiles(t, "gateway-1")
	addr := harness.FreeAddr(t)
	cfg := configFrom(t, fmt.Sprintf("http: {addr: %s, draintimeout: 5s, tls: {certificate: %s, key: %s}}\nservers: {tls: {ca: %s}}\n",
		addr, cert, key, ca.CertFile))
	g := New(cfg, quiet())
	g.SetUpstreams([]*Upstream{u})
	client := ca.Client() // HTTP/1.1, as docker speaks to registries
	base := serveTLS(t, g, client)

	if cn := servedName(t, ca, base+"/healthz"); cn != "gateway-1" {
		t.Fatalf("gateway serves %q", cn)
	}
	if resp, err := http.Get("http://" + addr + "/v2/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain http served on the TLS listener")
		}
	}

	resp, err := client.Get(base + "/v2/x/blobs/sha256:abc")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, blob) {
		t.Fatalf("blob GET: %d, %d bytes, %v", resp.StatusCode, len(got), err)
	}
	// Connection: close is what the splice path sends: the download took
	// it, over TLS.
	if s := rc.last(); !s.tls || !s.close || s.method != "GET" {
		t.Fatalf("blob GET reached the server as %+v", s)
	}
	req, _ := http.NewRequest(http.MethodPatch, base+"/v2/x/blobs/uploads/1", bytes.NewReader(blob))
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if s := rc.last(); resp.StatusCode != 202 || !s.tls || !s.close || s.body != int64(len(blob)) {
		t.Fatalf("upload PATCH: %d, reached the server as %+v", resp.StatusCode, s)
	}
	resp, err = client.Get(base + "/v2/x/manifests/latest")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if s := rc.last(); resp.StatusCode != 200 || !s.tls || s.path != "/v2/x/manifests/latest" {
		t.Fatalf("manifest GET: %d, reached the server as %+v", resp.StatusCode, s)
	}

	// HTTP/2 clients (which the TLS listener offers) are proxied too.
	h2 := ca.Client()
	h2.Transport.(*http.Transport).ForceAttemptHTTP2 = true
	resp, err = h2.Get(base + "/v2/x/blobs/sha256:abc")
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.ProtoMajor != 2 || resp.StatusCode != 200 || !bytes.Equal(got, blob) || !rc.last().tls {
		t.Fatalf("blob GET over HTTP/2: %s %d, %d bytes, %v", resp.Proto, resp.StatusCode, len(got), err)
	}
	req, _ = http.NewRequest(http.MethodPatch, base+"/v2/x/blobs/uploads/1", bytes.NewReader(blob))
	if resp, err = h2.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if s := rc.last(); resp.ProtoMajor != 2 || resp.StatusCode != 202 || !s.tls || s.body != int64(len(blob)) {
		t.Fatalf("upload PATCH over HTTP/2: %s %d, reached the server as %+v", resp.Proto, resp.StatusCode, s)
	}

	// A renewed certificate: the next connection gets it.
	ca.Leaf(t, cert, key, "gateway-2")
	if cn := servedName(t, ca, base+"/healthz"); cn != "gateway-2" {
		t.Fatalf("after replacing the files the gateway serves %q", cn)
	}
	if v := harness.MetricVia(t, client, base, "gaia_gateway_tls_certificate_expiry_timestamp_seconds"); v < float64(time.Now().Unix()) {
		t.Fatalf("certificate expiry metric: %v", v)
	}

	// Without servers.tls.ca the server's certificate is not trusted:
	// nothing is sent to it.
	g2 := New(testConfig("local"), quiet())
	g2.SetUpstreams([]*Upstream{u})
	n := rc.count()
	for _, path := range []string{"/v2/x/manifests/latest", "/v2/x/blobs/sha256:abc"} {
		resp, err := http.Get(serve(t, g2) + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("%s to an unverified server: %d", path, resp.StatusCode)
		}
	}
	if rc.count() != n {
		t.Fatal("a request reached a server whose certificate failed verification")
	}

	// Bad certificate files stop the start, naming the key.
	bad := configFrom(t, fmt.Sprintf("http: {addr: %s, tls: {certificate: %s, key: %s}}\n", harness.FreeAddr(t), key, cert))
	if err := New(bad, quiet()).Serve(context.Background()); err == nil || !strings.HasPrefix(err.Error(), "http.tls: ") {
		t.Fatalf("swapped certificate and key: %v", err)
	}
	for text, want := range map[string]string{
		"http: {tls: {certificate: a.pem}}\n":         "http.tls: certificate and key go together",
		"servers: {tls: {ca: /nonexistent/ca.pem}}\n": "servers.tls.ca: ",
		"http: {trustedproxies: [lb.example]}\n":      "http.trustedproxies[0]",
	} {
		p := filepath.Join(t.TempDir(), "gw.yml")
		os.WriteFile(p, []byte("idc: idc-a\nconsul: {addr: x}\n"+text), 0o644)
		if _, err := LoadConfig(p, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", text, err, want)
		}
	}
}

// Servers are told the client's address: X-Forwarded-For as sent by a
// trusted proxy is kept and extended; anybody else's is replaced.
func TestForwardedFor(t *testing.T) {
	var rc sentLog
	u := upstreamOf(t, "a1", "idc-a", fakeRegistry(&rc, nil))
	for _, tc := range []struct{ trusted, want string }{
		{"", "127.0.0.1"},
		{"http: {trustedproxies: [127.0.0.0/8]}\n", "203.0.113.9, 127.0.0.1"},
	} {
		g := New(configFrom(t, tc.trusted), quiet())
		g.SetUpstreams([]*Upstream{u})
		req, _ := http.NewRequest(http.MethodGet, serve(t, g)+"/v2/x/manifests/latest", nil)
		req.Header.Set("X-Forwarded-For", "203.0.113.9")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := rc.last().xff; got != tc.want {
			t.Errorf("trusted %q: server got X-Forwarded-For %q, want %q", tc.trusted, got, tc.want)
		}
	}
}

// The internal token is forwarded to a server over https or on loopback,
// never to a plain-http server elsewhere.
func TestInternalTokenStaysOffPlainNetworks(t *testing.T) {
	var rc sentLog
	local := upstreamOf(t, "local", "idc-a", fakeRegistry(&rc, nil))
	// A server registered at a routable address, reached (by this test's
	// dialer) at the test server.
	remote := &Upstream{ID: "remote", Addr: "192.0.2.10:5000", IDC: "idc-a", Scheme: "http"}
	g := New(testConfig("local"), quiet())
	g.transport.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, local.Addr)
	}
	base := serve(t, g)
	for _, tc := range []struct {
		u    *Upstream
		want string
	}{{local, "tok"}, {remote, ""}} {
		g.SetUpstreams([]*Upstream{tc.u})
		req, _ := http.NewRequest(http.MethodHead, base+"/v2/x/blobs/sha256:abc", nil)
		req.Header.Set(internaltoken.Header, "tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if s := rc.last(); resp.StatusCode != 200 || s.token != tc.want {
			t.Errorf("to %s: %d, token %q reached it, want %q", tc.u.Addr, resp.StatusCode, s.token, tc.want)
		}
	}
}
