package harness

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/tests/testca"
)

var (
	buildMu sync.Mutex
	built   = map[string]string{}
	binDir  string
)

// Binary builds a command of this repository once per test process
// (`go build`) and returns its path.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	if binDir == "" {
		d, err := os.MkdirTemp("", "gaia-bin-")
		if err != nil {
			t.Fatal(err)
		}
		binDir = d
	}
	out := filepath.Join(binDir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out
}

// FreeAddr returns a loopback address nothing listens on right now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Registry is a gaia-registry serve process.
type Registry struct {
	Addr    string // host:port
	LogPath string
	// SignalExitOK: a process that dies of SIGTERM instead of exiting 0
	// (the stock registry) counts as stopped cleanly.
	SignalExitOK bool
	// Client reaches the daemon (for one serving TLS: trusting its CA).
	Client *http.Client
	scheme string
	cmd    *exec.Cmd
	exited chan error
	mu     sync.Mutex
	killed bool
}

// URL is the registry's base URL.
func (r *Registry) URL() string { return r.scheme + "://" + r.Addr }

// Metric is the package's Metric, scraped with r.Client.
func (r *Registry) Metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	return MetricVia(t, r.Client, r.URL(), name, labels...)
}

// Log returns what the server has logged so far.
func (r *Registry) Log() string {
	b, _ := os.ReadFile(r.LogPath)
	return string(b)
}

// RegistryConfig is the usual test config: filesystem storage at root
// (or the storage YAML given), deletes on, the database migrated at start.
func RegistryConfig(addr, dbURL, storage string) string {
	if !strings.Contains(storage, ":") {
		storage = fmt.Sprintf("filesystem: {rootdirectory: %q}", storage)
	}
	return fmt.Sprintf(`log: {level: warn, formatter: json}
http: {addr: %s, draintimeout: 10s}
storage:
  %s
  delete: {enabled: true}
database: {url: %q, migrate: true}
`, addr, storage, dbURL)
}

// StartRegistry runs `gaia-registry serve` with the config text (whose
// http.addr must be addr) and waits until /readyz answers. The process is
// stopped gracefully at the end of the test; a non-zero exit fails it.
func StartRegistry(t testing.TB, addr, config string) *Registry {
	t.Helper()
	return StartDaemon(t, "./registry/cmd/gaia-registry", []string{"serve"}, addr, config)
}

// StartGateway runs `gaia-gateway` likewise (ready: it has heard from
// Consul and, with failover local, knows a server of its IDC).
func StartGateway(t testing.TB, addr, config string) *Registry {
	t.Helper()
	return StartDaemon(t, "./registry/cmd/gaia-gateway", nil, addr, config)
}

// StartDaemon runs a daemon of this repository (`go build` of pkg) with
// args and --config, and waits until addr answers /readyz.
func StartDaemon(t testing.TB, pkg string, args []string, addr, config string) *Registry {
	t.Helper()
	return startDaemon(t, pkg, args, addr, config, "http", http.DefaultClient)
}

// StartTLSDaemon is StartDaemon for a daemon serving HTTPS with a
// certificate of ca (its URL is https://, its Client trusts ca).
func StartTLSDaemon(t testing.TB, pkg string, args []string, addr, config string, ca *testca.CA) *Registry {
	t.Helper()
	return startDaemon(t, pkg, args, addr, config, "https", ca.Client())
}

func startDaemon(t testing.TB, pkg string, args []string, addr, config, scheme string, client *http.Client) *Registry {
	t.Helper()
	bin := Binary(t, pkg)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return startProcess(t, bin, append(args, "--config", cfgPath), nil, addr, "/readyz",
		func(code int) bool { return code == http.StatusOK }, scheme, client)
}

// StartProcess runs bin with args, logging to a file, and waits until
// http://addr+readyPath answers a status ready accepts. The process is
// stopped with SIGTERM at the end of the test; a non-zero exit fails it.
// env is added to the test's environment.
func StartProcess(t testing.TB, bin string, args, env []string, addr, readyPath string, ready func(int) bool) *Registry {
	t.Helper()
	return startProcess(t, bin, args, env, addr, readyPath, ready, "http", http.DefaultClient)
}

