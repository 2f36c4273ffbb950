package gateway

import (
	"bytes"
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func testConfig(failover string) *Config {
	two := 2
	c := &Config{IDC: "idc-a", Failover: failover, Retries: &two}
	c.Eject.Failures, c.Eject.Duration = 2, time.Minute
	return c
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func upstreamOf(t *testing.T, id, idc string, h http.Handler) *Upstream {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &Upstream{ID: id, Addr: strings.TrimPrefix(srv.URL, "http://"), IDC: idc, Scheme: "http"}
}

// deadUpstream is an address nothing listens on.
func deadUpstream(t *testing.T, id string) *Upstream {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return &Upstream{ID: id, Addr: addr, IDC: "idc-a", Scheme: "http"}
}

func serve(t *testing.T, g *Gateway) string {
	srv := httptest.NewServer(g.Handler())
	t.Cleanup(srv.Close)
	return srv.URL
}

// A request that fails to connect goes to another server; the dead one is
// ejected after its consecutive failures; bodies that were never sent
// retry too.
func TestRetryAndEjection(t *testing.T) {
	var served atomic.Int64
	live := upstreamOf(t, "live", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Got", string(b))
		w.Write([]byte("ok"))
	}))
	dead := deadUpstream(t, "dead")
	g := New(testConfig("local"), quiet())
	g.SetUpstreams([]*Upstream{dead, live})
	base := serve(t, g)
	for i := range 20 {
		var resp *http.Response
		var err error
		if i%2 == 0 {
			resp, err = http.Get(base + "/v2/x/manifests/latest")
		} else {
			resp, err = http.Post(base+"/v2/x/blobs/uploads/", "application/octet-stream", strings.NewReader("payload"))
		}
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d: %v %v", i, resp, err)
		}
		if i%2 == 1 && resp.Header.Get("X-Got") != "payload" {
			t.Fatalf("retried POST body: %q", resp.Header.Get("X-Got"))
		}
		resp.Body.Close()
	}
	if served.Load() != 20 {
		t.Fatalf("live server served %d of 20", served.Load())
	}
	if !dead.ejected(time.Now()) {
		t.Fatal("the dead server is not ejected")
	}
	if n := dead.failures.Load(); n > 3 {
		t.Fatalf("the ejected server was still tried: %d failures", n)
	}
}

// A request whose body already went to a server that then failed is not
// retried (the body is gone): the client gets 503 with an OCI error.
func TestNoRetryAfterBodySent(t *testing.T) {
	var calls atomic.Int64
	breaker := upstreamOf(t, "breaker", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		io.CopyN(io.Discard, r.Body, 1<<20) // read part of the body, then die
		hj, _ := w.(http.Hijacker)
		c, _, _ := hj.Hijack()
		c.Close()
	}))
	g := New(testConfig("local"), quiet())
	other := upstreamOf(t, "other", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(202)
	}))
	g.SetUpstreams([]*Upstream{breaker})
	base := serve(t, g)
	g.SetUpstreams([]*Upstream{breaker, other})
	breaker.inflight.Store(-100) // P2C picks it first
	big := make([]byte, 8<<20)
	req, _ := http.NewRequest(http.MethodPatch, base+"/v2/x/blobs/uploads/abc", bytes.NewReader(big))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), `"code":"UNAVAILABLE"`) {
		t.Fatalf("PATCH after the server died mid-body: %d %s", resp.StatusCode, body)
	}
	if calls.Load() != 1 {
		t.Fatalf("%d servers saw the PATCH; a partly sent body must not be replayed", calls.Load())
	}
}

// No server in the IDC: 503 with the spec's error body naming the IDC;
// with failover "any", another IDC's server answers.
func TestNoLocalServer(t *testing.T) {
	remote := upstreamOf(t, "b1", "idc-b", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("from b")) }))
	for _, tc := range []struct {
		failover string
		code     int
		body     string
	}{{"local", 503, `no registry server is available in IDC idc-a`}, {"any", 200, "from b"}} {
		g := New(testConfig(tc.failover), quiet())
		g.SetUpstreams([]*Upstream{remote})
		resp, err := http.Get(serve(t, g) + "/v2/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(string(b), tc.body) {
			t.Fatalf("failover %s: %d %s", tc.failover, resp.StatusCode, b)
		}
		if tc.code == 503 && resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("503 content type %q", resp.Header.Get("Content-Type"))
		}
		code := 0
		if r, err := http.Get(serve(t, g) + "/readyz"); err == nil {
			code = r.StatusCode
			r.Body.Close()
		}
		if want := map[string]int{"local": 503, "any": 200}[tc.failover]; code != want {
			t.Fatalf("failover %s: /readyz %d, want %d", tc.failover, code, want)
		}
	}
}

