// Package auth benchmarks the built-in token auth (issue 15 §5, make
// bench-auth), in one run on loopback with the test PostgreSQL:
//
//   - gaia-registry with auth.builtin (users, a private namespace and its
//     members made through the admin API) and the same registry with no
//     auth: manifest GET by tag at AUTH_BENCH_CLIENTS (32) keep-alive
//     clients, with a valid Bearer token vs none; the token service's
//     issue rate (GET /auth/token, Basic credentials, one repository
//     scope) for one user over and over (the password check cached) and
//     for AUTH_BENCH_USERS (64) users logging in once each (bcrypt);
//   - the stock distribution registry with its token auth trusting the
//     JWKS our token service serves (/auth/jwks; our issuer signs the
//     tokens: no external token server could be built from the Go module
//     proxy, see docs/benchmarks.md) vs the stock registry with no auth;
//   - with AUTH_BENCH_BASELINE=<git revision>, gaia-registry with
//     auth.builtin built from that revision as one more target, for a
//     before/after of a change in the same run.
//
// Every target's rounds are interleaved (AUTH_BENCH_ROUNDS of
// AUTH_BENCH_DURATION each), so all see the same machine state; the ratios
// are what to read. AUTH_BENCH_CPUPROFILE=FILE writes a CPU profile of the
// auth registry during its first measured round (its http.debug.addr).
// Results go to the log (go test -v) and docs/benchmarks.md by hand.
package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/registry/tokenauth"
	"github.com/gaia-registry/gaia/tests/harness"
)

const (
	adminToken = "bench-admin-token"
	service    = "gaia-bench"
	issuer     = "gaia-bench-issuer"
	repo       = "bench/app"
	password   = "bench-password-1"
	mediaType  = "application/vnd.oci.image.manifest.v1+json"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// target is one registry under load.
type target struct {
	name  string
	base  string // http://host:port
	token string // Bearer token for manifest GETs ("" for none)
	debug string // host:port of its pprof, if any
}

func newClient(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        2 * conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}}
}

// result is one measured load: operations and their latencies.
type result struct {
	lats    []time.Duration
	elapsed time.Duration
}

func (r *result) add(o result) {
	r.lats = append(r.lats, o.lats...)
	r.elapsed += o.elapsed
}

func (r result) rate() float64 { return float64(len(r.lats)) / r.elapsed.Seconds() }

func (r result) pct(p float64) float64 {
	l := slices.Clone(r.lats)
	slices.Sort(l)
	return float64(l[min(len(l)-1, int(float64(len(l))*p))]) / 1e6
}

func (r result) String() string {
	if len(r.lats) == 0 {
		return "no operation"
	}
	return fmt.Sprintf("%d ops in %s: %.0f ops/s, p50 %.2f ms, p99 %.2f ms",
		len(r.lats), r.elapsed.Round(time.Millisecond), r.rate(), r.pct(0.50), r.pct(0.99))
}

