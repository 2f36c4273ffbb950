// Package gc benchmarks Gaia's online garbage collection (make bench-gc):
//
//   - throughput: one `gaia-registry gc run` pass over GC_BENCH_BLOBS
//     (default 100,000) unreferenced blobs on filesystem storage, reviewed
//     and deleted (rows, then bytes);
//   - the cost to clients: manifest GET p99 (8 clients) and a
//     GC_BENCH_PUSH (default 1 GiB) blob push, with the collector off and
//     then flat out (a `gc run --loop` worker, no review delay, over the
//     same backlog again), then paced (gc.rate, GC_BENCH_RATE, default
//     200/s), in one run;
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

	// 3. Clients with the collector off, then flat out, on one server.
	{
		db, root := harness.NewDatabase(b), b.TempDir()
		addr := harness.FreeAddr(b)
		text := harness.RegistryConfig(addr, db, root) + "gc: {disabled: true}\n"
		reg := harness.StartRegistry(b, addr, text)
		base := reg.URL()
		p99Off, pushOff := clientCost(b, base, pushSize, 10)
		garbage(b, n, root, "", db, 3)
		worker := exec.Command(bin, "gc", "run", "--loop", "--config",
			writeConfig(b, harness.RegistryConfig(harness.FreeAddr(b), db, root)+"gc: {reviewafter: 0s, batch: 500, interval: 10ms}\n"))
		worker.Stdout, worker.Stderr = os.Stderr, os.Stderr
		if err := worker.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { worker.Process.Kill(); worker.Wait() }()
		// Let it get going, then measure while it works.
		for {
			if r, _ := queued(b, db); r < n-1000 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		p99On, pushOn := clientCost(b, base, pushSize, 11)
		reviews, deletions := queued(b, db)
		worker.Process.Kill()
		worker.Wait()
		// The same backlog, the collector paced (gc.rate).
		rate := envInt("GC_BENCH_RATE", 200)
		paced := exec.Command(bin, "gc", "run", "--loop", "--config",
			writeConfig(b, harness.RegistryConfig(harness.FreeAddr(b), db, root)+fmt.Sprintf("gc: {reviewafter: 0s, batch: 500, interval: 10ms, rate: %d}\n", rate)))
		paced.Stdout, paced.Stderr = os.Stderr, os.Stderr
		if err := paced.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { paced.Process.Kill(); paced.Wait() }()
		before, _ := queued(b, db)
		for {
			if r, _ := queued(b, db); r < before-100 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		t0 := time.Now()
		before, _ = queued(b, db)
		p99Paced, pushPaced := clientCost(b, base, pushSize, 12)
		after, _ := queued(b, db)
		pacedRate := float64(before-after) / time.Since(t0).Seconds()
		b.Logf("clients, collector off:       manifest GET p99 %s, %d MiB push %.0f MiB/s",
			p99Off.Round(10*time.Microsecond), pushSize>>20, pushOff)
		b.Logf("clients, collector flat out:  manifest GET p99 %s, %d MiB push %.0f MiB/s (%d reviews and %d byte deletions still queued at the end: it was busy throughout)",
			p99On.Round(10*time.Microsecond), pushSize>>20, pushOn, reviews, deletions)
		b.Logf("ratios (on/off): GET p99 %.2f, push throughput %.2f", float64(p99On)/float64(p99Off), pushOn/pushOff)
		b.Logf("clients, collector paced at %d/s: manifest GET p99 %s, %d MiB push %.0f MiB/s (it reviewed about %.0f blobs/s meanwhile); ratios to off: GET p99 %.2f, push %.2f",
			rate, p99Paced.Round(10*time.Microsecond), pushSize>>20, pushPaced, pacedRate, float64(p99Paced)/float64(p99Off), pushPaced/pushOff)
		if reviews+deletions == 0 {
			b.Logf("note: the collector finished before the clients did; raise GC_BENCH_BLOBS")
		}
	}
}
