package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gaia-registry/gaia/registry/uploadsession"
	"github.com/gaia-registry/gaia/tests/harness"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "registry.yml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const minimal = `
storage:
  filesystem: {rootdirectory: /tmp/x}
database: {url: "postgres://a@b/c"}
`

func TestLoadConfigEnvOverrides(t *testing.T) {
	p := writeConfig(t, minimal)
	cfg, err := LoadConfig(p, []string{
		"GAIA_HTTP_ADDR=0.0.0.0:5999",
		"GAIA_HTTP_DRAINTIMEOUT=3s",
		"GAIA_HTTP_BODYIDLETIMEOUT=7s",
		"GAIA_DATABASE_URL=postgres://other@host/db",
		"GAIA_DATABASE_MIGRATE=true",
		"GAIA_DATABASE_MAXCONNS=7",
		"GAIA_STORAGE_FILESYSTEM_ROOTDIRECTORY=/srv/blobs",
		"GAIA_STORAGE_DELETE_ENABLED=true",
		"GAIA_LOG_FORMATTER=json",
		"GAIA_TEST_PG_DSN=ignored",    // another program's variable
		"GAIA_MIRROR_WORKERS=ignored", // likewise
		"HOME=/root",
	})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := cfg.StorageConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTP.Addr != "0.0.0.0:5999" || cfg.HTTP.DrainTimeout != 3*time.Second ||
		cfg.HTTP.Timeouts.BodyIdleTimeout != 7*time.Second || cfg.HTTP.Timeouts.ReadHeaderTimeout != 30*time.Second ||
		cfg.Database.URL != "postgres://other@host/db" || !cfg.Database.Migrate || cfg.Database.MaxConns != 7 ||
		cfg.Log.Formatter != "json" || cfg.Log.Level != "info" ||
		sc.Driver != "filesystem" || sc.Parameters["rootdirectory"] != "/srv/blobs" || !sc.Delete {
		t.Fatalf("overrides not applied: %+v %+v", cfg, sc)
	}
	if sc.UploadAge != 168*time.Hour || sc.UploadScan != time.Hour {
		t.Fatalf("upload purging defaults: %+v", sc)
	}
	if cfg.GC.Niceness() != 19 {
		t.Errorf("gc.nice defaults to %d, want 19", cfg.GC.Niceness())
	}
	cfg, err = LoadConfig(p, []string{"GAIA_GC_NICE=0"})
	if err != nil || cfg.GC.Niceness() != 0 {
		t.Errorf("GAIA_GC_NICE=0: niceness %d, err %v; want 0", cfg.GC.Niceness(), err)
	}
}

func TestLoadConfigErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{minimal + "htp: {}\n", "field htp not found"},
		{minimal + "http: {adr: x}\n", "field adr not found"},
		{"storage: {filesystem: {}}\n", "database.url: required"},
		{"database: {url: x}\n", "storage: no driver configured"},
		{"database: {url: x}\nstorage: {filesystem: {}, inmemory: {}}\n", "storage: two drivers"},
		{"database: {url: x}\nstorage: {filesystem: 3}\n", "storage.filesystem: parameters must be a mapping"},
		{minimal + "log: {level: loud}\n", "log.level"},
		{minimal + "log: {formatter: xml}\n", "log.formatter"},
		{minimal + "http: {tls: {certificate: a.pem}}\n", "http.tls"},
		{minimal + "http: {bodyidletimeout: -1s}\n", "http.bodyidletimeout: must not be negative"},
		{minimal + "http: {draintimeout: soon}\n", "line 5: cannot unmarshal !!str `soon` into time.Duration"},
		{"database: {url: x}\nstorage: {filesystem: {}, maintenance: {uploadpurging: {age: never}}}\n", "storage.maintenance.uploadpurging.age"},
		{minimal + "pullthrough: {maxwaiting: -1}\n", "pullthrough.maxwaiting"},
		{minimal + "gc: {nice: 20}\n", "gc.nice: 20 is not between 0 and 19"},
		{minimal + "gc: {nice: -5}\n", "gc.nice: -5 is not between 0 and 19"},
		{minimal + "pullthrough: {negativettl: -1s}\n", "pullthrough.negativettl"},
		{minimal + "cluster: {signingkeys: [short]}\n", "cluster.signingkeys: key 1 is 5 bytes"},
		{minimal + "cluster: {signingkeys: [0123456789abcdef, 0123456789abcdef]}\n", "cluster.signingkeys: the two tokens are the same"},
		{minimal + "cluster: {signingkeys: [a123456789abcdef, b123456789abcdef, c123456789abcdef]}\n", "cluster.signingkeys: 3 tokens"},
		// Settings of the wrong shape were once ignored.
		{"database: {url: x}\nstorage: {filesystem: {}, delete: true}\n", "storage.delete: must be a mapping"},
		{"database: {url: x}\nstorage: {filesystem: {}, delete: {enabled: yes please}}\n", "storage.delete.enabled"},
		{"database: {url: x}\nstorage: {filesystem: {}, maintenance: {uploadpurging: {age: 3600}}}\n", "storage.maintenance.uploadpurging.age"},
		{"database: {url: x}\nstorage: {filesystem: {}, maintenance: {uploadpurging: {enabled: no way}}}\n", "storage.maintenance.uploadpurging.enabled"},
		{"database: {url: x}\nstorage: {filesystem: {}, maintenance: [uploadpurging]}\n", "storage.maintenance: must be a mapping"},
	} {
		_, err := LoadConfig(writeConfig(t, tc.text), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: error %v, want one containing %q", tc.text, err, tc.want)
		}
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yml"), nil); err == nil {
		t.Error("a missing file loaded")
	}
}

// Every example config under configs/ loads.
func TestExampleConfigsLoad(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(harness.RepoRoot(), "configs", "registry*.yml"))
	if len(files) < 3 {
		t.Fatalf("example configs: %v", files)
	}
	for _, f := range files {
		if _, err := LoadConfig(f, nil); err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
		}
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testConfig(t *testing.T, db string, migrate bool) *Config {
	t.Helper()
	cfg, err := LoadConfig(writeConfig(t, fmt.Sprintf(`
