// Package tlsfiles is the daemons' TLS from files: the `http.tls` section
// (a certificate and key served, picked up again when the files are
// replaced, so a renewed certificate needs no restart) and the CA bundles
// their TLS clients verify peers with.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config is an `http.tls` section: PEM files, both or neither.
type Config struct {
	Certificate string `yaml:"certificate"`
	Key         string `yaml:"key"`
}

// Enabled: the daemon serves HTTPS.
func (c Config) Enabled() bool { return c.Certificate != "" }

// Check validates the section; key is its name in the file (http.tls).
func (c Config) Check(key string) error {
	if (c.Certificate == "") != (c.Key == "") {
		return fmt.Errorf("%s: certificate and key go together", key)
	}
	return nil
}

// stamp identifies a version of the two files.
type stamp struct {
	certMod, keyMod   time.Time
	certSize, keySize int64
}

func stat(c Config) (stamp, error) {
	cf, err := os.Stat(c.Certificate)
	if err != nil {
		return stamp{}, err
	}
	kf, err := os.Stat(c.Key)
	if err != nil {
		return stamp{}, err
	}
	return stamp{cf.ModTime(), kf.ModTime(), cf.Size(), kf.Size()}, nil
}

// Reloader serves the certificate in the files. Each handshake stats
// both files (a trifle next to the handshake) and reloads them when
// either changed; a pair that does not load (half replaced, a bad file)
// leaves the previous certificate in use and is logged once per change.
type Reloader struct {
	cfg  Config
	key  string
	log  *slog.Logger
	mu   sync.Mutex
	seen stamp // the files' version last tried
	cert *tls.Certificate

	expiry   *prometheus.Desc
	failures *prometheus.Desc
	nfail    float64
}

// Load reads the pair (an error names key, e.g. "http.tls") and returns
// a Reloader whose metrics are named after namespace (gaia_gateway, ...).
func Load(c Config, key, namespace string, log *slog.Logger) (*Reloader, error) {
	st, err := stat(c)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	cert, err := tls.LoadX509KeyPair(c.Certificate, c.Key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return &Reloader{
		cfg: c, key: key, log: log, seen: st, cert: &cert,
		expiry: prometheus.NewDesc(namespace+"_tls_certificate_expiry_timestamp_seconds",
			"When the served TLS certificate expires (Unix time).", nil, nil),
		failures: prometheus.NewDesc(namespace+"_tls_certificate_reload_errors_total",
			"Changed certificate or key files that could not be loaded (the previous certificate stays in use).", nil, nil),
	}, nil
}

// current reloads the pair if the files changed, and returns the
// certificate to serve.
func (r *Reloader) current() *tls.Certificate {
	st, err := stat(r.cfg)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil || st == r.seen {
		return r.cert // a file briefly missing mid-replacement: keep serving
	}
	r.seen = st
	cert, err := tls.LoadX509KeyPair(r.cfg.Certificate, r.cfg.Key)
	if err != nil {
		r.nfail++
		r.log.Warn("TLS certificate not reloaded: keeping the previous one", "key", r.key, "err", err)
		return r.cert
	}
	r.cert = &cert
	r.log.Info("TLS certificate reloaded", "key", r.key, "subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter)
	return r.cert
}

// ServerConfig is the listener's TLS: TLS 1.2 or later, the current
// certificate at each handshake.
func (r *Reloader) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.current(), nil },
	}
}

// Describe and Collect make the Reloader a Prometheus collector: the
// certificate's expiry (read fresh, so a renewal shows without traffic)
// and the reload failures.
func (r *Reloader) Describe(ch chan<- *prometheus.Desc) {
	ch <- r.expiry
	ch <- r.failures
}

func (r *Reloader) Collect(ch chan<- prometheus.Metric) {
	cert := r.current()
	r.mu.Lock()
	n := r.nfail
	r.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(r.expiry, prometheus.GaugeValue, float64(cert.Leaf.NotAfter.Unix()))
	ch <- prometheus.MustNewConstMetric(r.failures, prometheus.CounterValue, n)
}

// ClientConfig is a TLS client's configuration that verifies servers
// against the CA bundle in caFile (PEM), or against the system's roots
// when caFile is empty; errors name key.
func ClientConfig(caFile, key string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return c, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	c.RootCAs = x509.NewCertPool()
	if !c.RootCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: %s: %w", key, caFile, errors.New("no PEM certificate in it"))
	}
	return c, nil
}

// Serve runs srv on ln in the background: over TLS with r's certificate,
// or plain HTTP when r is nil. It returns the scheme served and the channel
// srv's Serve result arrives on.
func Serve(srv *http.Server, ln net.Listener, r *Reloader) (scheme string, done <-chan error) {
	errc := make(chan error, 1)
	if r == nil {
		go func() { errc <- srv.Serve(ln) }()
		return "http", errc
	}
	srv.TLSConfig = r.ServerConfig()
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	return "https", errc
}
