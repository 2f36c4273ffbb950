// Package mirror benchmarks gaia-mirror against `skopeo sync` (Debian's
// package): the same image set, from the same local upstream (the stock
// distribution registry with token auth, like Docker Hub), into a fresh
// Gaia each (own PostgreSQL database and storage). Rounds alternate which
// tool goes first (the first warms the upstream's page cache for the
// second), and both are timed the same way: from their first request to
// the upstream (through a recording proxy both go through) to the end of
// their work, so neither pays process start-up and the other not.
//
//	make bench-mirror
//	go test -run '^$' -bench BenchmarkMirrorVsSkopeo -benchtime 1x -timeout 30m ./tests/bench/mirror/
//
// MIRROR_BENCH_ROUNDS (default 3) sets the rounds; MIRROR_BENCH_SHARED=0
// gives every image layers of its own (no shared base or repository
// layer, so cross-repository mounts cannot help). The medians and their
// ratio are printed as a markdown table for docs/benchmarks.md.
package mirror

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/mirror-sync/admin"
	"github.com/gaia-registry/gaia/mirror-sync/store"
	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/tests/harness"
)

// The image set: repositories × tags of single-platform images, each a
// base layer all share, a layer its repository's tags share, and its own
// layer; and a multi-arch index repository. Like a team's set of
// official images: shared bases, a few versions each.
const (
	repos     = 6
	tags      = 4
	baseSize  = 8 << 20
	repoSize  = 4 << 20
	ownSize   = 2 << 20
	multiTags = 2
)

