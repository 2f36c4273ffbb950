package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/crypto/bcrypt"

	"github.com/gaia-registry/gaia/mirror-sync/admin"
	"github.com/gaia-registry/gaia/mirror-sync/store"
	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/registry/api"
	"github.com/gaia-registry/gaia/tests/harness"
)

// upstreamProxy stands between Gaia's mirror and the stock upstream
// registry: it counts what is fetched and injects faults (429s with
// Retry-After, blob transfers cut mid-body, a bandwidth limit, a remote
// upstream's latency on "not found") and lies (forged manifests).
type upstreamProxy struct {
	URL    string
	target string

	mu     sync.Mutex
	events []proxyEvent

	throttleUntil atomic.Int64 // unix nanos: answer 429 (Retry-After: 1) until then
	throttled     atomic.Int64
	cut           atomic.Int64 // cut this many more blob GETs after half their body
	cuts          atomic.Int64
	rate          atomic.Int64 // blob body bytes per second (0: unlimited)
	absentDelay   atomic.Int64 // nanoseconds before a 404 to a blob HEAD or manifest GET
	forged        sync.Map     // path → manifest bytes served instead of the upstream's
}

type proxyEvent struct {
	at   time.Time
	kind string // "blob-start", "blob" (sent whole), "manifest" (GET answered), "blob-head" (any answer), "manifest-absent" (a GET's 404)
	ref  string // blob digest or manifest reference
}

func newUpstreamProxy(t *testing.T, target string) *upstreamProxy {
	p := &upstreamProxy{target: target}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

func (p *upstreamProxy) record(kind, ref string) {
	p.mu.Lock()
	p.events = append(p.events, proxyEvent{time.Now(), kind, ref})
	p.mu.Unlock()
}

// count returns how many events of kind happened (for ref, if not empty)
// after since.
func (p *upstreamProxy) count(kind, ref string, since time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, e := range p.events {
		if e.kind == kind && (ref == "" || e.ref == ref) && !e.at.Before(since) {
			n++
		}
	}
	return n
}

func (p *upstreamProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if until := p.throttleUntil.Load(); until > 0 && time.Now().UnixNano() < until {
		p.throttled.Add(1)
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
		return
	}
	if body, ok := p.forged.Load(r.URL.Path); ok {
		w.Header().Set("Content-Type", v1.MediaTypeImageManifest)
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(body.([]byte)).String())
		w.Write(body.([]byte))
		return
	}
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, p.target+r.URL.RequestURI(), r.Body)
	req.Header = r.Header.Clone()
	req.ContentLength = r.ContentLength
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	blob := r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") && resp.StatusCode == http.StatusOK
	ref := path.Base(r.URL.Path)
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") && resp.StatusCode == http.StatusOK {
		p.record("manifest", ref)
	}
	if blob {
		p.record("blob-start", ref)
	}
	if r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/blobs/sha256:") {
		p.record("blob-head", ref)
	}
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") && resp.StatusCode == http.StatusNotFound {
		p.record("manifest-absent", ref)
	}
	if d := p.absentDelay.Load(); d > 0 && resp.StatusCode == http.StatusNotFound {
		time.Sleep(time.Duration(d)) // a remote upstream's round trip
	}
	w.WriteHeader(resp.StatusCode)
	if blob && p.cut.Add(-1) >= 0 {
		io.CopyN(w, resp.Body, resp.ContentLength/2)
		w.(http.Flusher).Flush()
		p.cuts.Add(1)
		panic(http.ErrAbortHandler) // the connection drops mid-blob
	}
	var src io.Reader = resp.Body
	if rate := p.rate.Load(); blob && rate > 0 {
		src = &slowReader{r: resp.Body, rate: rate}
	}
	if _, err := io.Copy(w, src); err == nil && blob {
		p.record("blob", ref)
	}
}

type slowReader struct {
	r    io.Reader
	rate int64
}

func (s *slowReader) Read(b []byte) (int, error) {
	if len(b) > 32<<10 {
		b = b[:32<<10]
	}
	n, err := s.r.Read(b)
	time.Sleep(time.Duration(int64(n) * int64(time.Second) / s.rate))
	return n, err
}

// mirrorSetup: a stock distribution registry with token auth as the
// upstream (behind upstreamProxy), a Gaia registry that takes writes from
// the mirror's robot credential (htpasswd), and its PostgreSQL.
type mirrorSetup struct {
	ts        *harness.TokenServer
	proxy     *upstreamProxy
	pusher    *upstream.Client // writes test images into the upstream
	db        string
	gaia      string // base URL
	gaiaRobot *upstream.Client
	token     string
	gaiaExtra string // more of Gaia's config
	robotUser string // the mirror's registry credential, when not mirror-robot
	robotPass string
}

const robotPassword = "robot-secret-pw"

func newMirrorSetup(t *testing.T) *mirrorSetup {
	s := &mirrorSetup{token: "mirror-e2e-admin-token-0123"}
	s.ts = harness.StartTokenServer(t, "upstream-registry", map[string][2]string{
		"pusher": {"push-pw", "pull,push"}, "bot": {"bot-pw", "pull"},
	})
	upAddr := harness.FreeAddr(t)
	harness.StartStockRegistry(t, upAddr, s.ts)
	s.proxy = newUpstreamProxy(t, "http://"+upAddr)
	s.pusher = upstream.New(upstream.Options{URL: "http://" + upAddr, Username: "pusher", Password: "push-pw"})
	s.db = harness.NewDatabase(t)
	return s
}