// Locations stay on the gateway: relative ones pass unchanged, absolute
// ones naming the server become relative.
func TestLocationStaysOnGateway(t *testing.T) {
	var self string
	u := upstreamOf(t, "a1", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("abs") != "" {
			w.Header().Set("Location", "http://"+self+"/v2/x/blobs/uploads/1?state=s")
		} else {
			w.Header().Set("Location", "/v2/x/blobs/uploads/2")
		}
		w.WriteHeader(202)
	}))
	self = u.Addr
	g := New(testConfig("local"), quiet())
	g.SetUpstreams([]*Upstream{u})
	base := serve(t, g)
	for q, want := range map[string]string{"?abs=1": "/v2/x/blobs/uploads/1?state=s", "": "/v2/x/blobs/uploads/2"} {
		resp, err := http.Post(base+"/v2/x/blobs/uploads/"+q, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Location"); got != want {
			t.Fatalf("Location %q, want %q", got, want)
		}
	}
}

// The two choices prefer the server with fewer requests in flight.
func TestPicksLessLoaded(t *testing.T) {
	g := New(testConfig("local"), quiet())
	a := &Upstream{ID: "a", IDC: "idc-a"}
	b := &Upstream{ID: "b", IDC: "idc-a"}
	a.inflight.Store(10)
	g.SetUpstreams([]*Upstream{a, b})
	for range 100 {
		if u, _ := g.pick(nil); u != b {
			t.Fatalf("picked %s with %d in flight over b with 0", u.ID, u.inflight.Load())
		}
	}
	// Updates keep each server's counters.
	g.SetUpstreams([]*Upstream{{ID: "a", IDC: "idc-a"}, {ID: "b", IDC: "idc-a"}})
	if got := g.Upstreams(); got[0].inflight.Load()+got[1].inflight.Load() != 10 {
		t.Fatal("in-flight counters lost across a discovery update")
	}
}

