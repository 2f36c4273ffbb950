package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/registry/gc"
	"github.com/gaia-registry/gaia/registry/uploadsession"
	"github.com/gaia-registry/gaia/tests/harness"
)

// gcConfig is the usual test config (filesystem storage at root) plus a
// gc section.
func gcConfig(t *testing.T, addr, db, root, gcYAML string) string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "config.yml")
	text := harness.RegistryConfig(addr, db, root) + "gc: " + gcYAML + "\n"
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// gcCLI runs `gaia-registry gc ARGS --config cfg` and returns its output.
func gcCLI(t *testing.T, cfg string, args ...string) string {
	t.Helper()
	cmd := exec.Command(harness.Binary(t, "./registry/cmd/gaia-registry"), append(append([]string{"gc"}, args...), "--config", cfg)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("gaia-registry gc %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestGCCrashSweep: a server killed -9 mid-upload, after moving the blob
// into place and before recording it, leaves an object no row knows. The
// storage walk leaves it alone while younger than the grace period, then
// removes it; the pushed image's blobs stay, whole.
func TestGCCrashSweep(t *testing.T) {
	db, root := harness.NewDatabase(t), t.TempDir()
	normal := startParked(t, db, root, "")
	pushSmallImage(t, normal.URL(), "keep/app", "v1")

	parked := startParked(t, db, root, uploadsession.StepMoved)
	data := []byte(fmt.Sprintf("orphaned by a crash, %d", time.Now().UnixNano()))
	d := digest.FromBytes(data)
	loc := startUpload(t, parked.URL(), "crash/app")
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	send(request(t, http.MethodPut, parked.URL()+loc+sep+"digest="+d.String(), data, "Content-Type", "application/octet-stream"))
	waitParked(t, parked)
	parked.Kill()
	orphan := filepath.Join(root, strings.TrimPrefix(uploadsession.BlobPath(d), "/"))
	if _, err := os.Stat(orphan); err != nil {
		t.Fatalf("the killed upload left no object at its blob path: %v", err)
	}

	young := gcConfig(t, harness.FreeAddr(t), db, root, "{walk: {grace: 1h, rate: 1000}}")
	out := gcCLI(t, young, "run", "--walk")
	if _, err := os.Stat(orphan); err != nil || !strings.Contains(out, "removed 0 objects") {
		t.Fatalf("an object younger than the grace period was removed (%v):\n%s", err, out)
	}
	old := gcConfig(t, harness.FreeAddr(t), db, root, "{walk: {grace: 1ns, rate: 1000}}")
	out = gcCLI(t, old, "run", "--walk")
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) || !strings.Contains(out, "removed 1 objects") {
		t.Fatalf("orphaned object after the grace period: %v\n%s", err, out)
	}
	// Nothing else went: every recorded blob is whole, the image pulls.
	conn, err := pgx.Connect(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if n := blobsWhole(t, conn, fsBlobs(root)); n != 2 {
		t.Fatalf("%d blobs recorded and whole; want the image's 2", n)
	}
	if code, _ := harness.Get(t, normal.URL()+"/v2/keep/app/manifests/v1"); code != http.StatusOK {
		t.Fatalf("manifest after the walk: %d", code)
	}
}

// TestGCDuringTraffic: clients push and pull while a server collects a
// backlog of garbage flat out; no client request fails (the stock
// registry's garbage-collect needs the registry read-only). Then `gc
// status` reports the backlog gone and `gc run --dry-run` has nothing
// due to delete.
func TestGCDuringTraffic(t *testing.T) {
	ctx := context.Background()
	db, root := harness.NewDatabase(t), t.TempDir()
	// This server collects nothing (reviews are due after an hour) until
	// the backlog is aged below.
	addr := harness.FreeAddr(t)
	cfg := gcConfig(t, addr, db, root, "{reviewafter: 1h, interval: 20ms, batch: 10}")
	text, _ := os.ReadFile(cfg)
	reg := harness.StartRegistry(t, addr, string(text))
	base := reg.URL()
	// No retries: a request the collector disturbed would fail the round.
	client := upstream.New(upstream.Options{URL: base, MaxRetries: -1})

	const garbage = 40
	for i := range garbage {
		img := harness.NewTestImage("linux/amd64", harness.Layer(uint64(i), 4096), harness.Layer(uint64(10_000+i), 2048))
		if err := img.Push(ctx, client, "junk/app", "v1"); err != nil { // each push untags the one before
			t.Fatal(err)
		}
	}
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Traffic first, then the backlog comes due: the collector starts
	// while the clients run.
	var wg sync.WaitGroup
	var ops, failures atomic.Int64
	var collected atomic.Bool
	var firstErr error
	var mu sync.Mutex
	for c := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Bounded: at most 60 push+pull rounds each, until the
			// collector has emptied the backlog.
			for i := 0; i < 60 && !collected.Load(); i++ {
				img := harness.NewTestImage("linux/amd64", harness.Layer(uint64(1_000_000+c*1000+i), 8192))
				repo := fmt.Sprintf("live/c%d", c)
				err := img.Push(ctx, client, repo, "v1")
				if err == nil {
					var got []byte
					got, _, _, err = client.Manifest(ctx, repo, "v1")
					if err == nil && !bytes.Equal(got, img.Manifest) {
						err = fmt.Errorf("pulled another manifest")
					}
					for _, b := range img.Blobs {
						if err != nil {
							break
						}
						r, berr := client.Blob(ctx, repo, b.Digest, b.Size)
						if berr != nil {
							err = berr
							break
						}
						var buf bytes.Buffer
						if _, err = buf.ReadFrom(r); err == nil && digest.FromBytes(buf.Bytes()) != b.Digest {
							err = fmt.Errorf("blob %s: wrong bytes", b.Digest)
						}
						r.Close()
					}
				}
				ops.Add(1)
				if err != nil {
					failures.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for ops.Load() < 4 {
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := conn.Exec(ctx, `UPDATE gc_manifest_reviews SET queued_at = now() - interval '2 hours'
		WHERE manifest_id IN (SELECT m.id FROM manifests m JOIN repositories r ON r.id = m.repository_id WHERE r.name = 'junk/app')`); err != nil {
		t.Fatal(err)
	}
	opsAtStart := ops.Load()
	// The collector deletes the 39 untagged manifests, then their blobs
	// come due (queued now, an hour's delay): age those as they appear.
	waitUntil(t, "the backlog collected", func() bool {
		conn.Exec(ctx, `UPDATE gc_blob_reviews SET queued_at = now() - interval '2 hours'
			WHERE queued_at > now() - interval '1 hour' AND digest NOT IN (SELECT digest FROM manifest_blobs)
			AND digest NOT IN (SELECT rb.digest FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id WHERE r.name LIKE 'live/%')`)
		var manifests, blobs int
		conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM manifests m JOIN repositories r ON r.id = m.repository_id WHERE r.name = 'junk/app'),
			(SELECT count(*) FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id WHERE r.name = 'junk/app')`).Scan(&manifests, &blobs)
		return manifests == 1 && blobs == 3
	})
	collected.Store(true)
	wg.Wait()
	if failures.Load() > 0 {
		t.Fatalf("%d of %d client push+pull rounds failed while the collector ran: %v", failures.Load(), ops.Load(), firstErr)
	}
	if ops.Load() == opsAtStart {
		t.Fatal("no client round ran while the collector worked: the test showed nothing")
	}
	t.Logf("%d push+pull rounds, %d during collection", ops.Load(), ops.Load()-opsAtStart)
	// The collector's deletions reached storage: only the kept image's
	// junk blobs remain, whole.
	if n := blobsWhole(t, conn, fsBlobs(root)); n == 0 {
		t.Fatal("no blob recorded")
	}
	var unplacedObjects int
	entries, _ := filepath.Glob(filepath.Join(root, "blobs", "sha256", "*", "*"))
	for _, e := range entries {
		var known bool
		conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM blobs WHERE digest = 'sha256:' || $1)`, filepath.Base(e)).Scan(&known)
		if !known {
			unplacedObjects++
		}
	}
	if unplacedObjects > 0 {
		t.Errorf("%d objects in storage without a blob row after collection", unplacedObjects)
	}
	if got := reg.Metric(t, "gaia_gc_deletions_total", "kind", "manifest"); got != garbage-1 {
		t.Errorf("gaia_gc_deletions_total{kind=manifest} = %v, want %d", got, garbage-1)
	}
	if got := reg.Metric(t, "gaia_gc_bytes_reclaimed_total", "idc", "default"); got <= 0 {
		t.Errorf("gaia_gc_bytes_reclaimed_total = %v", got)
	}

	var st gc.Status
	if err := json.Unmarshal([]byte(gcCLI(t, cfg, "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	var manifestsDeleted, reclaimed int64
	for _, tot := range st.Totals {
		manifestsDeleted += tot.ManifestsDeleted
		reclaimed += tot.BytesReclaimed
	}
	if manifestsDeleted != garbage-1 || reclaimed <= 0 {
		t.Errorf("gc status totals %+v; want %d manifests deleted and bytes reclaimed", st.Totals, garbage-1)
	}
	// An untagged manifest, aged: the dry run says it would go, and why,
	// and deletes nothing.
	if err := harness.NewTestImage("linux/amd64", harness.Layer(77, 100)).Push(ctx, client, "junk/app", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := reg.Stop(); err != nil { // its collector would act on the aged entry
		t.Fatalf("graceful stop: %v\n%s", err, reg.Log())
	}
	conn.Exec(ctx, `UPDATE gc_manifest_reviews SET queued_at = now() - interval '2 hours'`)
	out := gcCLI(t, cfg, "run", "--dry-run")
	if !strings.Contains(out, "delete manifest junk/app@") || !strings.Contains(out, "untagged and unreferenced") {
		t.Errorf("dry run:\n%s", out)
	}
	var left int
	conn.QueryRow(ctx, `SELECT count(*) FROM manifests m JOIN repositories r ON r.id = m.repository_id WHERE r.name = 'junk/app'`).Scan(&left)
	if left != 2 {
		t.Errorf("%d junk/app manifests after a dry run; want 2 (nothing deleted)", left)
	}
}