// startGaia starts n Gaia servers sharing the database and storage; with
// auth, htpasswd holds the mirror's robot and pulls are anonymous.
func (s *mirrorSetup) startGaia(t *testing.T, n int, auth bool) []string {
	extra := ""
	if auth {
		hash, _ := bcrypt.GenerateFromPassword([]byte(robotPassword), bcrypt.MinCost)
		htpasswd := filepath.Join(t.TempDir(), "htpasswd")
		os.WriteFile(htpasswd, []byte("mirror-robot:"+string(hash)+"\n"), 0o600)
		extra = fmt.Sprintf("auth: {anonymouspull: true, htpasswd: {realm: gaia, path: %q}}\n", htpasswd)
	}
	storage := t.TempDir()
	var urls []string
	for range n {
		addr := harness.FreeAddr(t)
		harness.StartRegistry(t, addr, harness.RegistryConfig(addr, s.db, storage)+extra+s.gaiaExtra)
		urls = append(urls, "http://"+addr)
	}
	s.gaia = urls[0]
	s.gaiaRobot = upstream.New(upstream.Options{URL: s.gaia, Username: "mirror-robot", Password: robotPassword})
	if !auth {
		s.gaiaRobot = upstream.New(upstream.Options{URL: s.gaia})
	}
	return urls
}

// startMirror runs a gaia-mirror (admin API, and a worker unless disabled).
func (s *mirrorSetup) startMirror(t *testing.T, id string, worker bool) *harness.Registry {
	addr := harness.FreeAddr(t)
	user, pass := "mirror-robot", robotPassword
	if s.robotUser != "" {
		user, pass = s.robotUser, s.robotPass
	}
	return harness.StartDaemon(t, "./mirror-sync/cmd/gaia-mirror", nil, addr, fmt.Sprintf(`log: {level: info, formatter: json}
http: {addr: %s}
database: {url: %q, migrate: true}
admin: {token: %q}
registry: {url: %q, username: %q, password: %q}
worker: {id: %q, lease: 6s, poll: 300ms, disabled: %v}
`, addr, s.db, s.token, s.gaia, user, pass, id, !worker))
}

func (s *mirrorSetup) admin(t *testing.T, m *harness.Registry, method, p string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, m.URL()+admin.Prefix+p, rd)
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

func (s *mirrorSetup) createRule(t *testing.T, m *harness.Registry, rule map[string]any) {
	t.Helper()
	if code, body := s.admin(t, m, http.MethodPost, "", rule); code != http.StatusCreated {
		t.Fatalf("creating rule: %d %s", code, body)
	}
}

func (s *mirrorSetup) runNow(t *testing.T, m *harness.Registry, rule string) int64 {
	t.Helper()
	code, body := s.admin(t, m, http.MethodPost, "/"+rule+"/run", nil)
	var run store.Run
	if code != http.StatusAccepted || json.Unmarshal(body, &run) != nil {
		t.Fatalf("run now: %d %s", code, body)
	}
	return run.ID
}

func (s *mirrorSetup) runs(t *testing.T, m *harness.Registry, rule string) []store.Run {
	t.Helper()
	code, body := s.admin(t, m, http.MethodGet, "/"+rule+"/runs?limit=50", nil)
	var runs []store.Run
	if code != http.StatusOK || json.Unmarshal(body, &runs) != nil {
		t.Fatalf("runs: %d %s", code, body)
	}
	return runs
}

