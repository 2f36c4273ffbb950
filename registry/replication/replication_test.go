package replication

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
	"github.com/gaia-registry/gaia/registry/uploadsession"
)

// env: a database where IDC "a" holds one blob linked in repo "r", a peer
// gateway for "a" that serves it (failing the first `failures` requests),
// and a Replicator of IDC "b" with its own storage.
func env(t *testing.T, failures int64, prefixes ...string) (*Replicator, *pgxpool.Pool, []byte, digest.Digest, *atomic.Int64) {
	t.Helper()
	pool := metadatatest.Pool(t)
	data, d := seed(t, pool)
	var calls atomic.Int64
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if r.Header.Get(TokenHeader) != "tok" || r.Header.Get(NoFillHeader) == "" || r.Header.Get(IDCHeader) != "b" ||
			r.URL.Path != "/v2/r/blobs/"+d.String() {
			http.Error(w, "bad fill request", 400)
			return
		}
		if n <= failures {
			http.Error(w, "down", 503)
			return
		}
		w.Write(data)
	}))
	t.Cleanup(peer.Close)
	drv, err := filesystem.FromParameters(map[string]any{"rootdirectory": t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	r := New(Options{
		IDC: "b", Peers: map[string]string{"a": peer.URL}, Token: "tok", Prefixes: prefixes,
		DB: pool, Driver: drv, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Bytes:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"direction", "cause", "peer"}),
		RetryDelay: time.Millisecond,
	})
	return r, pool, data, d, &calls
}