// load runs c clients calling op (client index, operation number) until
// dur has passed or ops operations were started (ops <= 0: no bound);
// any error fails the benchmark.
func load(b *testing.B, c int, dur time.Duration, ops int, op func(g, i int) error) result {
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		mu    sync.Mutex
		all   []time.Duration
		first atomic.Pointer[error]
	)
	start := time.Now()
	deadline := start.Add(dur)
	for g := range c {
		wg.Go(func() {
			var mine []time.Duration
			for first.Load() == nil {
				t0 := time.Now()
				if dur > 0 && !t0.Before(deadline) {
					break
				}
				i := int(next.Add(1) - 1)
				if ops > 0 && i >= ops {
					break
				}
				if err := op(g, i); err != nil {
					first.CompareAndSwap(nil, &err)
					break
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if e := first.Load(); e != nil {
		b.Fatal(*e)
	}
	return result{lats: all, elapsed: time.Since(start)}
}

// manifestGet GETs the manifest by tag and checks status and length.
func manifestGet(client *http.Client, t *target, size int) error {
	req, _ := http.NewRequest(http.MethodGet, t.base+"/v2/"+repo+"/manifests/v1", nil)
	req.Header.Set("Accept", mediaType)
	if t.token != "" {
		req.Header.Set("Authorization", "Bearer "+t.token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("[%s] manifest GET: %w", t.name, err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || int(n) != size {
		return fmt.Errorf("[%s] manifest GET: %d, %d bytes (want 200, %d)", t.name, resp.StatusCode, n, size)
	}
	return nil
}

// getToken asks the token service at base for scope as user.
func getToken(client *http.Client, base, user, scope string) (string, error) {
	q := url.Values{"service": {service}, "scope": {scope}}
	req, _ := http.NewRequest(http.MethodGet, base+"/auth/token?"+q.Encode(), nil)
	req.SetBasicAuth(user, password)
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("token for %s: %w", user, err)
	}
	defer resp.Body.Close()
	var body struct{ Token string }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK || body.Token == "" {
		return "", fmt.Errorf("token for %s: %d (%v)", user, resp.StatusCode, err)
	}
	return body.Token, nil
}

// admin calls gaia's admin API and fails on anything but 2xx.
func admin(b *testing.B, base, method, path string, body any) {
	raw, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, base+"/admin/v1"+path, strings.NewReader(string(raw)))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		b.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, out)
	}
}

func writeFile(b *testing.B, name string, data []byte) string {
	p := filepath.Join(b.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		b.Fatal(err)
	}
	return p
}

// baselineBinary builds gaia-registry from git revision rev.
func baselineBinary(b *testing.B, rev string) string {
	dir := filepath.Join(b.TempDir(), "src")
	git := func(args ...string) {
		cmd := exec.Command("git", args...)
		cmd.Dir = harness.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	git("worktree", "add", "--detach", dir, rev)
	defer git("worktree", "remove", "--force", dir)
	out := filepath.Join(b.TempDir(), "gaia-registry-"+rev)
	cmd := exec.Command("go", "build", "-o", out, "./registry/cmd/gaia-registry")
	cmd.Dir = dir
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build %s: %v\n%s", rev, err, o)
	}
	return out
}

func BenchmarkAuth(b *testing.B) {
	harness.Start(b, harness.Postgres)
	c := envInt("AUTH_BENCH_CLIENTS", 32)
	dur := envDuration("AUTH_BENCH_DURATION", 3*time.Second)
	rounds := envInt("AUTH_BENCH_ROUNDS", 2)
	nUsers := envInt("AUTH_BENCH_USERS", 64)
	keyPEM, err := tokenauth.GenerateKeyPEM()
	if err != nil {
		b.Fatal(err)
	}
	keyFile := writeFile(b, "token.pem", keyPEM)
	client := newClient(c)
	ctx := context.Background()

	// gaia-registry with auth.builtin (decisioncache: the default 5s), its
	// pprof on a debug address.
	startAuth := func(name string, start func(addr, cfg string) *harness.Registry) *target {
		addr, debug := harness.FreeAddr(b), harness.FreeAddr(b)
		cfg := strings.Replace(harness.RegistryConfig(addr, harness.NewDatabase(b), b.TempDir()),
			"draintimeout: 10s}", fmt.Sprintf("draintimeout: 10s, debug: {addr: %s}}", debug), 1) +
			fmt.Sprintf(`admin: {token: %q}
auth:
  builtin: {realm: "http://%s/auth/token", service: %s, issuer: %s, signingkeys: [%q], tokenttl: 1h}
`, adminToken, addr, service, issuer, keyFile)
		reg := start(addr, cfg)
		base := reg.URL()
		admin(b, base, "POST", "/users", map[string]any{"name": "bench", "password": password})
		admin(b, base, "POST", "/namespaces", map[string]any{"name": "bench"})
		admin(b, base, "PUT", "/namespaces/bench/members/user/bench", map[string]string{"role": "maintainer"})
		return &target{name: name, base: base, debug: debug}
	}
	gaiaAuth := startAuth("gaia, builtin auth", func(addr, cfg string) *harness.Registry { return harness.StartRegistry(b, addr, cfg) })
	noAddr := harness.FreeAddr(b)
	gaiaNone := &target{name: "gaia, no auth",
		base: harness.StartRegistry(b, noAddr, harness.RegistryConfig(noAddr, harness.NewDatabase(b), b.TempDir())).URL()}
	targets := []*target{gaiaNone, gaiaAuth}
	if rev := os.Getenv("AUTH_BENCH_BASELINE"); rev != "" {
		bin := baselineBinary(b, rev)
		targets = append(targets, startAuth("gaia "+rev+", builtin auth", func(addr, cfg string) *harness.Registry {
			return harness.StartProcess(b, bin, []string{"serve", "--config", writeFile(b, "config.yml", []byte(cfg))}, nil,
				addr, "/readyz", func(code int) bool { return code == http.StatusOK })
		}))
	}

	// The stock registry: no auth, and token auth trusting our JWKS.
	stock := harness.StockRegistryBinary(b)
	resp, err := http.Get(gaiaAuth.base + "/auth/jwks")
	if err != nil {
		b.Fatal(err)
	}
	jwks, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	jwksFile := writeFile(b, "jwks.json", jwks)
	startStock := func(name, auth string) *target {
		addr := harness.FreeAddr(b)
		cfg := fmt.Sprintf(`version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: %q}
  delete: {enabled: true}
http: {addr: %s}
%s`, b.TempDir(), addr, auth)
		r := harness.StartProcess(b, stock, []string{"serve", writeFile(b, "config.yml", []byte(cfg))}, []string{"OTEL_TRACES_EXPORTER=none"},
			addr, "/v2/", func(code int) bool { return code == http.StatusOK || code == http.StatusUnauthorized })
		r.SignalExitOK = true
		return &target{name: name, base: r.URL()}
	}
	stockNone := startStock("stock "+harness.StockVersion+", no auth", "")
	stockAuth := startStock("stock "+harness.StockVersion+", token auth (our JWKS)",
		fmt.Sprintf("auth:\n  token: {realm: \"%s/auth/token\", service: %s, issuer: %s, jwks: %q}\n", gaiaAuth.base, service, issuer, jwksFile))
	targets = append(targets, stockNone, stockAuth)

	// One small image on every target (the token flow where there is auth),
	// and each auth target's Bearer token for the GETs.
	img := harness.NewTestImage("linux/amd64", harness.Layer(1, 1024))
	for _, t := range targets {
		o := upstream.Options{URL: t.base}
		if strings.Contains(t.name, "auth (") || strings.HasSuffix(t.name, "builtin auth") {
			o.Username, o.Password = "bench", password
			issuerBase := t.base
			if t == stockAuth {
				issuerBase = gaiaAuth.base
			}
			if t.token, err = getToken(client, issuerBase, "bench", "repository:"+repo+":pull"); err != nil {
				b.Fatal(err)
			}
		}
		if err := img.Push(ctx, upstream.New(o), repo, "v1"); err != nil {
			b.Fatalf("[%s] push: %v", t.name, err)
		}
		// Without the token the auth targets refuse the GET.
		if t.token != "" {
			tok := t.token
			t.token = ""
			if err := manifestGet(client, t, len(img.Manifest)); err == nil || !strings.Contains(err.Error(), ": 401,") {
				b.Fatalf("[%s] GET without a token: %v, want 401", t.name, err)
			}
			t.token = tok
		}
	}

	// Manifest GET by tag, c clients, rounds interleaved.
	b.Logf("manifest GET by tag (%d bytes), %d keep-alive clients, %d rounds of %s per target, interleaved", len(img.Manifest), c, rounds, dur)
	get := map[*target]*result{}
	for _, t := range targets {
		load(b, c, 500*time.Millisecond, 0, func(int, int) error { return manifestGet(client, t, len(img.Manifest)) }) // warm-up
		get[t] = &result{}
	}
	for r := range rounds {
		for i := range targets {
			t := targets[(i+r)%len(targets)]
			var prof chan []byte
			if p := os.Getenv("AUTH_BENCH_CPUPROFILE"); p != "" && r == 0 && t == gaiaAuth {
				prof = make(chan []byte, 1)
				go func() {
					resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", t.debug, int(dur.Seconds())))
					if err != nil {
						b.Error(err)
						prof <- nil
						return
					}
					data, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					prof <- data
				}()
			}
			res := load(b, c, dur, 0, func(int, int) error { return manifestGet(client, t, len(img.Manifest)) })
			if prof != nil {
				if data := <-prof; data != nil {
					os.WriteFile(os.Getenv("AUTH_BENCH_CPUPROFILE"), data, 0o644)
				}
			}
			b.Logf("  round %d %-45s %s", r+1, t.name, res)
			get[t].add(res)
		}
	}
	for _, t := range targets {
		b.Logf("manifest GET %-45s %s", t.name, get[t])
	}
	ratio := func(auth, none *target) string {
		a, n := get[auth], get[none]
		return fmt.Sprintf("throughput %.3f (auth costs %.1f%%), p50 %.2f×, p99 %.2f×",
			a.rate()/n.rate(), 100*(1-a.rate()/n.rate()), a.pct(0.5)/n.pct(0.5), a.pct(0.99)/n.pct(0.99))
	}
	b.Logf("ratio auth/no auth, gaia:  %s", ratio(gaiaAuth, gaiaNone))
	if len(targets) == 5 {
		b.Logf("ratio auth/no auth, %s: %s", targets[2].name, ratio(targets[2], gaiaNone))
	}
	b.Logf("ratio auth/no auth, stock: %s", ratio(stockAuth, stockNone))
	b.Logf("gaia with auth vs stock with token auth: throughput %.2f×", get[gaiaAuth].rate()/get[stockAuth].rate())
	b.ReportMetric(get[gaiaAuth].rate()/get[gaiaNone].rate(), "auth/noauth")

	// Token issue: one user over and over (the password check is cached
	// for decisioncache), then nUsers logging in once each (bcrypt).
	scope := "repository:" + repo + ":pull"
	if _, err := getToken(client, gaiaAuth.base, "bench", scope); err != nil { // the password check cached
		b.Fatal(err)
	}
	same := load(b, c, time.Duration(rounds)*dur, 0, func(int, int) error {
		_, err := getToken(client, gaiaAuth.base, "bench", scope)
		return err
	})
	b.Logf("token issue, one user (cached password check), %d clients: %s", c, same)
	t0 := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range nUsers {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			u := fmt.Sprintf("user-%d", i)
			admin(b, gaiaAuth.base, "POST", "/users", map[string]any{"name": u, "password": password})
			admin(b, gaiaAuth.base, "PUT", "/namespaces/bench/members/user/"+u, map[string]string{"role": "guest"})
		}()
	}
	wg.Wait()
	b.Logf("(created %d users through the admin API in %s)", nUsers, time.Since(t0).Round(time.Millisecond))
	many := load(b, c, 0, nUsers, func(_, i int) error {
		_, err := getToken(client, gaiaAuth.base, fmt.Sprintf("user-%d", i), scope)
		return err
	})
	b.Logf("token issue, %d users' first logins (bcrypt each), %d clients: %s", nUsers, c, many)
	b.Logf("token issue, cached/first-login throughput: %.0f×", same.rate()/many.rate())
}