// waitRun waits for run id to end and returns it.
func (s *mirrorSetup) waitRun(t *testing.T, m *harness.Registry, rule string, id int64, limit time.Duration) store.Run {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		for _, r := range s.runs(t, m, rule) {
			if r.ID == id && (r.State == "succeeded" || r.State == "failed") {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %d of %s not over after %s: %+v", id, rule, limit, s.runs(t, m, rule))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// sameImage checks Gaia's dst:ref against the upstream's repo:ref: same
// digest, and every blob of the image in Gaia whole and verified.
func (s *mirrorSetup) sameImage(t *testing.T, ctx context.Context, repo, dst, ref string, img harness.TestImage) {
	t.Helper()
	want, err := s.pusher.ManifestDigest(ctx, repo, ref)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.gaiaRobot.ManifestDigest(ctx, dst, ref)
	if err != nil || got != want {
		t.Fatalf("%s:%s in Gaia: %s (%v), upstream %s:%s is %s", dst, ref, got, err, repo, ref, want)
	}
	for _, b := range img.Blobs {
		rc, err := s.gaiaRobot.Blob(ctx, dst, b.Digest, b.Size)
		if err != nil {
			t.Fatalf("blob %s of %s: %v", b.Digest, dst, err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil { // the reader checks size and digest
			t.Fatalf("blob %s of %s: %v", b.Digest, dst, err)
		}
		rc.Close()
	}
}

func image(platform string, seeds ...uint64) harness.TestImage {
	var layers [][]byte
	for _, s := range seeds {
		layers = append(layers, harness.Layer(s, 200<<10+int(s%7)*1024))
	}
	return harness.NewTestImage(platform, layers...)
}

// TestMirrorRuleFromStockRegistry: a rule with repository, tag and
// platform filters mirrors exactly what it selects from a stock
// distribution registry behind token auth, digests unchanged; a second
// run copies nothing; a tag pushed upstream later is picked up by the
// next scheduled run.
func TestMirrorRuleFromStockRegistry(t *testing.T) {
	ctx := context.Background()
	s := newMirrorSetup(t)
	s.startGaia(t, 1, true)

	const base = 1 // a base layer every image shares
	alpine := map[string]harness.TestImage{}
	for i, tag := range []string{"3.18", "3.19", "3.20", "edge"} {
		alpine[tag] = image("linux/amd64", base, uint64(100+i))
		if err := alpine[tag].Push(ctx, s.pusher, "library/alpine", tag); err != nil {
			t.Fatal(err)
		}
	}
	multi := []harness.TestImage{image("linux/amd64", base, 200), image("linux/arm64/v8", base, 201), image("linux/s390x", base, 202)}
	if _, err := harness.PushIndex(ctx, s.pusher, "library/multi", "1.0", multi...); err != nil {
		t.Fatal(err)
	}
	if err := image("linux/amd64", 300).Push(ctx, s.pusher, "library/excluded", "1.0"); err != nil {
		t.Fatal(err)
	}
	if err := image("linux/amd64", 301).Push(ctx, s.pusher, "other/thing", "1.0"); err != nil {
		t.Fatal(err)
	}

	m := s.startMirror(t, "worker-a", true)
	s.createRule(t, m, map[string]any{
		"name":         "hub",
		"upstream":     map[string]any{"url": s.proxy.URL, "username": "bot", "password": "bot-pw", "concurrency": 4},
		"repositories": []string{"library/*"},
		"exclude":      []string{"library/excluded"},
		"tags":         map[string]any{"semver": ">=1.0", "latest": 2},
		"platforms":    []string{"linux/amd64", "linux/arm64"},
		"destination":  "mirror",
		"schedule":     "10s",
		"enabled":      true,
	})
	start := time.Now()
	run := s.waitRun(t, m, "hub", s.runNow(t, m, "hub"), 2*time.Minute)
	if run.State != "succeeded" {
		t.Fatalf("first run: %+v\n%s", run, m.Log())
	}

	// Exactly the selection: two repositories, the two highest versions
	// of alpine (edge is no version), two of multi's three platforms.
	repos, err := s.gaiaRobot.Catalog(ctx)
	if err != nil || !slices.Equal(repos, []string{"mirror/library/alpine", "mirror/library/multi"}) {
		t.Fatalf("Gaia's catalog: %v %v", repos, err)
	}
	tags, err := s.gaiaRobot.Tags(ctx, "mirror/library/alpine")
	sort.Strings(tags)
	if err != nil || !slices.Equal(tags, []string{"3.19", "3.20"}) {
		t.Fatalf("alpine tags in Gaia: %v (%v)", tags, err)
	}
	for _, tag := range tags {
		s.sameImage(t, ctx, "library/alpine", "mirror/library/alpine", tag, alpine[tag])
	}
	s.sameImage(t, ctx, "library/multi", "mirror/library/multi", "1.0", harness.TestImage{}) // the index: upstream's digest
	for _, img := range multi[:2] {
		s.sameImage(t, ctx, "library/multi", "mirror/library/multi", img.Digest.String(), img)
	}
	if _, ok, err := s.gaiaRobot.HasManifest(ctx, "mirror/library/multi", multi[2].Digest.String()); ok || err != nil {
		t.Fatalf("the s390x image, which the rule's platforms leave out, is in Gaia (%v)", err)
	}
	if ok, err := s.gaiaRobot.BlobExists(ctx, "mirror/library/multi", multi[2].Blobs[2].Digest); ok || err != nil {
		t.Fatalf("the s390x image's layer is in Gaia (%v)", err)
	}

	// Each distinct blob crossed once; shared ones were mounted.
	distinct := map[digest.Digest]bool{}
	for _, img := range []harness.TestImage{alpine["3.19"], alpine["3.20"], multi[0], multi[1]} {
		for _, b := range img.Blobs {
			distinct[b.Digest] = true
		}
	}
	for d := range distinct {
		if n := s.proxy.count("blob", d.String(), start); n != 1 {
			t.Errorf("blob %s fetched from the upstream %d times, want once", d, n)
		}
	}
	if run.Tags != 3 || run.Images != 4 || run.Blobs != len(distinct) || run.Bytes == 0 || len(run.Errors) != 0 {
		t.Errorf("first run's record: %+v (want 3 tags, 4 images, %d blobs)", run, len(distinct))
	}

	// A second run compares digests and copies nothing.
	second := time.Now()
	run2 := s.waitRun(t, m, "hub", s.runNow(t, m, "hub"), time.Minute)
	if run2.State != "succeeded" || run2.Tags != 0 || run2.Images != 0 || run2.Blobs != 0 || run2.Bytes != 0 {
		t.Errorf("second run copied something: %+v", run2)
	}
	if n, b := s.proxy.count("manifest", "", second), s.proxy.count("blob-start", "", second); n+b != 0 {
		t.Errorf("second run fetched %d manifests and %d blobs from the upstream", n, b)
	}

	// A new upstream tag: the next scheduled run brings it.
	pushed := time.Now()
	newer := image("linux/amd64", base, 104)
	if err := newer.Push(ctx, s.pusher, "library/alpine", "3.21"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	var scheduled *store.Run
	for scheduled == nil {
		for _, r := range s.runs(t, m, "hub") {
			if r.Trigger == "schedule" && r.State == "succeeded" && r.StartedAt != nil && r.StartedAt.After(pushed) {
				scheduled = &r
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no scheduled run after the push: %+v", s.runs(t, m, "hub"))
		}
		time.Sleep(300 * time.Millisecond)
	}
	if scheduled.Tags != 1 {
		t.Errorf("scheduled run: %+v, want the one new tag", *scheduled)
	}
	s.sameImage(t, ctx, "library/alpine", "mirror/library/alpine", "3.21", newer)

	// Metrics of the worker.
	// Counted just after the run's end is recorded: allow it a moment.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		v := harness.Metric(t, m.URL(), "gaia_mirror_runs_total", `rule="hub"`, `result="succeeded"`)
		if v >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("gaia_mirror_runs_total{hub,succeeded} = %v, want 3 or more", v)
			break
		}
	}
	if v := harness.Metric(t, m.URL(), "gaia_mirror_upstream_requests_total"); v == 0 {
		t.Error("no upstream requests counted")
	}
}

// TestMirrorFaults: an upstream answering 429 for a while, connections
// dropped mid-blob, and a worker killed mid-run.
func TestMirrorFaults(t *testing.T) {
	ctx := context.Background()
	// Built now: a build inside the kill test's few-second window (when
	// this test runs alone) could let the run finish before the kill.
	gaiactl := harness.Binary(t, "./cmd/gaiactl")
	s := newMirrorSetup(t)
	s.startGaia(t, 1, true)
	m := s.startMirror(t, "worker-a", true)
	rule := func(name, repo string) map[string]any {
		return map[string]any{
			"name": name, "upstream": map[string]any{"url": s.proxy.URL, "username": "bot", "password": "bot-pw"},
			"repositories": []string{repo}, "destination": "m", "schedule": "1h", "enabled": true,
		}
	}

	t.Run("429 with Retry-After", func(t *testing.T) {
		img := image("linux/amd64", 400, 401)
		if err := img.Push(ctx, s.pusher, "faults/throttle", "1.0"); err != nil {
			t.Fatal(err)
		}
		s.createRule(t, m, rule("throttle", "faults/throttle"))
		s.proxy.throttleUntil.Store(time.Now().Add(2500 * time.Millisecond).UnixNano())
		run := s.waitRun(t, m, "throttle", s.runNow(t, m, "throttle"), time.Minute)
		if run.State != "succeeded" {
			t.Fatalf("run: %+v", run)
		}
		if s.proxy.throttled.Load() == 0 {
			t.Fatal("the upstream never throttled: the test proves nothing")
		}
		if v := harness.Metric(t, m.URL(), "gaia_mirror_upstream_throttled_total"); v == 0 {
			t.Error("gaia_mirror_upstream_throttled_total is 0")
		}
		s.sameImage(t, ctx, "faults/throttle", "m/faults/throttle", "1.0", img)
	})

	t.Run("connection dropped mid-blob", func(t *testing.T) {
		img := harness.NewTestImage("linux/amd64", harness.Layer(500, 1<<20), harness.Layer(501, 1<<20), harness.Layer(502, 1<<20))
		if err := img.Push(ctx, s.pusher, "faults/cut", "1.0"); err != nil {
			t.Fatal(err)
		}
		s.createRule(t, m, rule("cut", "faults/cut"))
		s.proxy.cut.Store(2)
		run := s.waitRun(t, m, "cut", s.runNow(t, m, "cut"), time.Minute)
		s.proxy.cut.Store(0)
		if run.State != "succeeded" {
			t.Fatalf("run: %+v", run)
		}
		if s.proxy.cuts.Load() != 2 {
			t.Fatalf("%d transfers cut, want 2", s.proxy.cuts.Load())
		}
		if v := harness.Metric(t, m.URL(), "gaia_mirror_blob_retries_total", `rule="cut"`); v != 2 {
			t.Errorf("gaia_mirror_blob_retries_total{cut} = %v, want 2", v)
		}
		s.sameImage(t, ctx, "faults/cut", "m/faults/cut", "1.0", img)
		// Nothing torn anywhere: every blob Gaia knows hashes to its digest.
		s.checkAllBlobs(t, ctx)
	})

	t.Run("worker killed mid-run", func(t *testing.T) {
		var imgs []harness.TestImage
		for i := range 6 {
			img := harness.NewTestImage("linux/amd64", harness.Layer(uint64(600+2*i), 1<<20), harness.Layer(uint64(601+2*i), 1<<20))
			if err := img.Push(ctx, s.pusher, "faults/kill", fmt.Sprintf("1.%d", i)); err != nil {
				t.Fatal(err)
			}
			imgs = append(imgs, img)
		}
		victim := s.startMirror(t, "worker-victim", true)
		m.Stop() // the victim alone takes the run
		s.createRule(t, victim, rule("kill", "faults/kill"))
		// 12 MiB, four transfers at a time (the rule's upstream
		// concurrency) at 512 KiB/s each: the run takes about six seconds.
		s.proxy.rate.Store(512 << 10)
		defer s.proxy.rate.Store(0)
		id := s.runNow(t, victim, "kill")
		deadline := time.Now().Add(time.Minute)
		for {
			var cur store.Run
			for _, r := range s.runs(t, victim, "kill") {
				if r.ID == id {
					cur = r
				}
			}
			if cur.State == "running" && cur.Bytes >= 1<<20 { // a layer or more recorded
				break
			}
			if cur.State == "succeeded" || cur.State == "failed" || time.Now().After(deadline) {
				t.Fatalf("the run ended or never progressed before the kill: %+v", cur)
			}
			time.Sleep(50 * time.Millisecond)
		}
		// The progress shows in gaiactl while the run is on.
		out, err := exec.Command(gaiactl, "--server", victim.URL(), "--token", s.token,
			"mirror", "status", "kill").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "running") {
			t.Errorf("gaiactl mirror status during the run: %v\n%s", err, out)
		}
		t.Logf("gaiactl mirror status kill:\n%s", out)
		before := s.storedBlobs(t, ctx)
		killed := time.Now()
		victim.Kill()
		heir := s.startMirror(t, "worker-heir", true)
		run := s.waitRun(t, heir, "kill", id, 2*time.Minute)
		if run.State != "succeeded" || run.Worker != "worker-heir" {
			t.Fatalf("run after the kill: %+v\n%s", run, heir.Log())
		}
		for i, img := range imgs {
			s.sameImage(t, ctx, "faults/kill", "m/faults/kill", fmt.Sprintf("1.%d", i), img)
		}
		// Resumed, not restarted: what Gaia held at the kill was not fetched again.
		for d := range before {
			if n := s.proxy.count("blob-start", d, killed); n != 0 {
				t.Errorf("blob %s, stored before the kill, fetched %d more times", d, n)
			}
		}
		if len(before) == 0 {
			t.Fatal("nothing was stored before the kill")
		}
		t.Logf("killed with %d blobs stored; the heir fetched %d more (run: %d blobs, %d bytes)",
			len(before), s.proxy.count("blob", "", killed), run.Blobs, run.Bytes)
		s.checkAllBlobs(t, ctx)
	})
}

// storedBlobs is every blob Gaia's database records.
func (s *mirrorSetup) storedBlobs(t *testing.T, ctx context.Context) map[string]bool {
	t.Helper()
	conn, err := pgx.Connect(ctx, s.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, _ := conn.Query(ctx, `SELECT digest FROM blobs`)
	ds, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, d := range ds {
		out[d] = true
	}
	return out
}

// checkAllBlobs reads every blob Gaia records, through the API, and
// checks it against its digest and size.
func (s *mirrorSetup) checkAllBlobs(t *testing.T, ctx context.Context) {
	t.Helper()
	conn, err := pgx.Connect(ctx, s.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, _ := conn.Query(ctx, `
		SELECT DISTINCT ON (b.digest) b.digest, b.size, r.name FROM blobs b
		JOIN repository_blobs rb ON rb.digest = b.digest JOIN repositories r ON r.id = rb.repository_id`)
	type blob struct {
		d    digest.Digest
		size int64
		repo string
	}
	all, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (blob, error) {
		var b blob
		return b, row.Scan(&b.d, &b.size, &b.repo)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range all {
		rc, err := s.gaiaRobot.Blob(ctx, b.repo, b.d, b.size)
		if err == nil {
			_, err = io.Copy(io.Discard, rc)
			rc.Close()
		}
		if err != nil {
			t.Errorf("blob %s in %s: %v", b.d, b.repo, err)
		}
	}
}

// TestPullThroughOneFetchPerBlob: twenty clients pull an image Gaia does
// not have, under an on-demand rule, through two servers: every pull gets
// the upstream's image, and each manifest and blob crossed once.
func TestPullThroughOneFetchPerBlob(t *testing.T) {
	harness.Start(t, harness.Dockerd) // its install step brings skopeo
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Fatalf("skopeo is needed (tests/services/svc.sh installs it): %v", err)
	}
	ctx := context.Background()
	s := newMirrorSetup(t)
	servers := s.startGaia(t, 2, false)
	alt := harness.Alternate(t, servers...)
	m := s.startMirror(t, "unused", false)

	amd := harness.NewTestImage("linux/amd64", harness.Layer(700, 1<<20), harness.Layer(701, 1<<20), harness.Layer(702, 512<<10))
	arm := harness.NewTestImage("linux/arm64/v8", harness.Layer(710, 1<<20))
	index, err := harness.PushIndex(ctx, s.pusher, "library/app", "2.1", amd, arm)
	if err != nil {
		t.Fatal(err)
	}
	s.createRule(t, m, map[string]any{
		"name": "cache", "upstream": map[string]any{"url": s.proxy.URL, "username": "bot", "password": "bot-pw"},
		"repositories": []string{"library/*"}, "destination": "hub", "schedule": "24h", "enabled": true, "on_demand": true,
	})
	start := time.Now()
	// The mirror worker's questions carry X-Gaia-No-Pull-Through: they fetch nothing.
	req, _ := http.NewRequest(http.MethodHead, servers[0]+"/v2/hub/library/app/manifests/2.1", nil)
	req.Header.Set("X-Gaia-No-Pull-Through", "1")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("HEAD with X-Gaia-No-Pull-Through: %v %v", resp, err)
	}
	if n := s.proxy.count("manifest", "", start); n != 0 {
		t.Fatalf("a HEAD with X-Gaia-No-Pull-Through fetched %d manifests", n)
	}
	dir := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := exec.Command("skopeo", "copy", "--src-tls-verify=false", "--override-arch", "amd64", "--override-os", "linux",
				"docker://"+alt.Host()+"/hub/library/app:2.1", fmt.Sprintf("dir:%s/%d", dir, i)).CombinedOutput()
			if err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, out)
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("pull %d: %v", i, err)
		}
		got, _ := os.ReadFile(filepath.Join(dir, fmt.Sprint(i), "manifest.json"))
		if !bytes.Equal(got, amd.Manifest) {
			t.Fatalf("pull %d got manifest %s, want the upstream's amd64 image %s", i, digest.FromBytes(got), amd.Digest)
		}
	}
	for _, b := range amd.Blobs {
		if n := s.proxy.count("blob-start", b.Digest.String(), start); n != 1 {
			t.Errorf("blob %s fetched from the upstream %d times for 20 pulls, want once", b.Digest, n)
		}
	}
	for _, b := range arm.Blobs {
		if n := s.proxy.count("blob-start", b.Digest.String(), start); n != 0 {
			t.Errorf("arm64 blob %s fetched though nobody pulled it", b.Digest)
		}
	}
	if n := s.proxy.count("manifest", "2.1", start); n != 1 {
		t.Errorf("the index fetched %d times, want once", n)
	}
	if n := s.proxy.count("manifest", amd.Digest.String(), start); n != 1 {
		t.Errorf("the amd64 manifest fetched %d times, want once", n)
	}
	got, err := s.gaiaRobot.ManifestDigest(ctx, "hub/library/app", "2.1")
	if err != nil || got != index {
		t.Errorf("hub/library/app:2.1 in Gaia is %s (%v), upstream %s", got, err, index)
	}
	fetched := 0.0
	for _, u := range servers {
		fetched += harness.Metric(t, u, "gaia_registry_pullthrough_fetches_total", `kind="blob"`, `result="fetched"`)
	}
	if int(fetched) != len(amd.Blobs) {
		t.Errorf("servers fetched %v blobs, want %d", fetched, len(amd.Blobs))
	}
	// A blob asked for by digest alone (no manifest pulled) is fetched too.
	armLayer := arm.Blobs[1]
	code, body := harness.Get(t, servers[1]+"/v2/hub/library/app/blobs/"+armLayer.Digest.String())
	if code != http.StatusOK || digest.FromString(body) != armLayer.Digest {
		t.Errorf("blob pull-through: %d, %d bytes", code, len(body))
	}
	if n := s.proxy.count("blob-start", armLayer.Digest.String(), start); n != 1 {
		t.Errorf("the arm64 layer fetched %d times, want once", n)
	}
	// A run of the rule finds the tag up to date but the index stored
	// alone: it copies the child pull-through left for later.
	holds := upstream.New(upstream.Options{URL: servers[0], Header: http.Header{"X-Gaia-No-Pull-Through": {"1"}}})
	if _, ok, err := holds.HasManifest(ctx, "hub/library/app", arm.Digest.String()); ok || err != nil {
		t.Fatalf("the arm64 image is in Gaia though nobody pulled it (%v)", err)
	}
	worker := s.startMirror(t, "worker", true)
	run := s.waitRun(t, worker, "cache", s.runNow(t, worker, "cache"), time.Minute)
	if run.State != "succeeded" || run.Tags != 0 || run.Images != 1 {
		t.Errorf("run over the pulled-through index: %+v", run)
	}
	s.sameImage(t, ctx, "library/app", "hub/library/app", arm.Digest.String(), arm)
	// A blob Gaia holds elsewhere but the upstream repository lacks is not
	// linked on the strength of its digest: a 404, as without pull-through.
	secret := []byte("a private layer of another team")
	sd := digest.FromBytes(secret)
	if err := s.gaiaRobot.PushBlob(ctx, "private/team", sd, int64(len(secret)), bytes.NewReader(secret)); err != nil {
		t.Fatal(err)
	}
	if code, _ := harness.Get(t, servers[0]+"/v2/hub/library/app/blobs/"+sd.String()); code != http.StatusNotFound {
		t.Errorf("a private blob read through the pull-through namespace: %d", code)
	}
	// A rule's tags.latest holds for pull-through too.
	for _, tag := range []string{"1.0", "2.0"} {
		if err := image("linux/amd64", 800).Push(ctx, s.pusher, "library/old", tag); err != nil {
			t.Fatal(err)
		}
	}
	s.createRule(t, m, map[string]any{
		"name": "newest", "upstream": map[string]any{"url": s.proxy.URL, "username": "bot", "password": "bot-pw"},
		"repositories": []string{"library/old"}, "destination": "newest", "tags": map[string]any{"latest": 1},
		"schedule": "24h", "enabled": true, "on_demand": true,
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) { // servers cache rules for 5 s
		if code, _ := harness.Get(t, servers[1]+"/v2/newest/library/old/manifests/2.0"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("newest/library/old:2.0 never pulled through")
		}
	}
	if code, _ := harness.Get(t, servers[1]+"/v2/newest/library/old/manifests/1.0"); code != http.StatusNotFound {
		t.Errorf("a tag the rule's latest: 1 leaves out was pulled through: %d", code)
	}
	// A repository outside the rule is not fetched: a plain 404.
	if code, _ := harness.Get(t, servers[0]+"/v2/other/library/app/manifests/2.1"); code != http.StatusNotFound {
		t.Errorf("outside the rule: %d", code)
	}
	s.checkAllBlobs(t, ctx)
}

// TestPullThroughAbuse: pull-through cannot be turned against Gaia. An
// upstream manifest naming a blob the upstream repository does not hold
// (the digest of another team's private layer) does not get that blob
// linked. A flood of random digests under the rule's namespace, from
// clients that give up after 100 ms, is bounded (429 beyond the rule's
// blind lane, each digest asked upstream at most once, no pile-up of
// goroutines), and a real first pull during it completes.
func TestPullThroughAbuse(t *testing.T) {
	harness.Start(t, harness.Dockerd) // its install step brings skopeo
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Fatalf("skopeo is needed (tests/services/svc.sh installs it): %v", err)
	}
	ctx := context.Background()
	s := newMirrorSetup(t)
	const blindFetches, waiting = 4, 8
	s.gaiaExtra = fmt.Sprintf("pullthrough: {maxblindfetches: %d, maxwaiting: %d, negativettl: 10m}\n", blindFetches, waiting)
	gaia := s.startGaia(t, 1, false)[0]
	m := s.startMirror(t, "unused", false)

	amd := harness.NewTestImage("linux/amd64", harness.Layer(900, 512<<10), harness.Layer(901, 256<<10))
	arm := harness.NewTestImage("linux/arm64/v8", harness.Layer(910, 256<<10))
	if _, err := harness.PushIndex(ctx, s.pusher, "library/real", "1", amd, arm); err != nil {
		t.Fatal(err)
	}
	s.createRule(t, m, map[string]any{
		"name": "cache", "upstream": map[string]any{"url": s.proxy.URL, "username": "bot", "password": "bot-pw"},
		"repositories": []string{"library/*"}, "destination": "hub", "schedule": "24h", "enabled": true, "on_demand": true,
	})

	// A manifest naming a private layer of Gaia's, which the upstream
	// repository does not have: the fetch fails, nothing is linked.
	secret := []byte("a private layer of another team")
	sd := digest.FromBytes(secret)
	if err := s.gaiaRobot.PushBlob(ctx, "private/team", sd, int64(len(secret)), bytes.NewReader(secret)); err != nil {
		t.Fatal(err)
	}
	forged, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": v1.MediaTypeImageManifest, "config": amd.Blobs[0],
		"layers": []v1.Descriptor{{MediaType: v1.MediaTypeImageLayerGzip, Digest: sd, Size: int64(len(secret))}}})
	s.proxy.forged.Store("/v2/library/real/manifests/evil", forged)
	if code, body := harness.Get(t, gaia+"/v2/hub/library/real/manifests/evil"); code != http.StatusServiceUnavailable {
		t.Errorf("a manifest naming a blob its upstream lacks: %d %s", code, body)
	}
	req, _ := http.NewRequest(http.MethodHead, gaia+"/v2/hub/library/real/blobs/"+sd.String(), nil)
	req.Header.Set(api.NoPullThroughHeader, "1")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the private layer after the forged manifest: %v %v", resp, err)
	}
	if code, _ := harness.Get(t, gaia+"/v2/hub/library/real/blobs/"+sd.String()); code != http.StatusNotFound {
		t.Errorf("the private layer read through the namespace: %d", code)
	}

	// The flood: 5,000 random digests, each asked for twice, by 64
	// clients, against an upstream 20 ms away; a real first pull starts
	// after 1,000 requests, and the flood lasts until it is over.
	s.proxy.absentDelay.Store(int64(20 * time.Millisecond))
	const clients, distinct, total = 64, 5000, 10000
	random := make([]digest.Digest, distinct)
	isRandom := map[string]bool{}
	for i := range random {
		random[i] = digest.FromString(fmt.Sprintf("random %d %d", i, time.Now().UnixNano()))
		isRandom[random[i].String()] = true
	}
	base := harness.Metric(t, gaia, "go_goroutines")
	floodStart := time.Now()
	var next, refused atomic.Int64
	var pulled atomic.Bool
	started := make(chan struct{})
	unexpected := make(chan string, clients)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 100 * time.Millisecond} // an attacker does not wait
			for {
				i := next.Add(1) - 1
				if i == 1000 {
					close(started)
				}
				if i >= total && pulled.Load() {
					return
				}
				resp, err := c.Get(gaia + "/v2/hub/library/real/blobs/" + random[i%distinct].String())
				if err != nil {
					continue // gave up
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == http.StatusTooManyRequests && strings.Contains(string(body), `"TOOMANYREQUESTS"`) &&
					resp.Header.Get("Retry-After") != "":
					refused.Add(1)
				case resp.StatusCode == http.StatusNotFound:
				default:
					select {
					case unexpected <- fmt.Sprintf("%d %s", resp.StatusCode, body):
					default:
					}
				}
			}
		}()
	}
	pullErr := make(chan error, 1)
	dir := t.TempDir()
	go func() {
		<-started
		out, err := exec.Command("skopeo", "copy", "--src-tls-verify=false", "--override-arch", "amd64", "--override-os", "linux",
			"docker://"+strings.TrimPrefix(gaia, "http://")+"/hub/library/real:1", "dir:"+dir).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%v: %s", err, out)
		}
		pulled.Store(true)
		pullErr <- err
	}()
	floodOver := make(chan struct{})
	go func() { wg.Wait(); close(floodOver) }()
	peak := base
	for sampling := true; sampling; {
		select {
		case <-floodOver:
			sampling = false
		case <-time.After(50 * time.Millisecond):
		}
		peak = max(peak, harness.Metric(t, gaia, "go_goroutines"))
	}
	if err := <-pullErr; err != nil {
		t.Fatalf("the real pull during the flood: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "manifest.json")); !bytes.Equal(got, amd.Manifest) {
		t.Errorf("the real pull got manifest %s, want the upstream's amd64 image %s", digest.FromBytes(got), amd.Digest)
	}
	close(unexpected)
	for u := range unexpected {
		t.Errorf("a flood request answered %s", u)
	}
	// Waiting is bounded: beyond the blind lane and its queue, 429.
	busy := harness.Metric(t, gaia, "gaia_registry_pullthrough_busy_total", `rule="cache"`, `lane="blind"`)
	if refused.Load() == 0 || busy < float64(refused.Load()) {
		t.Errorf("%d flood requests refused with 429, the server counted %v: waiting is not bounded", refused.Load(), busy)
	}
	// Fetches are bounded: requests that gave up leave no fetch behind.
	if limit := base + 10*clients; peak > limit {
		t.Errorf("goroutines peaked at %v during the flood (%v before): more than %v, fetches pile up", peak, base, limit)
	}
	// Each random digest was asked for upstream at most once: the
	// upstream's answers are remembered.
	heads := map[string]int{}
	s.proxy.mu.Lock()
	for _, e := range s.proxy.events {
		if e.kind == "blob-head" && isRandom[e.ref] && !e.at.Before(floodStart) {
			heads[e.ref]++
		}
	}
	s.proxy.mu.Unlock()
	for d, n := range heads {
		if n > 1 {
			t.Errorf("random digest %s asked upstream %d times", d, n)
			break
		}
	}
	if hits := harness.Metric(t, gaia, "gaia_registry_pullthrough_negative_hits_total"); hits == 0 {
		t.Error("no flood request was answered from the negative cache")
	}
	t.Logf("flood: %d requests, %d refused, %d digests asked upstream, goroutines %v → peak %v",
		next.Load(), refused.Load(), len(heads), base, peak)
}

