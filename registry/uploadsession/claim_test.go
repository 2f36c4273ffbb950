package uploadsession

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
)

// gatedBody hands out its first part, then blocks until released, then
// hands out the rest: a client whose body is still arriving.
type gatedBody struct {
	first, rest []byte
	sent        chan struct{} // closed once the first part was read
	release     chan struct{}
	once, open  sync.Once
}

// newGatedBody's body is released at the latest when the test ends, so a
// failed test does not leave a request (and its pool) hanging.
func newGatedBody(t *testing.T, first, rest []byte) *gatedBody {
	g := &gatedBody{first: first, rest: rest, sent: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(g.Release)
	return g
}

// Release lets the rest of the body through.
func (g *gatedBody) Release() { g.open.Do(func() { close(g.release) }) }

func (g *gatedBody) Read(p []byte) (int, error) {
	if len(g.first) > 0 {
		n := copy(p, g.first)
		g.first = g.first[n:]
		return n, nil
	}
	g.once.Do(func() { close(g.sent) })
	<-g.release
	if len(g.rest) == 0 {
		return 0, io.EOF
	}
	n := copy(p, g.rest)
	g.rest = g.rest[n:]
	return n, nil
}

// waitFor fails the test unless ch closes within a minute.
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(time.Minute):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// TestNoConnectionHeldWhileStreaming: with a pool of ONE connection, a
// chunk whose body is still arriving leaves the pool free, so every other
// metadata query runs. (With a row lock held across the body, the query
// below waited for the pool until its deadline.)
func TestNoConnectionHeldWhileStreaming(t *testing.T) {
	ctx := context.Background()
	url := metadatatest.Database(t)
	pool := metadatatest.Open(t, url+"&pool_max_conns=1")
	if !strings.Contains(url, "?") {
		t.Fatalf("database URL %q has no query string to extend", url)
	}
	srv := New(pool, backends[0].newDriver(t)())
	sess, err := srv.Start(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	first, rest := random(t, 64<<10), random(t, 64<<10)
	body := newGatedBody(t, first, rest)
	done := make(chan error, 1)
	go func() {
		_, err := srv.Append(ctx, "r", sess.ID, 0, body)
		done <- err
	}()
	waitFor(t, body.sent, "the first part of the body")
	// Another request while the chunk streams: it must get the connection.
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var n int
	if err := pool.QueryRow(qctx, `SELECT count(*) FROM upload_sessions`).Scan(&n); err != nil {
		t.Fatalf("a query while a chunk streams: %v (the chunk holds the pool's connection)", err)
	}
	if got, err := srv.Get(qctx, "r", sess.ID); err != nil || got.Size != 0 {
		t.Fatalf("status while streaming: %+v, %v; want the recorded offset 0", got, err)
	}
	body.Release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, err := srv.Get(ctx, "r", sess.ID); err != nil || got.Size != int64(len(first)+len(rest)) {
		t.Fatalf("after the chunk: %+v, %v", got, err)
	}
}

// TestSecondWriterRefused: while one request writes a session, a chunk,
// a finish or a cancel from another server is refused with a Busy
// RangeError naming the recorded offset, and the data holds only the first
// writer's bytes.
func TestSecondWriterRefused(t *testing.T) {
	ctx := context.Background()
	srvA, srvB, drv := servers(t, backends[0])
	sess, _ := srvA.Start(ctx, "r")
	first, rest := random(t, 100_000), random(t, 100_000)
	body := newGatedBody(t, first, rest)
	done := make(chan error, 1)
	go func() {
		_, err := srvA.Append(ctx, "r", sess.ID, 0, body)
		done <- err
	}()
	waitFor(t, body.sent, "the first writer's bytes")
	other := random(t, 1000)
	// Bounded: a second writer that waited for the first would never end.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for name, try := range map[string]func() error{
		"chunk at 0":   func() error { _, err := srvB.Append(ctx, "r", sess.ID, 0, bytes.NewReader(other)); return err },
		"chunk at end": func() error { _, err := srvB.Append(ctx, "r", sess.ID, AtEnd, bytes.NewReader(other)); return err },
		"finish": func() error {
			_, err := srvB.Finish(ctx, "r", sess.ID, AtEnd, bytes.NewReader(other), digest.FromBytes(other))
			return err
		},
		"cancel": func() error { return srvB.Cancel(ctx, "r", sess.ID) },
	} {
		var re *RangeError
		if err := try(); !errors.As(err, &re) || !re.Busy || re.Size != 0 {
			t.Fatalf("%s while another request writes: %v; want a Busy RangeError at 0", name, err)
		}
	}
	body.Release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{}, first...), rest...)
	got, err := drv.GetContent(ctx, UploadPath(sess.ID))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("upload data holds %d bytes (%v); want exactly the first writer's %d", len(got), err, len(want))
	}
	// The claim is released: the next chunk goes on.
	if s, err := srvB.Append(ctx, "r", sess.ID, int64(len(want)), bytes.NewReader(other)); err != nil || s.Size != int64(len(want)+len(other)) {
		t.Fatalf("chunk after the first writer finished: %+v, %v", s, err)
	}
}

