// Package gc benchmarks Gaia's online garbage collection (make bench-gc):
//
//   - throughput: one `gaia-registry gc run` pass over GC_BENCH_BLOBS
//     (default 100,000) unreferenced blobs on filesystem storage, reviewed
//     and deleted (rows, then bytes);
//   - the cost to clients: manifest GET p99 (8 clients) and a
//     GC_BENCH_PUSH (default 1 GiB) blob push, with no collector, one
//     flat out (a `gc run --loop` worker, no review delay, at its default
//     gc.nice 19), one flat out at nice 0 (the server's priority) and one
//     paced (gc.rate, GC_BENCH_RATE, default 200/s), and for reference no
//     collector but a SCHED_IDLE busy loop on every core (what any work
//     beside the clients costs them here), interleaved over
//     GC_BENCH_ROUNDS (3) rounds, medians;
//   - for the record, the stock registry's `garbage-collect` (which needs
//     the registry read-only) over the same number of unreferenced blobs.
//
// Results go to the log (go test -v) and docs/benchmarks.md by hand.
package gc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/uploadsession"
	"github.com/gaia-registry/gaia/tests/harness"
)

func envInt(name string, def int64) int64 {
	if v, err := strconv.ParseInt(os.Getenv(name), 10, 64); err == nil && v > 0 {
		return v
	}
	return def
}

