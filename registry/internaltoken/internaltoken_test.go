package internaltoken

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// A single token (older configs) and a list of two both load; the first
// is the one sent, both are accepted, and nothing else is.
func TestTokens(t *testing.T) {
	var c struct {
		T Tokens `yaml:"internaltoken"`
	}
	if err := yaml.Unmarshal([]byte("internaltoken: only-one\n"), &c); err != nil || c.T.Current() != "only-one" || len(c.T) != 1 {
		t.Fatalf("single token: %v %q", err, c.T)
	}
	if err := yaml.Unmarshal([]byte("internaltoken: [new-token, old-token]\n"), &c); err != nil || c.T.Current() != "new-token" {
		t.Fatalf("two tokens: %v %q", err, c.T)
	}
	for got, want := range map[string]bool{"new-token": true, "old-token": true, "new-toke": false, "new-tokenx": false, "": false} {
		if c.T.Match(got) != want {
			t.Errorf("Match(%q) = %v", got, !want)
		}
	}
	if Tokens(nil).Match("") || Tokens(nil).Current() != "" {
		t.Error("no token configured matched or was sent")
	}
	if err := yaml.Unmarshal([]byte("internaltoken: {a: b}\n"), &c); err == nil || !strings.Contains(err.Error(), "internaltoken") {
		t.Errorf("a mapping: %v", err)
	}
	for _, bad := range []Tokens{{"a", "b", "c"}, {"a", "a"}, {""}, {" a"}} {
		if err := bad.Check("cluster.internaltoken"); err == nil || !strings.HasPrefix(err.Error(), "cluster.internaltoken: ") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if err := (Tokens{"a", "b"}).Check("k"); err != nil {
		t.Error(err)
	}
}

func TestSafe(t *testing.T) {
	for _, tc := range []struct {
		scheme, host string
		want         bool
	}{
		{"https", "gw.idc-b.example:443", true},
		{"http", "127.0.0.1:6001", true},
		{"http", "127.9.9.9", true},
		{"http", "[::1]:6001", true},
		{"http", "localhost:6001", true},
		{"http", "gw.idc-b.example:80", false},
		{"http", "10.0.0.5:6001", false},
		{"http", "localhost.evil.example", false},
		{"ftp", "127.0.0.1", false},
	} {
		if got := Safe(tc.scheme, tc.host); got != tc.want {
			t.Errorf("Safe(%s, %s) = %v", tc.scheme, tc.host, got)
		}
	}
}