// TestLapsedClaim: a claim whose server died (never renewed) stops
// blocking the session once its lease has passed; and a writer whose claim
// was taken over stops writing and records nothing.
func TestLapsedClaim(t *testing.T) {
	ctx := context.Background()
	srvA, srvB, drv := servers(t, backends[0])
	srvA.WithLease(time.Second)
	srvB.WithLease(time.Second)
	lost := make(chan struct{})
	srvA.Hook(func(step string) {
		if step == StepLost {
			close(lost)
		}
	})
	sess, _ := srvA.Start(ctx, "r")
	// A dead server's claim, still within its lease.
	srvA.db.Exec(ctx, `UPDATE upload_sessions SET writer = gen_random_uuid(), claimed_until = now() + interval '1 hour' WHERE id = $1`, sess.ID)
	var re *RangeError
	if _, err := srvB.Append(ctx, "r", sess.ID, 0, bytes.NewReader([]byte("x"))); !errors.As(err, &re) || !re.Busy {
		t.Fatalf("chunk on a claimed session: %v; want Busy", err)
	}
	// Its lease passes: the session is not continued (that writer may be a
	// paused process whose bytes could still land), it ends.
	srvA.db.Exec(ctx, `UPDATE upload_sessions SET claimed_until = now() - interval '1 second' WHERE id = $1`, sess.ID)
	if _, err := srvB.Append(ctx, "r", sess.ID, 0, bytes.NewReader([]byte("abc"))); !errors.Is(err, ErrInvalid) {
		t.Fatalf("chunk after a writer's claim lapsed: %v; want ErrInvalid", err)
	}
	if _, err := srvB.Get(ctx, "r", sess.ID); !errors.Is(err, ErrUnknown) {
		t.Fatalf("session after a lapsed claim: %v; want it ended", err)
	}
	sess, _ = srvA.Start(ctx, "r")
	if s, err := srvB.Append(ctx, "r", sess.ID, 0, bytes.NewReader([]byte("abc"))); err != nil || s.Size != 3 {
		t.Fatalf("first chunk of a new upload: %+v, %v", s, err)
	}

	// A live writer whose claim is taken from under it (as if it had been
	// cut off from PostgreSQL for a whole lease).
	body := newGatedBody(t, random(t, 5000), random(t, 5000))
	done := make(chan error, 1)
	go func() {
		_, err := srvA.Append(ctx, "r", sess.ID, 3, body)
		done <- err
	}()
	waitFor(t, body.sent, "the writer's first bytes")
	srvA.db.Exec(ctx, `UPDATE upload_sessions SET writer = gen_random_uuid() WHERE id = $1`, sess.ID)
	waitFor(t, lost, "the writer's renewal to notice") // a third of the lease
	body.Release()
	if err := <-done; !errors.Is(err, ErrInvalid) {
		t.Fatalf("writer whose claim was taken: %v; want ErrInvalid", err)
	}
	if s, _ := srvA.Get(ctx, "r", sess.ID); s.Size != 3 {
		t.Fatalf("offset after a lost claim: %d; want 3 (nothing recorded)", s.Size)
	}
	if fi, err := drv.Stat(ctx, UploadPath(sess.ID)); err != nil || fi.Size() > 3+5000 {
		t.Fatalf("data after a lost claim: %v, %v; the writer went on past its claim", fi, err)
	}
}