// garbage writes n unreferenced blobs (64 bytes each) into storage at root
// (layout: Gaia's when prefix is "", else under prefix, as the stock
// registry's "/docker/registry/v2") and, when db is set, their rows: each
// linked in repository junk/blobs and placed in IDC default, so the link
// trigger queues its review, as after a push whose manifest never came.
func garbage(b *testing.B, n int, root, prefix, db string, seed uint64) {
	b.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	ds := make([]string, n)
	for i := range n {
		data := make([]byte, 64)
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		d := digest.FromBytes(data)
		p := filepath.Join(root, prefix, strings.TrimPrefix(uploadsession.BlobPath(d), "/"))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
		ds[i] = d.String()
	}
	if db == "" {
		return
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	var repo int64
	if err := conn.QueryRow(ctx, `INSERT INTO repositories (name) VALUES ('junk/blobs') ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id`).Scan(&repo); err != nil {
		b.Fatal(err)
	}
	copyRows := func(table string, cols []string, row func(d string) []any) {
		if _, err := conn.CopyFrom(ctx, pgx.Identifier{table}, cols, pgx.CopyFromSlice(len(ds), func(i int) ([]any, error) {
			return row(ds[i]), nil
		})); err != nil {
			b.Fatal(err)
		}
	}
	copyRows("blobs", []string{"digest", "size"}, func(d string) []any { return []any{d, int64(64)} })
	copyRows("blob_placements", []string{"digest", "idc"}, func(d string) []any { return []any{d, "default"} })
	copyRows("repository_blobs", []string{"repository_id", "digest"}, func(d string) []any { return []any{repo, d} })
}

func countFiles(root string) int {
	n := 0
	filepath.WalkDir(root, func(_ string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() && e.Name() == "data" {
			n++
		}
		return nil
	})
	return n
}

func writeConfig(b *testing.B, text string) string {
	b.Helper()
	p := filepath.Join(b.TempDir(), "config.yml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

// clientCost measures manifest GET p99 (8 clients, 4,000 GETs) and the
// throughput of one pushSize blob push (monolithic PUT, streamed).
func clientCost(b *testing.B, base string, pushSize int64, seed uint64) (p99 time.Duration, mibps float64) {
	b.Helper()
	img := harness.NewTestImage("linux/amd64", harness.Layer(seed, 1024))
	for d, content := range img.Content {
		resp, err := http.Post(base+"/v2/bench/app/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(content))
		if err != nil || resp.StatusCode != http.StatusCreated {
			b.Fatalf("push blob: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/bench/app/manifests/v1", bytes.NewReader(img.Manifest))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusCreated {
		b.Fatalf("push manifest: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for range 500 {
				req, _ := http.NewRequest(http.MethodGet, base+"/v2/bench/app/manifests/v1", nil)
				req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil || resp.StatusCode != http.StatusOK {
					b.Errorf("manifest GET: %v %v", resp, err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(lat)
	p99 = lat[len(lat)*99/100]

	gen := func() io.Reader { return io.LimitReader(&prng{r: rand.New(rand.NewPCG(seed, 2))}, pushSize) }
	h := sha256.New()
	io.Copy(h, gen())
	d := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil))
	resp, err := http.Post(base+"/v2/bench/big/blobs/uploads/", "", nil)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		b.Fatalf("start upload: %v %v", resp, err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, "http") {
		loc = base + loc
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	t0 := time.Now()
	req, _ = http.NewRequest(http.MethodPut, loc+sep+"digest="+d.String(), gen())
	req.ContentLength = pushSize
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusCreated {
		b.Fatalf("push %d bytes: %v %v", pushSize, resp, err)
	}
	resp.Body.Close()
	return p99, float64(pushSize) / (1 << 20) / time.Since(t0).Seconds()
}

type prng struct{ r *rand.Rand }

func (p *prng) Read(b []byte) (int, error) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := p.r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(p.r.Uint32())
	}
	return len(b), nil
}

func queued(b *testing.B, db string) (reviews, deletions int) {
	b.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM gc_blob_reviews), (SELECT count(*) FROM gc_blob_deletions)`).Scan(&reviews, &deletions)
	return
}

func BenchmarkGC(b *testing.B) {
	harness.Start(b, harness.Postgres)
	n := int(envInt("GC_BENCH_BLOBS", 100_000))
	pushSize := envInt("GC_BENCH_PUSH", 1<<30)
	bin := harness.Binary(b, "./registry/cmd/gaia-registry")

	// 1. Throughput: one pass over n unreferenced blobs.
	{
		db, root := harness.NewDatabase(b), b.TempDir()
		addr := harness.FreeAddr(b)
		cfg := writeConfig(b, harness.RegistryConfig(addr, db, root)+"gc: {reviewafter: 0s, batch: 500}\n")
		// The schema (database.migrate) comes with a first `gc status`.
		if out, err := exec.Command(bin, "migrate", "--config", cfg).CombinedOutput(); err != nil {
			b.Fatalf("migrate: %v\n%s", err, out)
		}
		t0 := time.Now()
		garbage(b, n, root, "", db, 1)
		b.Logf("loaded %d unreferenced blobs in %s", n, time.Since(t0).Round(time.Millisecond))
		t0 = time.Now()
		out, err := exec.Command(bin, "gc", "run", "--config", cfg).CombinedOutput()
		wall := time.Since(t0)
		if err != nil {
			b.Fatalf("gc run: %v\n%s", err, out)
		}
		if left := countFiles(filepath.Join(root, "blobs")); left != 0 {
			b.Fatalf("%d blob objects left after the pass:\n%s", left, out)
		}
		b.Logf("gaia gc run: %d blobs reviewed and deleted (rows and bytes) in %s: %.0f blobs/s\n%s",
			n, wall.Round(time.Millisecond), float64(n)/wall.Seconds(), strings.TrimSpace(string(out)))
		b.ReportMetric(float64(n)/wall.Seconds(), "blobs/s")
	}

	// 2. The stock registry's garbage-collect over as many unreferenced blobs.
	{
		root := b.TempDir()
		garbage(b, n, root, "docker/registry/v2", "", 2)
		if err := os.MkdirAll(filepath.Join(root, "docker/registry/v2/repositories"), 0o755); err != nil {
			b.Fatal(err)
		}
		cfg := writeConfig(b, fmt.Sprintf("version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %q}, delete: {enabled: true}}\nhttp: {addr: 127.0.0.1:0}\n", root))
		stock := harness.StockRegistryBinary(b)
		t0 := time.Now()
		out, err := exec.Command(stock, "garbage-collect", cfg).CombinedOutput()
		wall := time.Since(t0)
		if err != nil {
			b.Fatalf("stock garbage-collect: %v\n%s", err, out)
		}
		if left := countFiles(filepath.Join(root, "docker/registry/v2/blobs")); left != 0 {
			b.Fatalf("stock garbage-collect left %d blobs", left)
		}
		b.Logf("stock registry garbage-collect: %d blobs in %s (%.0f blobs/s), registry read-only meanwhile",
			n, wall.Round(time.Millisecond), float64(n)/wall.Seconds())
	}

	// 3. The cost to clients. One server, one backlog of n unreferenced
	// blobs. Each round measures the clients five times, interleaved:
	// with no collector, with a `gc run --loop` worker flat out (no review
	// delay, no pacing) at its default niceness and at nice 0, with one
	// paced at gc.rate, and with no collector but a busy loop per core at
	// SCHED_IDLE (the floor, see spin); a worker starts
	// before its measurement (measured once it has reviewed 100) and is
	// killed after it. Before each measurement the page cache's dirty data
	// (the previous 1 GiB push, the backlog's files) is written back
	// (sync), so no condition pays for another's writes.
	{
		db, root := harness.NewDatabase(b), b.TempDir()
		addr := harness.FreeAddr(b)
		text := harness.RegistryConfig(addr, db, root) + "gc: {disabled: true}\n"
		reg := harness.StartRegistry(b, addr, text)
		base := reg.URL()
		clientCost(b, base, pushSize, 9) // warm-up, not counted
		garbage(b, n, root, "", db, 3)
		rate := envInt("GC_BENCH_RATE", 200)
		collector := func(extra string) func() {
			w := exec.Command(bin, "gc", "run", "--loop", "--config",
				writeConfig(b, harness.RegistryConfig(harness.FreeAddr(b), db, root)+"gc: {reviewafter: 0s, batch: 500, interval: 10ms"+extra+"}\n"))
			w.Stdout, w.Stderr = os.Stderr, os.Stderr
			if err := w.Start(); err != nil {
				b.Fatal(err)
			}
			stop := func() { w.Process.Kill(); w.Wait() }
			before, _ := queued(b, db)
			for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
				if r, _ := queued(b, db); r <= before-100 {
					return stop
				}
				if time.Now().After(deadline) {
					stop()
					b.Fatal("the collector reviewed nothing in a minute")
				}
			}
		}
		rounds := int(envInt("GC_BENCH_ROUNDS", 3))
		// The floor, for reference: what any work beside the clients
		// costs them on this machine, whatever its priority. A busy loop
		// per core under SCHED_IDLE (the lowest there is: it runs only
		// when nothing else wants the core) and no collector.
		spin := func() func() {
			var ps []*exec.Cmd
			for range runtime.NumCPU() {
				p := exec.Command("chrt", "--idle", "0", "sh", "-c", "while :; do :; done")
				if err := p.Start(); err != nil {
					b.Fatalf("chrt --idle (util-linux): %v", err)
				}
				ps = append(ps, p)
			}
			return func() {
				for _, p := range ps {
					p.Process.Kill()
					p.Wait()
				}
			}
		}
		type cond struct {
			name  string
			extra string // the worker's gc config; "-": none
			spin  bool
			p99   []time.Duration
			push  []float64
			done  []float64 // reviews per second meanwhile
		}
		conds := []*cond{{name: "off", extra: "-"}, {name: "flat out"}, {name: "flat out at nice 0", extra: ", nice: 0"},
			{name: fmt.Sprintf("paced at %d/s", rate), extra: fmt.Sprintf(", rate: %d", rate)},
			{name: "off, a SCHED_IDLE busy loop per core instead", extra: "-", spin: true}}
		for r := range rounds {
			for k, c := range conds {
				exec.Command("sync").Run()
				stop := func() {}
				if c.spin {
					stop = spin()
				} else if c.extra != "-" {
					stop = collector(c.extra)
				}
				before, _ := queued(b, db)
				t0 := time.Now()
				p99, push := clientCost(b, base, pushSize, uint64(10+3*r+k))
				after, _ := queued(b, db)
				stop()
				c.p99, c.push = append(c.p99, p99), append(c.push, push)
				c.done = append(c.done, max(0, float64(before-after)/time.Since(t0).Seconds()))
				b.Logf("round %d, collector %s: manifest GET p99 %s, %d MiB push %.0f MiB/s, %.0f reviews/s meanwhile",
					r+1, c.name, p99.Round(10*time.Microsecond), pushSize>>20, push, c.done[len(c.done)-1])
			}
		}
		reviews, deletions := queued(b, db)
		med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
		medD := func(v []time.Duration) time.Duration { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
		off := conds[0]
		for _, c := range conds {
			b.Logf("clients, collector %s (median of %d): manifest GET p99 %s, %d MiB push %.0f MiB/s, %.0f reviews/s; ratios to off: GET p99 %.2f, push %.2f",
				c.name, rounds, medD(c.p99).Round(10*time.Microsecond), pushSize>>20, med(c.push), med(c.done),
				float64(medD(c.p99))/float64(medD(off.p99)), med(c.push)/med(off.push))
		}
		b.Logf("%d reviews and %d byte deletions still queued at the end", reviews, deletions)
		if reviews+deletions == 0 {
			b.Logf("note: the collectors finished before the clients did; raise GC_BENCH_BLOBS")
		}
	}
}