// seed records a random 300,000-byte blob, linked in repository "r" and
// held by IDC "a" only, and returns its bytes and digest.
func seed(t *testing.T, pool *pgxpool.Pool) ([]byte, digest.Digest) {
	t.Helper()
	data := make([]byte, 300_000)
	rand.Read(data)
	d := digest.FromBytes(data)
	for _, q := range []string{
		`INSERT INTO repositories (name) VALUES ('r')`,
		`INSERT INTO blobs (digest, size) VALUES ('` + d.String() + `', 300000)`,
		`INSERT INTO repository_blobs (repository_id, digest) SELECT id, '` + d.String() + `' FROM repositories`,
		`INSERT INTO blob_placements (digest, idc) VALUES ('` + d.String() + `', 'a')`,
	} {
		if _, err := pool.Exec(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
	return data, d
}

// Concurrent fills copy once, verify, store in this IDC's storage and
// record the placement.
func TestFillOnce(t *testing.T) {
	r, pool, data, d, calls := env(t, 0)
	ctx := context.Background()
	errs := make(chan error, 8)
	for range 8 {
		go func() { errs <- r.Fill(ctx, "r", d) }()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("%d transfers for 8 concurrent fills", calls.Load())
	}
	got, err := r.o.Driver.GetContent(ctx, uploadsession.BlobPath(d))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("filled blob: %d bytes, %v", len(got), err)
	}
	var placed bool
	pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM blob_placements WHERE digest = $1 AND idc = 'b')`, d.String()).Scan(&placed)
	if !placed {
		t.Fatal("placement not recorded")
	}
	if n := testutil.ToFloat64(r.o.Bytes.WithLabelValues("in", CauseFill, "a")); n != float64(len(data)) {
		t.Fatalf("cross-IDC bytes counted: %v", n)
	}
	if keys := uploadsLeft(t, r.o.Driver); len(keys) != 0 {
		t.Fatalf("fill staging left: %v", keys)
	}
	if err := r.Fill(ctx, "r", d); err != nil || calls.Load() != 1 {
		t.Fatalf("a fill of a placed blob transferred again: %v, %d", err, calls.Load())
	}
}

// A corrupt transfer is refused and leaves nothing; an unknown source
// IDC is an error naming it.
func TestFillRefusesBadBytes(t *testing.T) {
	r, _, _, d, _ := env(t, 0)
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write(make([]byte, 300_000)) // right size, wrong content
	}))
	defer bad.Close()
	r.o.Peers["a"] = bad.URL
	ctx := context.Background()
	if err := r.Fill(ctx, "r", d); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("corrupt fill: %v", err)
	}
	if _, err := r.o.Driver.Stat(ctx, uploadsession.BlobPath(d)); err == nil {
		t.Fatal("corrupt bytes stored")
	}
	delete(r.o.Peers, "a")
	if err := r.Fill(ctx, "r", d); err == nil || !strings.Contains(err.Error(), "none of them a configured peer") {
		t.Fatalf("no peer: %v", err)
	}
}

// A peer that stops sending mid-blob fails the fill after IdleTimeout
// (not after minutes, holding the IDC-wide lock for the blob), leaves no
// staging data, and the next fill, from a peer that answers, succeeds.
func TestFillStalledPeer(t *testing.T) {
	r, _, data, d, _ := env(t, 0)
	good := r.o.Peers["a"]
	stall := make(chan struct{})
	stalling := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Length", "300000")
		w.Write(data[:100_000])
		w.(http.Flusher).Flush()
		select { // then nothing, for as long as the client waits
		case <-stall:
		case <-req.Context().Done():
		}
	}))
	defer stalling.Close()
	defer close(stall) // before Close, which waits for the handler
	r.o.Peers["a"] = stalling.URL
	r.o.IdleTimeout = 200 * time.Millisecond
	// The guard only keeps a broken fix from hanging the test.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := r.Fill(ctx, "r", d)
	if err == nil || !strings.Contains(err.Error(), "no progress for 200ms") {
		t.Fatalf("fill from a stalled peer: %v; want it to fail for want of progress", err)
	}
	if keys := uploadsLeft(t, r.o.Driver); len(keys) != 0 {
		t.Fatalf("fill staging left: %v", keys)
	}
	// The next copy gets a timeout no scheduling delay between two reads
	// of a loaded machine reaches: only the stall above is under test.
	r.o.Peers["a"], r.o.IdleTimeout = good, time.Minute
	if err := r.Fill(ctx, "r", d); err != nil {
		t.Fatalf("fill after the stalled one: %v", err)
	}
	if got, err := r.o.Driver.GetContent(ctx, uploadsession.BlobPath(d)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("filled blob: %d bytes, %v", len(got), err)
	}
}

// SweepFills removes what fills killed mid-copy left: a staging directory
// whose blob no running fill holds the lock of, whatever its age; one
// without a digest in its name (older versions') once old. A running
// fill's directory and upload sessions' directories stay.
func TestSweepFills(t *testing.T) {
	_, pool, _, d, _ := env(t, 0)
	ctx := context.Background()
	root := t.TempDir()
	drv, err := filesystem.FromParameters(map[string]any{"rootdirectory": root})
	if err != nil {
		t.Fatal(err)
	}
	write := func(dir string) {
		t.Helper()
		if err := drv.PutContent(ctx, dir+"/data", []byte("partial")); err != nil {
			t.Fatal(err)
		}
	}
	running := digest.FromString("being copied")
	orphan, live := fillDir(d), fillDir(running)
	const oldFormat, oldFresh, session = "/uploads/fill-0123456789abcdef", "/uploads/fill-fedcba9876543210", "/uploads/5d3e4a1c-7f0b-4b8e-9c2d-3a4b5c6d7e8f"
	for _, dir := range []string{orphan, live, oldFormat, oldFresh, session} {
		write(dir)
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(filepath.Join(root, oldFormat), old, old); err != nil {
		t.Fatal(err)
	}
	// The fill of running holds its lock, as copyOnce does while it copies.
	unlock, _, err := metadata.AdvisoryLock(ctx, pool, fillLock("b", running), nil)
	if err != nil {
		t.Fatal(err)
	}
	unlock = sync.OnceFunc(unlock)
	t.Cleanup(unlock) // on failure too: the pool's cleanup waits for the lock's connection
	n, err := SweepFills(ctx, pool, "b", drv, time.Hour)
	if err != nil || n != 2 {
		t.Fatalf("SweepFills: %d, %v; want 2 removed", n, err)
	}
	left := func() []string {
		keys, err := drv.List(ctx, "/uploads")
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(keys)
		return keys
	}
	want := []string{live, oldFresh, session}
	slices.Sort(want)
	if got := left(); !slices.Equal(got, want) {
		t.Fatalf("left after the sweep:\n got %v\nwant %v", got, want)
	}
	// Once that fill is over (its server died: the lock went with its
	// session), its directory goes too.
	unlock()
	if n, err := SweepFills(ctx, pool, "b", drv, time.Hour); err != nil || n != 1 {
		t.Fatalf("second SweepFills: %d, %v; want 1 removed", n, err)
	}
	want = []string{oldFresh, session}
	slices.Sort(want)
	if got := left(); !slices.Equal(got, want) {
		t.Fatalf("left after the second sweep:\n got %v\nwant %v", got, want)
	}
}

// Eager replication: only matching repositories queue jobs; a job that
// fails backs off and is retried until the copy succeeds, then leaves.
func TestReplicationJobs(t *testing.T) {
	r, pool, _, d, calls := env(t, 2, "base/")
	ctx := context.Background()
	if err := r.Enqueue(ctx, "other/repo", d); err != nil {
		t.Fatal(err)
	}
	jobs := func() (n int, attempts int) {
		pool.QueryRow(ctx, `SELECT count(*), coalesce(max(attempts), 0) FROM replication_jobs`).Scan(&n, &attempts)
		return
	}
	if n, _ := jobs(); n != 0 {
		t.Fatal("a repository outside the prefixes queued a job")
	}
	// Jobs are for peer IDCs; this Replicator is IDC b, its peer is a,
	// so a job for b is queued by a server of a. Queue it as one would.
	if _, err := pool.Exec(ctx, `INSERT INTO replication_jobs (digest, repository, to_idc) VALUES ($1, 'r', 'b')`, d.String()); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		worked, err := r.RunOne(ctx)
		if n, _ := jobs(); n == 0 {
			break
		}
		if i > 200 {
			t.Fatalf("job never completed (last: %v, %v)", worked, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if calls.Load() != 3 {
		t.Fatalf("%d transfer attempts, want 2 failures then 1 success", calls.Load())
	}
	if n := testutil.ToFloat64(r.o.Bytes.WithLabelValues("in", CauseReplication, "a")); n != 300_000 {
		t.Fatalf("replicated bytes counted: %v", n)
	}
	// Enqueue for a matching repository queues jobs only for peers
	// lacking the blob: IDC a holds it.
	if err := r.Enqueue(ctx, "base/image", d); err != nil {
		t.Fatal(err)
	}
	var queued int
	pool.QueryRow(ctx, `SELECT count(*) FROM replication_jobs WHERE to_idc = 'a'`).Scan(&queued)
	if queued != 0 {
		t.Fatalf("a job queued for IDC a, which already holds the blob: %d", queued)
	}
}

// Refill: a blob recorded as held here but gone from storage is copied
// back when another IDC holds it; when none does, the record stays.
func TestRefill(t *testing.T) {
	r, pool, data, d, calls := env(t, 0)
	ctx := context.Background()
	if err := r.Fill(ctx, "r", d); err != nil {
		t.Fatal(err)
	}
	if err := r.o.Driver.Delete(ctx, uploadsession.BlobPath(d)); err != nil {
		t.Fatal(err)
	}
	if err := r.Refill(ctx, "r", d); err != nil {
		t.Fatal(err)
	}
	if got, err := r.o.Driver.GetContent(ctx, uploadsession.BlobPath(d)); err != nil || !bytes.Equal(got, data) || calls.Load() != 2 {
		t.Fatalf("refilled: %d bytes, %v, %d transfers", len(got), err, calls.Load())
	}
	// A refill of bytes that are back is a no-op.
	if err := r.Refill(ctx, "r", d); err != nil || calls.Load() != 2 {
		t.Fatalf("refill of a present blob: %v, %d transfers", err, calls.Load())
	}
	// Only this IDC holds it now, and its bytes are gone: a refill cannot
	// help and keeps the record.
	pool.Exec(ctx, `DELETE FROM blob_placements WHERE idc = 'a'`)
	r.o.Driver.Delete(ctx, uploadsession.BlobPath(d))
	if err := r.Refill(ctx, "r", d); err == nil || !strings.Contains(err.Error(), "no other IDC") {
		t.Fatalf("refill with no other holder: %v", err)
	}
	var n int
	pool.QueryRow(ctx, `SELECT count(*) FROM blob_placements WHERE idc = 'b'`).Scan(&n)
	if n != 1 {
		t.Fatalf("placement records of b: %d", n)
	}
}

// uploadsLeft lists what is left under /uploads; a listing error fails the
// test rather than reading as "nothing left".
func uploadsLeft(t *testing.T, drv storagedriver.StorageDriver) []string {
	t.Helper()
	keys, err := drv.List(context.Background(), "/uploads")
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		t.Fatalf("listing /uploads: %v", err)
	}
	return keys
}