http: {addr: %s, draintimeout: 20s}
storage: {filesystem: {rootdirectory: %q}, delete: {enabled: true}}
database: {url: %q, migrate: %v}
`, harness.FreeAddr(t), t.TempDir(), db, migrate)), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// A server refuses a database whose schema it does not match, unless told
// to migrate; it serves health, readiness and metrics; on shutdown it
// stops being ready at once and lets an in-flight upload finish.
func TestServeLifecycle(t *testing.T) {
	db := harness.NewDatabase(t)
	ctx := context.Background()
	if _, err := New(ctx, testConfig(t, db, false), quietLog()); err == nil || !strings.Contains(err.Error(), "gaia-registry migrate") {
		t.Fatalf("unmigrated database: %v", err)
	}
	bad := testConfig(t, "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2", true)
	if _, err := New(ctx, bad, quietLog()); err == nil || !strings.Contains(err.Error(), "database.url: cannot reach PostgreSQL") {
		t.Fatalf("unreachable database: %v", err)
	}

	cfg := testConfig(t, db, true)
	srv, err := New(ctx, cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(serveCtx) }()
	base := "http://" + cfg.HTTP.Addr
	waitReady(t, base)
	if code, body := harness.Get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := harness.Get(t, base+"/v2/"); code != 200 || body != "{}" {
		t.Fatalf("/v2/: %d %q", code, body)
	}
	if code, body := harness.Get(t, base+"/metrics"); code != 200 ||
		!strings.Contains(body, `gaia_registry_http_requests_total{code="200",method="GET",route="base"} 1`) ||
		!strings.Contains(body, "gaia_registry_db_pool_connections") {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}

	// An upload whose body is still arriving when shutdown begins.
	resp, err := http.Post(base+"/v2/life/cycle/blobs/uploads/", "", nil)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload: %v %v", resp, err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	deadline0 := time.Now().Add(10 * time.Second)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPatch, base+loc, pr)
	patched := make(chan *http.Response, 1)
	go func() {
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("in-flight PATCH failed: %v", err)
			patched <- nil
			return
		}
		patched <- r
	}()
	pw.Write([]byte("first half "))
	for { // until the server is inside the handler (the /metrics scrape itself is not an API request)
		if _, body := harness.Get(t, base+"/metrics"); strings.Contains(body, `gaia_registry_http_requests_in_flight{method="PATCH",route="upload"} 1`) {
			break
		}
		if time.Now().After(deadline0) {
			t.Fatal("the PATCH never reached the handler")
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop() // SIGTERM, in effect
	deadline := time.Now().Add(10 * time.Second)
	for srv.ready.Load() {
		if time.Now().After(deadline) {
			t.Fatal("still ready after shutdown began")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned (%v) with a request in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	pw.Write([]byte("second half"))
	pw.Close()
	r := <-patched
	if r == nil || r.StatusCode != http.StatusAccepted || r.Header.Get("Range") != "0-21" {
		t.Fatalf("in-flight PATCH after shutdown began: %+v", r)
	}
	r.Body.Close()
	if err := <-done; err != nil {
		t.Fatalf("Serve after graceful shutdown: %v", err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Fatal("still listening after Serve returned")
	}
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/readyz never 200", base)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readyz fails while PostgreSQL cannot be reached.
func TestReadyzChecksDatabase(t *testing.T) {
	db := harness.NewDatabase(t)
	cfg := testConfig(t, db, true)
	srv, err := New(context.Background(), cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	srv.ready.Store(true)
	h := srv.Handler()
	check := func() (int, string) {
		rec := &bodyRecorder{header: http.Header{}}
		req, _ := http.NewRequest(http.MethodGet, "/readyz", nil)
		h.ServeHTTP(rec, req)
		return rec.code, rec.body.String()
	}
	if code, body := check(); code != 200 {
		t.Fatalf("readyz: %d %s", code, body)
	}
	srv.pool.Close() // what an unreachable database looks like to the pool
	if code, body := check(); code != 503 || !strings.Contains(body, "database") {
		t.Fatalf("readyz with the database gone: %d %s", code, body)
	}
}

type bodyRecorder struct {
	header http.Header
	code   int
	body   strings.Builder
}

func (r *bodyRecorder) Header() http.Header { return r.header }
func (r *bodyRecorder) WriteHeader(c int) {
	if r.code == 0 {
		r.code = c
	}
}
func (r *bodyRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = 200
	}
	return r.body.Write(b)
}

// With http.tls the server speaks HTTPS with the configured certificate;
// bad certificate files fail at start, naming the key.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certPEM, keyPEM := selfSigned(t)
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certPath, certPEM, 0o644)
	os.WriteFile(keyPath, keyPEM, 0o600)

	db := harness.NewDatabase(t)
	cfg := testConfig(t, db, true)
	cfg.HTTP.TLS.Certificate, cfg.HTTP.TLS.Key = keyPath, certPath // swapped
	if _, err := New(context.Background(), cfg, quietLog()); err == nil || !strings.HasPrefix(err.Error(), "http.tls:") {
		t.Fatalf("swapped cert and key: %v", err)
	}
	cfg.HTTP.TLS.Certificate, cfg.HTTP.TLS.Key = certPath, keyPath
	srv, err := New(context.Background(), cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	var resp *http.Response
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err = client.Get("https://" + cfg.HTTP.Addr + "/v2/")
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil || resp.StatusCode != 200 || resp.TLS == nil {
		t.Fatalf("GET https /v2/: %v %v", resp, err)
	}
	resp.Body.Close()
	if resp, err := http.Get("http://" + cfg.HTTP.Addr + "/v2/"); err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP served on a TLS listener")
	}
}

func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// The upload purge removes sessions idle longer than the configured age,
// with their data, and counts them.
func TestPurgeUploads(t *testing.T) {
	db := harness.NewDatabase(t)
	cfg := testConfig(t, db, true)
	srv, err := New(context.Background(), cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.pool.Close()
	ctx := context.Background()
	sess, err := srv.uploads.Start(ctx, "purge/me")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.uploads.Append(ctx, "purge/me", sess.ID, 0, strings.NewReader("partial")); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(cfg.Storage["filesystem"].(map[string]any)["rootdirectory"].(string), "uploads", sess.ID)
	if _, err := os.Stat(data); err != nil {
		t.Fatalf("session data not where expected: %v", err)
	}
	fresh, _ := srv.uploads.Start(ctx, "purge/me")
	pool, _ := pgxpool.New(ctx, db)
	defer pool.Close()
	if _, err := pool.Exec(ctx, `UPDATE upload_sessions SET updated_at = now() - interval '2 hours' WHERE id = $1`, sess.ID); err != nil {
		t.Fatal(err)
	}
	srv.storage.UploadAge, srv.storage.UploadScan = time.Hour, time.Hour
	bg, cancel := context.WithCancel(ctx)
	go srv.purgeUploads(bg) // runs once at start, then waits an hour
	// A purge is counted once its rows and its data are gone.
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(srv.metrics.uploadsPurged) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle session not purged (gaia_registry_uploads_purged_total still 0)")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if n := testutil.ToFloat64(srv.metrics.uploadsPurged); n != 1 {
		t.Fatalf("gaia_registry_uploads_purged_total = %v; want 1", n)
	}
	if _, err := srv.uploads.Get(ctx, "purge/me", sess.ID); !errors.Is(err, uploadsession.ErrUnknown) {
		t.Fatalf("purged session: %v; want ErrUnknown", err)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Fatalf("purged session's data: %v; want it gone", err)
	}
	if _, err := srv.uploads.Get(ctx, "purge/me", fresh.ID); err != nil {
		t.Fatalf("fresh session purged: %v", err)
	}
}

// With HDFS storage, /metrics reports the driver's client pool: its cap
// (storage.hdfs.maxclients) and its clients, counted as a call uses them.
func TestHDFSPoolMetrics(t *testing.T) {
	db := harness.NewDatabase(t)
	nn := harness.Start(t, harness.HDFS).Get(t, "GAIA_TEST_HDFS_NAMENODE")
	cfg, err := LoadConfig(writeConfig(t, fmt.Sprintf(`