// A 256 MiB download and upload stream through without the gateway's
// memory growing with them.
func TestStreamsWithoutBuffering(t *testing.T) {
	const size = 256 << 20
	chunk := make([]byte, 1<<20)
	rand.Read(chunk)
	u := upstreamOf(t, "a1", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			n, _ := io.Copy(io.Discard, r.Body)
			w.Header().Set("X-Received", itoa(n))
			w.WriteHeader(201)
			return
		}
		for range size / len(chunk) {
			w.Write(chunk)
		}
	}))
	g := New(testConfig("local"), quiet())
	g.SetUpstreams([]*Upstream{u})
	base := serve(t, g)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	resp, err := http.Get(base + "/v2/x/blobs/sha256:abc")
	if err != nil {
		t.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/x/blobs/uploads/1", io.LimitReader(zeros{}, size))
	req.ContentLength = size
	resp2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if n != size || resp2.Header.Get("X-Received") != itoa(size) {
		t.Fatalf("streamed %d down, %s up; want %d", n, resp2.Header.Get("X-Received"), size)
	}
	// Both directions share this process (client, gateway and server):
	// cumulative allocation far below the 512 MiB that passed through.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<20 {
		t.Fatalf("allocated %d MiB while streaming 512 MiB", grew>>20)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "gw.yml")
		os.WriteFile(p, []byte(s), 0o644)
		return p
	}
	cfg, err := LoadConfig(write("idc: idc-a\nconsul: {addr: 127.0.0.1:8500}\n"),
		[]string{"GAIA_GATEWAY_HTTP_ADDR=0.0.0.0:7000", "GAIA_GATEWAY_FAILOVER=any", "GAIA_HTTP_ADDR=ignored:1"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTP.Addr != "0.0.0.0:7000" || cfg.Failover != "any" || *cfg.Retries != 2 || cfg.Eject.Failures != 3 || cfg.Consul.Service != "gaia-registry" ||
		*cfg.Replay.MaxBytes != 64<<20 {
		t.Fatalf("%+v", cfg)
	}
	for text, want := range map[string]string{
		"consul: {addr: x}\n": "idc: required",
		"idc: a\n":            "consul.addr: required",
		"idc: a\nconsul: {addr: x}\nfailover: b\n":                                                                                            "failover",
		"idc: a\nconsul: {addr: x}\nretries: -1\n":                                                                                            "retries",
		"idc: a\nconsul: {addr: x}\nreplay: {maxbytes: -1}\n":                                                                                 "replay.maxbytes",
		"idc: a\nconsul: {addr: x}\nidk: 1\n":                                                                                                 "field idk not found",
		"idc: a\nconsul: {addr: x}\nredirect: yes\n":                                                                                          "redirect: \"yes\" is not blobs, blobs+uploads or off",
		"idc: a\nconsul: {addr: x}\nredirect: blobs\nauth: {none: true}\n":                                                                    "signing.keys: required",
		"idc: a\nconsul: {addr: x}\nredirect: blobs\nsigning: {keys: [short]}\nauth: {none: true}\n":                                          "signing.keys: key 1 is 5 bytes",
		"idc: a\nconsul: {addr: x}\nredirect: blobs\nsigning: {keys: [0123456789abcdef]}\n":                                                   "auth: redirect: blobs and cache",
		"idc: a\nconsul: {addr: x}\ncache: {maxbytes: 1000}\nauth: {none: true}\n":                                                            "database.url: required",
		"idc: a\nconsul: {addr: x}\ncache: {maxbytes: 1000}\ndatabase: {url: x}\n":                                                            "auth: redirect: blobs and cache",
		"idc: a\nconsul: {addr: x}\nauth: {none: true, htpasswd: {realm: r, path: /nonexistent}}\n":                                           "auth.none: set, but so is",
		"idc: a\nconsul: {addr: x}\nredirect: blobs\nsigning: {keys: [0123456789abcdef]}\nauth: {htpasswd: {realm: r, path: /nonexistent}}\n": "auth.htpasswd.path",
	} {
		if _, err := LoadConfig(write(text), nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", text, err, want)
		}
	}
	// The example configs load.
	files, _ := filepath.Glob("../../configs/cluster/gateway-*.yml")
	if len(files) != 2 {
		t.Fatalf("example gateway configs: %v", files)
	}
	for _, f := range files {
		if _, err := LoadConfig(f, nil); err != nil {
			t.Error(err)
		}
	}
}

// An idempotent request with a small body (a manifest PUT) is replayed on
// another server even though the first one had read its body.
func TestIdempotentReplay(t *testing.T) {
	var breakerCalls atomic.Int64
	breaker := upstreamOf(t, "breaker", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		breakerCalls.Add(1)
		io.ReadAll(r.Body)
		c, _, _ := w.(http.Hijacker).Hijack()
		c.Close()
	}))
	good := upstreamOf(t, "good", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Got", string(b))
		w.WriteHeader(201)
	}))
	g := New(testConfig("local"), quiet())
	g.SetUpstreams([]*Upstream{breaker, good})
	breaker.inflight.Store(-100) // P2C picks it first
	req, _ := http.NewRequest(http.MethodPut, serve(t, g)+"/v2/x/manifests/v1", strings.NewReader(`{"schemaVersion":2}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 || resp.Header.Get("X-Got") != `{"schemaVersion":2}` || breakerCalls.Load() != 1 {
		t.Fatalf("replayed PUT: %d %q, breaker saw %d", resp.StatusCode, resp.Header.Get("X-Got"), breakerCalls.Load())
	}
}

// A server that answers a large upload early, without reading its body
// (an expired token: 401), gets its answer to the client, and is not
// counted as failing; Expect: 100-continue does not leak a 100 as the
// final answer.
func TestEarlyAnswerToLargeUpload(t *testing.T) {
	u := upstreamOf(t, "a1", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="x"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Received", itoa(n))
		w.WriteHeader(http.StatusAccepted)
	}))
	g := New(testConfig("local"), quiet())
	g.SetUpstreams([]*Upstream{u})
	base := serve(t, g)
	for _, auth := range []string{"", "Bearer t"} {
		req, _ := http.NewRequest(http.MethodPatch, base+"/v2/x/blobs/uploads/1", io.LimitReader(zeros{}, 32<<20))
		req.ContentLength = 32 << 20
		req.Header.Set("Expect", "100-continue")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("auth %q: %v", auth, err)
		}
		resp.Body.Close()
		want := map[string]int{"": 401, "Bearer t": 202}[auth]
		if resp.StatusCode != want || (want == 202 && resp.Header.Get("X-Received") != itoa(32<<20)) {
			t.Fatalf("auth %q: %d %q", auth, resp.StatusCode, resp.Header.Get("X-Received"))
		}
	}
	if u.failures.Load() != 0 || u.ejected(time.Now()) {
		t.Fatalf("an early answer counted as a failure: %d", u.failures.Load())
	}
}

// scrape returns the gateway's /metrics text.
func scrape(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metric is the value of the series named exactly so in the gateway's
// /metrics, or -1 when there is none.
func metric(t *testing.T, base, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(scrape(t, base), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return -1
}

// waitFor polls cond until it holds, failing the test at the deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so after 20s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The series of a server go when it leaves, and a request that was still
// running on it when it left does not bring them back.
func TestMetricsPrunedWhenServerLeaves(t *testing.T) {
	inHandler, answer := make(chan struct{}), make(chan struct{})
	leaving := upstreamOf(t, "leaving", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/slow" {
			close(inHandler)
			<-answer
		}
		io.WriteString(w, "from leaving")
	}))
	staying := upstreamOf(t, "staying", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "from staying")
	}))
	g := New(testConfig("local"), quiet())
	g.metricsGrace = 0 // below: the series of servers that left go at the next update
	g.SetUpstreams([]*Upstream{leaving, deadUpstream(t, "dead")})
	base := serve(t, g)
	// Until a request has been tried on the dead one (the pick is random)
	// and failed over: errors and an ejection.
	var m string
	for i := 0; ; i++ {
		if resp, err := http.Get(base + "/v2/"); err != nil {
			t.Fatal(err)
		} else {
			resp.Body.Close()
		}
		m = scrape(t, base)
		if strings.Contains(m, `gaia_gateway_upstream_errors_total{idc="idc-a",upstream="dead"}`) || i == 200 {
			break
		}
	}
	if !strings.Contains(m, `upstream="leaving"`) || !strings.Contains(m, `gaia_gateway_upstream_errors_total{idc="idc-a",upstream="dead"}`) {
		t.Fatalf("no series for the servers before they leave:\n%s", m)
	}
	slow := make(chan error, 1)
	go func() {
		resp, err := http.Get(base + "/v2/slow")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		slow <- err
	}()
	<-inHandler
	g.SetUpstreams([]*Upstream{staying})
	close(answer)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	g.SetUpstreams([]*Upstream{staying}) // an update after the grace: the departed series go
	if resp, err := http.Get(base + "/v2/"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	m = scrape(t, base)
	for _, gone := range []string{`upstream="leaving"`, `upstream="dead"`} {
		if strings.Contains(m, gone) {
			t.Errorf("series with %s after it left:\n%s", gone, m)
		}
	}
	if !strings.Contains(m, `gaia_gateway_requests_total{code="200",idc="idc-a",upstream="staying"} 1`) {
		t.Errorf("no series for the server that stayed:\n%s", m)
	}
}

// The bodies held for replay are bounded in total (replay.maxbytes), not
// only each: with the budget taken by slow bodies, the next idempotent
// request streams to a server at once instead of being held too; all of
// them complete, and what was held is given back.
func TestReplayBudget(t *testing.T) {
	const size = 512 << 10
	arrived := make(chan string, 8)
	u := upstreamOf(t, "a1", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- r.Header.Get("X-Req")
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Received", itoa(n))
		w.WriteHeader(http.StatusCreated)
	}))
	cfg := testConfig("local")
	budget := int64(2 * size)
	cfg.Replay.MaxBytes = &budget
	g := New(cfg, quiet())
	g.SetUpstreams([]*Upstream{u})
	base := serve(t, g)

	// Each request sends half its body, then waits for the test.
	type put struct {
		w    *io.PipeWriter
		done chan *http.Response
	}
	start := func(name string) put {
		pr, pw := io.Pipe()
		t.Cleanup(func() { pw.CloseWithError(io.ErrUnexpectedEOF) }) // before the servers close, on failure too
		p := put{w: pw, done: make(chan *http.Response, 1)}
		req, _ := http.NewRequest(http.MethodPut, base+"/v2/x/manifests/"+name, pr)
		req.ContentLength = size
		req.Header.Set("X-Req", name)
		go func() {
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				p.done <- nil
				return
			}
			resp.Body.Close()
			p.done <- resp
		}()
		if _, err := pw.Write(make([]byte, size/2)); err != nil {
			t.Fatal(err)
		}
		return p
	}
	held := func() bool { return metric(t, base, "gaia_gateway_replay_bytes") == float64(budget) }
	p1 := start("one")
	p2 := start("two")
	waitFor(t, "two bodies held for replay", held)
	p3 := start("three")
	// The third was not held: the server has it while its body is half sent.
	select {
	case got := <-arrived:
		if got != "three" {
			t.Fatalf("%s reached the server before its body was whole", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the request beyond the budget did not reach the server:\n%s", scrape(t, base))
	}
	if !held() || metric(t, base, "gaia_gateway_replay_skipped_total") != 1 {
		t.Fatalf("replay bytes beyond the budget, or the skip not counted:\n%s", scrape(t, base))
	}
	for _, p := range []put{p1, p2, p3} {
		if _, err := p.w.Write(make([]byte, size/2)); err != nil {
			t.Fatal(err)
		}
		p.w.Close()
		if resp := <-p.done; resp == nil || resp.StatusCode != http.StatusCreated || resp.Header.Get("X-Received") != itoa(size) {
			t.Fatalf("PUT: %+v", resp)
		}
	}
	waitFor(t, "replay bytes given back", func() bool { return metric(t, base, "gaia_gateway_replay_bytes") == 0 })
}

// A server that left keeps its series for the grace period, so a scrape
// sees the last counts of a server killed mid-request (Consul drops it
// before the gateway counts the cut); the next update after the grace
// deletes them.
func TestMetricsKeptForGrace(t *testing.T) {
	a := upstreamOf(t, "a", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "from a")
	}))
	g := New(testConfig("local"), quiet())
	g.SetUpstreams([]*Upstream{a})
	base := serve(t, g)
	if resp, err := http.Get(base + "/v2/"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	g.SetUpstreams(nil) // a leaves
	if m := scrape(t, base); !strings.Contains(m, `gaia_gateway_requests_total{code="200",idc="idc-a",upstream="a"} 1`) {
		t.Fatalf("the series of a server that just left are gone:\n%s", m)
	}
	g.mu.Lock()
	g.metricsGrace = 0 // the grace has passed
	g.mu.Unlock()
	g.SetUpstreams(nil)
	if m := scrape(t, base); strings.Contains(m, `upstream="a"`) {
		t.Fatalf("series of a server that left past the grace:\n%s", m)
	}
}

// A server re-registered with another scheme on the same address (a TLS
// rollout) is a new entry: requests use its new scheme. One that left and
// came back within the grace period keeps its series after the grace.
func TestUpstreamChangesAndReturns(t *testing.T) {
	g := New(testConfig("local"), quiet())
	plain := &Upstream{ID: "s1", Addr: "127.0.0.1:1", IDC: "idc-a", Scheme: "http"}
	g.SetUpstreams([]*Upstream{plain})
	g.SetUpstreams([]*Upstream{{ID: "s1", Addr: "127.0.0.1:1", IDC: "idc-a", Scheme: "https"}})
	if got := g.Upstreams()[0]; got.Scheme != "https" {
		t.Fatalf("after re-registering with https: scheme %q", got.Scheme)
	}

	a := upstreamOf(t, "a", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "from a")
	}))
	g = New(testConfig("local"), quiet())
	g.SetUpstreams([]*Upstream{a})
	base := serve(t, g)
	get := func() {
		if resp, err := http.Get(base + "/v2/"); err != nil {
			t.Fatal(err)
		} else {
			resp.Body.Close()
		}
	}
	get()
	g.SetUpstreams(nil)                                                                 // a leaves
	g.SetUpstreams([]*Upstream{{ID: a.ID, Addr: a.Addr, IDC: a.IDC, Scheme: a.Scheme}}) // and comes back
	g.mu.Lock()
	g.metricsGrace = 0
	g.mu.Unlock()
	g.SetUpstreams([]*Upstream{a}) // an update after the grace
	get()
	if m := scrape(t, base); !strings.Contains(m, `gaia_gateway_requests_total{code="200",idc="idc-a",upstream="a"} 2`) {
		t.Fatalf("a server back within the grace lost its series:\n%s", m)
	}
}