func BenchmarkMirrorVsSkopeo(b *testing.B) {
	if _, err := exec.LookPath("skopeo"); err != nil {
		b.Fatalf("skopeo is needed (tests/services/svc.sh installs it): %v", err)
	}
	harness.Start(b, "postgres")
	rounds := 3
	if s := os.Getenv("MIRROR_BENCH_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	ctx := context.Background()
	ts := harness.StartTokenServer(b, "upstream", map[string][2]string{"pusher": {"push-pw", "pull,push"}})
	stockAddr := harness.FreeAddr(b)
	harness.StartStockRegistry(b, stockAddr, ts)
	first := startFirstRequestProxy(b, stockAddr) // what both tools mirror from
	upAddr := first.addr
	pusher := upstream.New(upstream.Options{URL: "http://" + upAddr, Username: "pusher", Password: "push-pw", Concurrency: 8})
	shared := os.Getenv("MIRROR_BENCH_SHARED") != "0"
	base := harness.Layer(1, baseSize)
	var names []string
	total, images := int64(len(base)), 0
	for r := range repos {
		repoLayer := harness.Layer(uint64(100+r), repoSize)
		total += int64(len(repoLayer))
		name := fmt.Sprintf("library/app%d", r)
		names = append(names, name)
		for t := range tags {
			own := harness.Layer(uint64(1000+10*r+t), ownSize)
			total += int64(len(own))
			if !shared && t > 0 { // every image its own base and repository layer
				base, repoLayer = harness.Layer(uint64(20000+10*r+t), baseSize), harness.Layer(uint64(30000+10*r+t), repoSize)
				total += int64(len(base) + len(repoLayer))
			}
			if err := harness.NewTestImage("linux/amd64", base, repoLayer, own).Push(ctx, pusher, name, fmt.Sprintf("1.%d", t)); err != nil {
				b.Fatal(err)
			}
			images++
		}
	}
	names = append(names, "library/multi")
	for t := range multiTags {
		var imgs []harness.TestImage
		for i, p := range []string{"linux/amd64", "linux/arm64/v8", "linux/s390x"} {
			own := harness.Layer(uint64(5000+10*t+i), ownSize)
			total += int64(len(own))
			if !shared {
				base = harness.Layer(uint64(40000+10*t+i), baseSize)
				total += int64(len(base))
			}
			imgs = append(imgs, harness.NewTestImage(p, base, own))
			images++
		}
		if _, err := harness.PushIndex(ctx, pusher, "library/multi", fmt.Sprintf("2.%d", t), imgs...); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("upstream: %d repositories, %d images, %.0f MiB of distinct blobs", len(names), images, float64(total)/(1<<20))

	srcYAML := filepath.Join(b.TempDir(), "sync.yml")
	y := fmt.Sprintf("%s:\n  tls-verify: false\n  images:\n", upAddr)
	for _, n := range names {
		y += fmt.Sprintf("    %s: []\n", n)
	}
	os.WriteFile(srcYAML, []byte(y), 0o644)

	var skopeoTimes, gaiaTimes []time.Duration
	runSkopeo := func() time.Duration {
		// skopeo sync into a fresh Gaia.
		gaia := freshGaia(b)
		defer gaia.done()
		syscall.Sync() // each measurement starts with no earlier writes pending
		first.arm()
		out, err := exec.Command("skopeo", "sync", "--all", "--preserve-digests", "--src", "yaml", "--dest", "docker",
			"--dest-tls-verify=false", srcYAML, gaia.Addr+"/mirror").CombinedOutput()
		d := first.since(b)
		if err != nil {
			b.Fatalf("skopeo sync: %v\n%s", err, out)
		}
		// skopeo sync names a copy by the source's last path component.
		checkMirrored(b, ctx, gaia.URL(), names, pusher, func(n string) string { return "mirror/" + path.Base(n) })
		return d
	}
	runGaia := func() time.Duration {
		// gaia-mirror into another fresh Gaia.
		gaia := freshGaia(b)
		defer gaia.done()
		db := gaia.db
		maddr := harness.FreeAddr(b)
		token := "bench-admin-token-0123456789"
		m := harness.StartDaemon(b, "./mirror-sync/cmd/gaia-mirror", nil, maddr, fmt.Sprintf(`log: {level: warn}
http: {addr: %s}
database: {url: %q, migrate: true}
admin: {token: %q}
registry: {url: %q}
worker: {poll: 100ms}
`, maddr, db, token, gaia.URL()))
		defer m.Stop()
		call := func(method, path string, body any) []byte {
			var rd io.Reader
			if body != nil {
				j, _ := json.Marshal(body)
				rd = bytes.NewReader(j)
			}
			req, _ := http.NewRequest(method, m.URL()+admin.Prefix+path, rd)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(resp.Body)
			if resp.StatusCode >= 300 {
				b.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, out)
			}
			return out
		}
		call(http.MethodPost, "", map[string]any{
			"name": "bench", "upstream": map[string]any{"url": "http://" + upAddr, "concurrency": 8},
			"repositories": names, "destination": "mirror", "schedule": "24h", "enabled": true,
		})
		syscall.Sync()
		first.arm()
		call(http.MethodPost, "/bench/run", nil)
		deadline := time.Now().Add(10 * time.Minute)
		for {
			var runs []store.Run
			json.Unmarshal(call(http.MethodGet, "/bench/runs", nil), &runs)
			if len(runs) > 0 && runs[0].State == "failed" {
				b.Fatalf("gaia-mirror run failed: %+v", runs[0])
			}
			if len(runs) > 0 && runs[0].State == "succeeded" {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("gaia-mirror run not finished after 10 minutes: %+v", runs)
			}
			time.Sleep(20 * time.Millisecond)
		}
		d := first.since(b)
		checkMirrored(b, ctx, gaia.URL(), names, pusher, func(n string) string { return "mirror/" + n })
		return d
	}
	for round := range rounds {
		var ds, dg time.Duration
		order := "skopeo first"
		if round%2 == 0 {
			ds, dg = runSkopeo(), runGaia()
		} else {
			order = "gaia-mirror first"
			dg, ds = runGaia(), runSkopeo()
		}
		skopeoTimes, gaiaTimes = append(skopeoTimes, ds), append(gaiaTimes, dg)
		b.Logf("round %d (%s): skopeo sync %s, gaia-mirror %s", round+1, order, ds.Round(time.Millisecond), dg.Round(time.Millisecond))
	}
	ms, mg := median(skopeoTimes), median(gaiaTimes)
	b.ReportMetric(ms.Seconds(), "skopeo-s")
	b.ReportMetric(mg.Seconds(), "gaia-mirror-s")
	b.ReportMetric(mg.Seconds()/ms.Seconds(), "ratio")
	kind := "shared base layers"
	if !shared {
		kind = "no layer shared"
	}
	fmt.Printf("\n| mirror %d images (%d repositories, %.0f MiB distinct, %s) | median of %d | runs |\n|---|---|---|\n",
		images, len(names), float64(total)/(1<<20), kind, rounds)
	fmt.Printf("| skopeo sync --all (v1.9.3, Debian) | %.2f s | %s |\n", ms.Seconds(), fmtTimes(skopeoTimes))
	fmt.Printf("| gaia-mirror | %.2f s | %s |\n", mg.Seconds(), fmtTimes(gaiaTimes))
	fmt.Printf("| **gaia-mirror / skopeo wall time** | **%.2f×** | |\n\n", mg.Seconds()/ms.Seconds())
}

// firstRequestProxy forwards to the upstream and records when the first
// request after arm arrived: the start of a tool's work.
type firstRequestProxy struct {
	addr  string
	mu    sync.Mutex
	armed bool
	start time.Time
}

func startFirstRequestProxy(b *testing.B, target string) *firstRequestProxy {
	p := &firstRequestProxy{}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		if p.armed && p.start.IsZero() {
			p.start = time.Now()
		}
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	b.Cleanup(srv.Close)
	p.addr = srv.Listener.Addr().String()
	return p
}

// arm starts watching for a first request.
func (p *firstRequestProxy) arm() {
	p.mu.Lock()
	p.armed, p.start = true, time.Time{}
	p.mu.Unlock()
}

// since is the time from the first request since arm to now.
func (p *firstRequestProxy) since(b *testing.B) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.start.IsZero() {
		b.Fatal("the tool sent no request to the upstream")
	}
	p.armed = false
	return time.Since(p.start)
}