func startProcess(t testing.TB, bin string, args, env []string, addr, readyPath string, ready func(int) bool,
	scheme string, client *http.Client) *Registry {
	t.Helper()
	dir := t.TempDir()
	r := &Registry{Addr: addr, LogPath: filepath.Join(dir, "daemon.log"), exited: make(chan error, 1), Client: client, scheme: scheme}
	logFile, err := os.Create(r.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(bin)
	r.cmd = exec.Command(bin, args...)
	r.cmd.Stdout, r.cmd.Stderr = logFile, logFile
	r.cmd.Env = append(os.Environ(), env...)
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.exited <- r.cmd.Wait(); logFile.Close() }()
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("%s on %s: %v\n%s", name, addr, err, r.Log())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := r.Client.Get(r.URL() + readyPath)
		if err == nil {
			resp.Body.Close()
			if ready(resp.StatusCode) {
				return r
			}
		}
		select {
		case err := <-r.exited:
			r.exited <- err
			t.Fatalf("%s exited at start (%v); log:\n%s", name, err, r.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s on %s not ready after 60s; log:\n%s", name, addr, r.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop sends SIGTERM and waits for a clean exit (idempotent; a killed
// process counts as stopped).
func (r *Registry) Stop() error {
	if r.Killed() || r.cmd.ProcessState != nil {
		return nil
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-r.exited:
		r.exited <- err
		if err != nil && !(r.SignalExitOK && strings.Contains(err.Error(), "signal: terminated")) {
			return fmt.Errorf("exit after SIGTERM: %w", err)
		}
		return nil
	case <-time.After(30 * time.Second):
		r.cmd.Process.Kill()
		return fmt.Errorf("did not stop within 30s of SIGTERM")
	}
}

// Killed reports whether Kill was called.
func (r *Registry) Killed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.killed
}

// Kill stops the process with SIGKILL (a crash).
func (r *Registry) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.killed || r.cmd.ProcessState != nil {
		return
	}
	r.killed = true
	r.cmd.Process.Kill()
	<-r.exited
	r.exited <- nil
}

// GoTool installs a Go command at an exact module version (for example the
// OCI conformance suite) into the harness cache, once, and returns its
// path. It comes from the Go module proxy, like every other dependency.
func GoTool(t testing.TB, pkg, version string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	cache := os.Getenv("GAIA_CACHE_DIR")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "gaia")
	}
	out := filepath.Join(cache, "bin", filepath.Base(pkg)+"-"+version)
	if _, err := os.Stat(out); err == nil {
		return out
	}
	tmp, err := os.MkdirTemp("", "gaia-gotool-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("go", "install", pkg+"@"+version)
	cmd.Env = append(os.Environ(), "GOBIN="+tmp)
	cmd.Dir = tmp // outside this module: its go.mod must not interfere
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install %s@%s: %v\n%s", pkg, version, err, b)
	}
	os.MkdirAll(filepath.Dir(out), 0o755)
	if err := os.Rename(filepath.Join(tmp, filepath.Base(pkg)), out); err != nil {
		t.Fatal(err)
	}
	return out
}

// Alternator is a reverse proxy that sends request i to backend i mod n,
// so every multi-request flow (a chunked upload, push then pull) crosses
// servers. Bodies stream through.
type Alternator struct {
	URL     string // http://127.0.0.1:port
	proxies []*httputil.ReverseProxy
	next    atomic.Int64
	served  []atomic.Int64
}

// Alternate starts an Alternator over the backends' base URLs.
func Alternate(t testing.TB, backends ...string) *Alternator {
	t.Helper()
	a := &Alternator{served: make([]atomic.Int64, len(backends))}
	for _, b := range backends {
		u, err := url.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		p := httputil.NewSingleHostReverseProxy(u)
		p.FlushInterval = -1
		a.proxies = append(a.proxies, p)
	}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	a.URL = srv.URL
	return a
}

func (a *Alternator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	i := int(a.next.Add(1)) % len(a.proxies)
	a.served[i].Add(1)
	a.proxies[i].ServeHTTP(w, r)
}

// Served is how many requests each backend got.
func (a *Alternator) Served() []int64 {
	out := make([]int64, len(a.served))
	for i := range a.served {
		out[i] = a.served[i].Load()
	}
	return out
}

// Host is the proxy's host:port (what docker and skopeo are given).
func (a *Alternator) Host() string { return strings.TrimPrefix(a.URL, "http://") }

// Get fetches url and returns the status code and body.
func Get(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Metric scrapes base+"/metrics" and sums the samples of the named metric
// whose labels include every `key="value"` given.
func Metric(t testing.TB, base, name string, labels ...string) float64 {
	t.Helper()
	return MetricVia(t, http.DefaultClient, base, name, labels...)
}

// MetricVia is Metric with client.
func MetricVia(t testing.TB, client *http.Client, base, name string, labels ...string) float64 {
	t.Helper()
	v, err := ScrapeMetric(client, base, name, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// scrapeClient bounds a scrape: a daemon that stopped answering fails the
// scrape instead of hanging the test.
var scrapeClient = &http.Client{Timeout: 30 * time.Second}

// ScrapeMetric is Metric for goroutines other than the test's (which must
// not call t.Fatal): it returns the error instead. A nil client scrapes
// with a 30-second timeout.
func ScrapeMetric(client *http.Client, base, name string, labels ...string) (float64, error) {
	if client == nil || client == http.DefaultClient {
		client = scrapeClient
	}
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		return 0, fmt.Errorf("scrape %s: %w", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("scrape %s: %s", base, resp.Status)
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("scrape %s: %w", base, err)
	}
	var sum float64
	for _, line := range strings.Split(string(raw), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		metric, labelText, _ := strings.Cut(series, "{")
		if metric != name {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(labelText, l) {
				match = false
			}
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil && match {
			sum += v
		}
	}
	return sum, nil
}

// Signal sends sig to the process (SIGSTOP and SIGCONT: a paused daemon).
func (r *Registry) Signal(sig os.Signal) error {
	return r.cmd.Process.Signal(sig)
}
