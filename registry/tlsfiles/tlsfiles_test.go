package tlsfiles

import (
	"crypto/tls"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gaia-registry/gaia/tests/testca"
)

// served is the common name of the certificate a new connection to url
// is shown.
func served(t *testing.T, ca *testca.CA, url string) string {
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

func gauge(t *testing.T, r *Reloader, name string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(r)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if m.Gauge != nil {
				return m.Gauge.GetValue()
			}
			return m.Counter.GetValue()
		}
	}
	t.Fatalf("no %s", name)
	return 0
}

// A replaced certificate is served from the next handshake on; a pair
// that does not load keeps the previous one in use, and is counted.
func TestReload(t *testing.T) {
	ca := testca.New(t)
	cert, key := ca.LeafFiles(t, "first")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := Load(Config{Certificate: cert, Key: key}, "http.tls", "test", log)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler(), TLSConfig: r.ServerConfig(), ErrorLog: stdlog.New(io.Discard, "", 0)}
	go srv.ServeTLS(ln, "", "")
	defer srv.Close()
	url := "https://" + ln.Addr().String()
	if cn := served(t, ca, url); cn != "first" {
		t.Fatalf("served %q", cn)
	}
	second := ca.Leaf(t, cert, key, "second")
	if cn := served(t, ca, url); cn != "second" {
		t.Fatalf("after replacing the files: served %q", cn)
	}
	if exp := gauge(t, r, "test_tls_certificate_expiry_timestamp_seconds"); exp != float64(second.NotAfter.Unix()) {
		t.Fatalf("expiry %v, want the second certificate's %v", exp, second.NotAfter.Unix())
	}
	// A key that does not match the certificate: the second one stays.
	_, otherKey := ca.LeafFiles(t, "third")
	k, _ := os.ReadFile(otherKey)
	if err := os.WriteFile(key, k, 0o600); err != nil {
		t.Fatal(err)
	}
	if cn := served(t, ca, url); cn != "second" {
		t.Fatalf("after a bad key: served %q", cn)
	}
	if n := gauge(t, r, "test_tls_certificate_reload_errors_total"); n != 1 {
		t.Fatalf("reload errors: %v", n)
	}

	if _, err := Load(Config{Certificate: key, Key: cert}, "http.tls", "test", log); err == nil || !strings.HasPrefix(err.Error(), "http.tls: ") {
		t.Fatalf("swapped files: %v", err)
	}
	if err := (Config{Certificate: cert}).Check("http.tls"); err == nil || !strings.HasPrefix(err.Error(), "http.tls: ") {
		t.Fatalf("no key: %v", err)
	}
	if _, err := ClientConfig(cert+".missing", "servers.tls.ca"); err == nil || !strings.HasPrefix(err.Error(), "servers.tls.ca: ") {
		t.Fatalf("missing CA file: %v", err)
	}
	if _, err := ClientConfig(key, "servers.tls.ca"); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("a key as CA: %v", err)
	}
	if c, err := ClientConfig(ca.CertFile, "k"); err != nil || c.RootCAs == nil || c.MinVersion != tls.VersionTLS12 {
		t.Fatalf("CA bundle: %v", err)
	}
}