type gaiaTarget struct {
	*harness.Registry
	db, storage string
}

// freshGaia starts a Gaia with its own database and storage directory.
func freshGaia(b *testing.B) gaiaTarget {
	db := harness.NewDatabase(b)
	addr := harness.FreeAddr(b)
	storage, err := os.MkdirTemp("", "gaia-mirror-bench-")
	if err != nil {
		b.Fatal(err)
	}
	r := harness.StartRegistry(b, addr, harness.RegistryConfig(addr, db, storage))
	return gaiaTarget{r, db, storage}
}

// done stops the Gaia and removes its storage, so rounds do not pile up
// writes on the disk for the next ones.
func (g gaiaTarget) done() {
	g.Stop()
	os.RemoveAll(g.storage)
}

// checkMirrored: every upstream tag is in Gaia under mirror/, same digest.
func checkMirrored(b *testing.B, ctx context.Context, gaia string, names []string, up *upstream.Client, dst func(string) string) {
	b.Helper()
	g := upstream.New(upstream.Options{URL: gaia})
	for _, n := range names {
		want, err := up.Tags(ctx, n)
		if err != nil {
			b.Fatal(err)
		}
		got, err := g.Tags(ctx, dst(n))
		if err != nil {
			b.Fatalf("%s: %v", dst(n), err)
		}
		sort.Strings(want)
		sort.Strings(got)
		if !slices.Equal(want, got) {
			b.Fatalf("%s has tags %v, upstream %v", dst(n), got, want)
		}
		for _, tag := range want {
			w, _ := up.ManifestDigest(ctx, n, tag)
			if d, err := g.ManifestDigest(ctx, dst(n), tag); err != nil || d != w {
				b.Fatalf("%s:%s is %s (%v), upstream %s", dst(n), tag, d, err, w)
			}
		}
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func fmtTimes(ds []time.Duration) string {
	out := ""
	for i, d := range ds {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("%.2f", d.Seconds())
	}
	return out
}