// TestClientSpellingOfID: PostgreSQL reads an uppercase or braced uuid as
// the session's; storage paths must still be the session's own, so a
// finish or cancel through such a spelling leaves no data behind.
func TestClientSpellingOfID(t *testing.T) {
	ctx := context.Background()
	srv, _, drv := servers(t, backends[0])
	data := random(t, 3000)
	finished, _ := srv.Start(ctx, "r")
	if _, err := srv.Append(ctx, "r", strings.ToUpper(finished.ID), 0, bytes.NewReader(data[:1000])); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Finish(ctx, "r", "{"+strings.ToUpper(finished.ID)+"}", AtEnd, bytes.NewReader(data[1000:]), digest.FromBytes(data)); err != nil {
		t.Fatal(err)
	}
	cancelled, _ := srv.Start(ctx, "r")
	srv.Append(ctx, "r", cancelled.ID, 0, bytes.NewReader(data))
	if err := srv.Cancel(ctx, "r", strings.ToUpper(cancelled.ID)); err != nil {
		t.Fatal(err)
	}
	if keys := uploadsLeft(t, drv); len(keys) != 0 {
		t.Fatalf("upload data left after finish and cancel through other spellings of the id: %v", keys)
	}
}

// TestFinishChecksStoredSize: data holding more bytes than the session
// recorded (a chunk that failed half-way) is never moved into a blob, even
// when the recorded bytes hash right.
func TestFinishChecksStoredSize(t *testing.T) {
	ctx := context.Background()
	srv, _, drv := servers(t, backends[0])
	data := random(t, 4000)
	sess, _ := srv.Start(ctx, "r")
	if _, err := srv.Append(ctx, "r", sess.ID, 0, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	w, err := drv.Writer(ctx, UploadPath(sess.ID), true) // the half-failed chunk's stray bytes
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("stray"))
	if err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Finish(ctx, "r", sess.ID, AtEnd, nil, digest.FromBytes(data)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Finish over data longer than recorded: %v; want ErrInvalid", err)
	}
	if _, err := drv.Stat(ctx, BlobPath(digest.FromBytes(data))); err == nil {
		t.Fatal("a blob was stored from data longer than the session recorded")
	}
	var rows int
	srv.db.QueryRow(ctx, `SELECT count(*) FROM blobs`).Scan(&rows)
	if rows != 0 {
		t.Fatalf("%d blob rows; want 0", rows)
	}
}

// TestInterruptedChunkKept: a client that goes away part-way through a
// chunk keeps what arrived; the upload resumes from there and finishes
// with the right digest.
func TestInterruptedChunkKept(t *testing.T) {
	ctx := context.Background()
	srv, _, _ := servers(t, backends[0])
	data := random(t, 200_000)
	sess, _ := srv.Start(ctx, "r")
	cut := io.MultiReader(bytes.NewReader(data[:70_000]), iotestErrReader{})
	if _, err := srv.Append(ctx, "r", sess.ID, 0, cut); !errors.Is(err, ErrBodyBroken) {
		t.Fatalf("a chunk whose body failed: %v; want ErrBodyBroken", err)
	}
	got, err := srv.Get(ctx, "r", sess.ID)
	if err != nil || got.Size != 70_000 {
		t.Fatalf("after a cut chunk: %+v, %v; want offset 70000", got, err)
	}
	if _, err := srv.Finish(ctx, "r", sess.ID, 70_000, bytes.NewReader(data[70_000:]), digest.FromBytes(data)); err != nil {
		t.Fatalf("resuming after a cut chunk: %v", err)
	}
}

type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, errors.New("connection reset by client") }

// failingDelete is a driver whose Delete fails for paths holding one id.
type failingDelete struct {
	storagedriver.StorageDriver
	id string
}

func (f failingDelete) Delete(ctx context.Context, path string) error {
	if strings.Contains(path, f.id) {
		return errors.New("storage unavailable")
	}
	return f.StorageDriver.Delete(ctx, path)
}

// TestExpireGoesOnAfterStorageError: one session's data failing to delete
// neither stops the others' removal nor hides the error.
func TestExpireGoesOnAfterStorageError(t *testing.T) {
	ctx := context.Background()
	url := metadatatest.Database(t)
	drv := backends[0].newDriver(t)()
	srv := New(metadatatest.Open(t, url), drv)
	var ids []string
	for range 3 {
		s, _ := srv.Start(ctx, "r")
		srv.Append(ctx, "r", s.ID, 0, bytes.NewReader([]byte("abandoned")))
		ids = append(ids, s.ID)
	}
	srv.db.Exec(ctx, `UPDATE upload_sessions SET updated_at = now() - interval '2 hours'`)
	// Rows come back in no set order: fail the middle one by id.
	faulty := New(srv.db, failingDelete{drv, ids[1]})
	n, err := faulty.Expire(ctx, time.Hour)
	if n != 3 || err == nil || !strings.Contains(err.Error(), ids[1]) {
		t.Fatalf("Expire: %d, %v; want 3 ended and an error naming %s", n, err, ids[1])
	}
	for _, id := range []string{ids[0], ids[2]} {
		if _, err := drv.Stat(ctx, UploadPath(id)); err == nil {
			t.Fatalf("data of expired session %s left after another session's storage error", id)
		}
	}
}