// TestMirrorIntoTokenAuthGaia: a worker writes into a Gaia behind token
// auth, where a mount without `from` covers only what the robot's token
// may pull: two repositories sharing a layer (fetched slowly, so both
// images wait for the one copy) get it by a mount from the repository
// it was copied into.
func TestMirrorIntoTokenAuthGaia(t *testing.T) {
	ctx := context.Background()
	s := newMirrorSetup(t)
	gts := harness.StartTokenServer(t, "gaia", map[string][2]string{"mirror-robot": {robotPassword, "pull,push"}})
	s.gaiaExtra = fmt.Sprintf("auth: {token: {realm: %q, service: %q, issuer: %q, rootcertbundle: %q}}\n",
		gts.Realm(), gts.Service, gts.Issuer, gts.CertFile)
	s.startGaia(t, 1, false)
	s.gaiaRobot = upstream.New(upstream.Options{URL: s.gaia, Username: "mirror-robot", Password: robotPassword})

	shared := harness.Layer(950, 1<<20)
	a := harness.NewTestImage("linux/amd64", shared, harness.Layer(951, 4<<10))
	b := harness.NewTestImage("linux/amd64", shared, harness.Layer(952, 4<<10))
	if err := a.Push(ctx, s.pusher, "library/a", "1"); err != nil {
		t.Fatal(err)
	}
	if err := b.Push(ctx, s.pusher, "library/b", "1"); err != nil {
		t.Fatal(err)
	}
	m := s.startMirror(t, "worker", true)
	s.createRule(t, m, map[string]any{
		"name": "two", "upstream": map[string]any{"url": s.proxy.URL, "username": "bot", "password": "bot-pw"},
		"repositories": []string{"library/a", "library/b"}, "destination": "tok", "schedule": "24h", "enabled": true,
	})
	s.proxy.rate.Store(1 << 20) // the shared layer takes about a second
	run := s.waitRun(t, m, "two", s.runNow(t, m, "two"), 2*time.Minute)
	if run.State != "succeeded" {
		t.Fatalf("run into token-auth Gaia: %+v\n%s", run, m.Log())
	}
	s.sameImage(t, ctx, "library/a", "tok/library/a", "1", a)
	s.sameImage(t, ctx, "library/b", "tok/library/b", "1", b)
	t.Logf("run: %+v, mounted %v", run, harness.Metric(t, m.URL(), "gaia_mirror_blobs_total", `how="mounted"`))
}
