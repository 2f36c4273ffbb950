package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestExampleConfig(t *testing.T) {
	c, err := load("../../../configs/mirror.yml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Registry.URL != "http://127.0.0.1:5000" || c.Worker.Lease != 30*time.Second || c.Worker.Parallel != 8 {
		t.Errorf("example config read as %+v", c)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	base := "database: {url: postgres://x}\nadmin: {token: 0123456789abcdef}\n"
	for text, key := range map[string]string{
		base:                                "registry.url",
		base + "registry: {url: ftp://x}\n": "registry.url",
		base + "registry: {url: http://x, username: u}\n":                       "registry.password",
		base + "registry: {url: http://x}\nworker: {lease: 1s}\n":               "worker.lease",
		base + "registry: {url: http://x}\nworker: {colour: red}\n":             "colour",
		base + "registry: {url: http://x}\nhttp: {tls: {certificate: a.pem}}\n": "http.tls",
		base + "registry: {url: https://x, tls: {ca: /nonexistent.pem}}\n":      "registry.tls.ca",
	} {
		p := filepath.Join(t.TempDir(), "c.yml")
		os.WriteFile(p, []byte(text), 0o644)
		if _, err := load(p); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%q: got %v, want an error naming %s", text, err, key)
		}
	}
	p := filepath.Join(t.TempDir(), "c.yml")
	os.WriteFile(p, []byte(base+"worker: {disabled: true}\n"), 0o644)
	if _, err := load(p); err != nil {
		t.Errorf("admin API only: %v", err)
	}
}