// TestSweepOrphans: upload data whose session row is gone (a server died
// between the two) is removed once old enough, in any spelling of its
// directory; data of live sessions, and young orphans, stay.
func TestSweepOrphans(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			srv, _, drv := servers(t, b)
			live, _ := srv.Start(ctx, "r")
			srv.Append(ctx, "r", live.ID, 0, bytes.NewReader([]byte("live")))
			gone, _ := srv.Start(ctx, "r")
			srv.Append(ctx, "r", gone.ID, 0, bytes.NewReader([]byte("orphan")))
			srv.db.Exec(ctx, `DELETE FROM upload_sessions WHERE id = $1`, gone.ID)
			upper := "/uploads/" + strings.ToUpper(newID()) + "/data"
			fill := "/uploads/fill-sha256-0123-ab/data" // a cross-IDC fill's: not the sweep's
			for _, p := range []string{upper, fill} {
				if err := drv.PutContent(ctx, p, []byte("no row")); err != nil {
					t.Fatal(err)
				}
			}
			if n, err := srv.SweepOrphans(ctx, time.Hour); err != nil || n != 0 {
				t.Fatalf("SweepOrphans(1h): %d, %v; want nothing removed: the orphans are young", n, err)
			}
			n, err := srv.SweepOrphans(ctx, 0)
			if err != nil || n != 2 {
				t.Fatalf("SweepOrphans(0): %d, %v; want the 2 orphans removed", n, err)
			}
			if left := uploadsLeft(t, drv); len(left) != 2 || !slices.ContainsFunc(left, func(k string) bool { return strings.HasSuffix(k, live.ID) }) ||
				!slices.Contains(left, path.Dir(fill)) {
				t.Fatalf("upload data left: %v, want only the live session's and the fill's", left)
			}
			if s, err := srv.Get(ctx, "r", live.ID); err != nil || s.Size != 4 {
				t.Fatalf("live session after the sweep: %+v, %v", s, err)
			}
		})
	}
}

// TestFinishWaitsForTheBlobLockWithoutAConnection: a finish whose blob is
// locked in its IDC (a cross-IDC fill copying it) waits for the lock
// without holding a database connection: with a pool of one connection,
// other queries still run meanwhile, and the finish completes once the
// lock is free.
func TestFinishWaitsForTheBlobLockWithoutAConnection(t *testing.T) {
	ctx := context.Background()
	url := metadatatest.Database(t)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	one, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	srv := New(one, backends[0].newDriver(t)())
	data := []byte("a blob a fill is copying")
	want := digest.FromBytes(data)
	s, err := srv.Start(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}

	// The fill's lock, held on a connection of its own.
	holder := metadatatest.Open(t, url)
	conn, err := holder.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	key := metadata.BlobLockKey(DefaultIDC, want.String())
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtextextended($1, 0))`, key); err != nil {
		t.Fatal(err)
	}
	busy := make(chan struct{}, 1)
	srv.Hook(func(step string) {
		if step == StepBusy {
			select {
			case busy <- struct{}{}:
			default:
			}
		}
	})
	done := make(chan error, 1)
	go func() {
		_, err := srv.Finish(ctx, "r", s.ID, 0, bytes.NewReader(data), want)
		done <- err
	}()
	select { // until the finish has found the lock taken
	case <-busy:
	case err := <-done:
		t.Fatalf("the finish ended (%v) while its blob was locked", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the finish never found its blob's lock taken")
	}
	qctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for i := range 5 {
		var n int
		if err := one.QueryRow(qctx, `SELECT 1`).Scan(&n); err != nil {
			t.Fatalf("query %d on the finish's pool while it waits for the lock: %v (the finish holds the only connection)", i, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("the finish ended (%v) while its blob was locked", err)
	default:
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, key); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("finish after the lock was freed: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the finish did not complete within 30 s of the lock being freed")
	}
}