http: {addr: %s}
storage: {hdfs: {namenodes: [%q], rootdirectory: /gaia-test/server-metrics-%d, user: gaia, replication: 1, maxclients: 7}}
database: {url: %q, migrate: true}
`, harness.FreeAddr(t), nn, time.Now().UnixNano(), db)), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(context.Background(), cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.pool.Close()
	scrape := func() string {
		rec := &bodyRecorder{header: http.Header{}}
		srv.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		return rec.body.String()
	}
	body := scrape()
	for _, want := range []string{
		"gaia_registry_hdfs_max_clients 7",
		`gaia_registry_hdfs_clients{state="in_use"} 0`,
		`gaia_registry_hdfs_clients{state="idle"} 1`, // the one that made the root directory
		"gaia_registry_hdfs_clients_created_total 1",
		"gaia_registry_hdfs_client_waiters 0",
		"gaia_registry_hdfs_client_waits_total 0",
		"gaia_registry_hdfs_clients_replaced_total 0",
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		t.Fatalf("/metrics:\n%s", body)
	}
}

// The staging data of a cross-IDC fill whose server was killed mid-copy
// is removed by the purge every server runs at start and then each
// interval, and counted; an upload session's data beside it stays.
func TestPurgeSweepsFills(t *testing.T) {
	db := harness.NewDatabase(t)
	cfg := testConfig(t, db, true)
	srv, err := New(context.Background(), cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.pool.Close()
	defer srv.lockPool.Close()
	ctx := context.Background()
	sess, err := srv.uploads.Start(ctx, "fills/here")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.uploads.Append(ctx, "fills/here", sess.ID, 0, strings.NewReader("partial")); err != nil {
		t.Fatal(err)
	}
	uploads := filepath.Join(cfg.Storage["filesystem"].(map[string]any)["rootdirectory"].(string), "uploads")
	fill := filepath.Join(uploads, "fill-sha256-"+strings.Repeat("ab", 32)+"-0011223344556677")
	if err := os.MkdirAll(fill, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fill, "data"), []byte("half a layer"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv.storage.UploadScan = time.Hour
	bg, cancel := context.WithCancel(ctx)
	defer cancel()
	go srv.purgeUploads(bg) // runs once at start, then waits an hour
	// Counted once removed: wait for the count.
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec := &bodyRecorder{header: http.Header{}}
		srv.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		if strings.Contains(rec.body.String(), "gaia_registry_fills_swept_total 1\n") {
			break
		}
		if time.Now().After(deadline) {
			_, err := os.Stat(fill)
			t.Fatalf("no sweep counted after 10s (the fill's data: %v)", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.Stat(fill); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the interrupted fill's data is still in storage: %v", err)
	}
	if _, err := os.Stat(filepath.Join(uploads, sess.ID)); err != nil {
		t.Fatalf("the upload session's data went too: %v", err)
	}
}
