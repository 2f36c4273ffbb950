package uploadsession

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
	hdfsdriver "github.com/gaia-registry/gaia/storage-hdfs"
	"github.com/gaia-registry/gaia/tests/harness"
)

// backend makes driver instances over one storage location.
type backend struct {
	name      string
	newDriver func(t *testing.T) func() storagedriver.StorageDriver
}

var backends = []backend{
	{"filesystem", func(t *testing.T) func() storagedriver.StorageDriver {
		root := t.TempDir()
		return func() storagedriver.StorageDriver {
			d, err := filesystem.FromParameters(map[string]any{"rootdirectory": root})
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
	}},
	{"hdfs", func(t *testing.T) func() storagedriver.StorageDriver {
		nn := harness.Start(t, harness.HDFS).Get(t, "GAIA_TEST_HDFS_NAMENODE")
		root := fmt.Sprintf("/gaia-test/uploads-%d", time.Now().UnixNano())
		var drivers []*hdfsdriver.Driver
		t.Cleanup(func() {
			if len(drivers) > 0 { // Delete("/") is refused: delete what is under it
				ctx := context.Background()
				keys, _ := drivers[0].List(ctx, "/")
				for _, k := range keys {
					drivers[0].Delete(ctx, k)
				}
			}
			for _, d := range drivers {
				d.Close()
			}
		})
		return func() storagedriver.StorageDriver {
			d, err := hdfsdriver.FromParameters(map[string]any{
				"namenodes": nn, "rootdirectory": root, "user": "gaia", "replication": 1,
			})
			if err != nil {
				t.Fatal(err)
			}
			drivers = append(drivers, d)
			return d
		}
	}},
}

// servers returns two Stores that share one database and one storage but
// nothing else (own pools, own driver instances): two registry servers.
func servers(t *testing.T, b backend) (a, bb *Store, drv storagedriver.StorageDriver) {
	t.Helper()
	url := metadatatest.Database(t)
	newDriver := b.newDriver(t)
	mk := func() *Store { return New(metadatatest.Open(t, url), newDriver()) }
	a, bb = mk(), mk()
	return a, bb, a.driver
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// barrier returns a function that blocks its callers until n have called
// it; one that waits a minute fails the test (the calls never overlapped).
func barrier(t *testing.T, n int) func() {
	var mu sync.Mutex
	arrived := 0
	full := make(chan struct{})
	return func() {
		mu.Lock()
		arrived++
		if arrived == n {
			close(full)
		}
		mu.Unlock()
		select {
		case <-full:
		case <-time.After(time.Minute):
			mu.Lock()
			t.Errorf("only %d of %d callers reached the barrier", arrived, n)
			mu.Unlock()
		}
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

func forEachBackend(t *testing.T, f func(t *testing.T, b backend)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

// TestChunkedAcrossServers: an upload started on server A is continued and
// finished on server B; the blob is stored once, linked, and correct.
func TestChunkedAcrossServers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		srvA, srvB, drv := servers(t, b)
		data := random(t, 3<<20+999)
		want := digest.FromBytes(data)

		sess, err := srvA.Start(ctx, "team/app")
		if err != nil {
			t.Fatal(err)
		}
		cut1, cut2 := 1<<20+7, 2<<20+100
		if s, err := srvA.Append(ctx, "team/app", sess.ID, 0, bytes.NewReader(data[:cut1])); err != nil || s.Size != int64(cut1) {
			t.Fatalf("chunk 1 on A: %+v %v", s, err)
		}
		if s, err := srvB.Get(ctx, "team/app", sess.ID); err != nil || s.Size != int64(cut1) {
			t.Fatalf("status on B: %+v %v", s, err)
		}
		if _, err := srvB.Append(ctx, "team/app", sess.ID, int64(cut1), bytes.NewReader(data[cut1:cut2])); err != nil {
			t.Fatalf("chunk 2 on B: %v", err)
		}
		blob, err := srvA.Finish(ctx, "team/app", sess.ID, int64(cut2), bytes.NewReader(data[cut2:]), want)
		if err != nil || blob.Digest != want || blob.Size != int64(len(data)) {
			t.Fatalf("finish on A: %+v %v", blob, err)
		}
		got, err := drv.GetContent(ctx, BlobPath(want))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("stored blob: %v, equal %v", err, bytes.Equal(got, data))
		}
		var linked int
		srvB.db.QueryRow(ctx, `SELECT count(*) FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id
			JOIN blobs bl ON bl.digest = rb.digest WHERE r.name = 'team/app' AND rb.digest = $1 AND bl.size = $2`,
			want.String(), len(data)).Scan(&linked)
		if linked != 1 {
			t.Fatalf("blob linked %d times", linked)
		}
		if _, err := srvB.Get(ctx, "team/app", sess.ID); !errors.Is(err, ErrUnknown) {
			t.Fatalf("session after finish: %v", err)
		}
		if _, err := drv.Stat(ctx, "/uploads/"+sess.ID); !errors.As(err, new(storagedriver.PathNotFoundError)) {
			t.Fatalf("upload data left after finish: %v", err)
		}
	})
}

func TestOutOfOrderAndUnknown(t *testing.T) {
	ctx := context.Background()
	srvA, srvB, _ := servers(t, backends[0])
	sess, _ := srvA.Start(ctx, "r")
	srvA.Append(ctx, "r", sess.ID, 0, bytes.NewReader([]byte("hello ")))
	var re *RangeError
	if _, err := srvB.Append(ctx, "r", sess.ID, 3, bytes.NewReader([]byte("x"))); !errors.As(err, &re) || re.Size != 6 {
		t.Fatalf("out-of-order chunk: %v; want RangeError{6}", err)
	}
	if s, _ := srvB.Get(ctx, "r", sess.ID); s.Size != 6 {
		t.Fatalf("size after a refused chunk: %d", s.Size)
	}
	// A streamed chunk goes wherever the upload stands.
	if s, err := srvB.Append(ctx, "r", sess.ID, AtEnd, bytes.NewReader([]byte("world"))); err != nil || s.Size != 11 {
		t.Fatalf("streamed chunk: %+v %v; want size 11", s, err)
	}
	for _, id := range []string{"not-a-uuid", newID()} {
		if _, err := srvA.Append(ctx, "r", id, 0, bytes.NewReader(nil)); !errors.Is(err, ErrUnknown) {
			t.Fatalf("Append to %q: %v; want ErrUnknown", id, err)
		}
	}
	// A session belongs to its repository.
	if _, err := srvA.Get(ctx, "other", sess.ID); !errors.Is(err, ErrUnknown) {
		t.Fatalf("session seen from another repository: %v", err)
	}
}

func TestDigestMismatchLeavesNothing(t *testing.T) {
	ctx := context.Background()
	srv, _, drv := servers(t, backends[0])
	sess, _ := srv.Start(ctx, "r")
	_, err := srv.Finish(ctx, "r", sess.ID, 0, bytes.NewReader([]byte("content")), digest.FromString("other"))
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Finish with a wrong digest: %v", err)
	}
	var blobs, sessions int
	srv.db.QueryRow(ctx, `SELECT (SELECT count(*) FROM blobs), (SELECT count(*) FROM upload_sessions)`).Scan(&blobs, &sessions)
	if blobs != 0 || sessions != 0 {
		t.Fatalf("after a digest mismatch: %d blobs, %d sessions", blobs, sessions)
	}
	if keys := uploadsLeft(t, drv); len(keys) != 0 {
		t.Fatalf("upload data left: %v", keys)
	}
}

func TestSHA512AndEmptyAndMonolithic(t *testing.T) {
	ctx := context.Background()
	srv, _, drv := servers(t, backends[0])
	data := random(t, 100_000)
	for _, tc := range []struct {
		name string
		data []byte
		alg  digest.Algorithm
	}{{"sha512", data, digest.SHA512}, {"empty", nil, digest.SHA256}, {"monolithic", data, digest.SHA256}} {
		want := tc.alg.FromBytes(tc.data)
		sess, _ := srv.Start(ctx, "r")
		blob, err := srv.Finish(ctx, "r", sess.ID, 0, bytes.NewReader(tc.data), want)
		if err != nil || blob.Digest != want || blob.Size != int64(len(tc.data)) {
			t.Fatalf("%s: %+v %v", tc.name, blob, err)
		}
		got, err := drv.GetContent(ctx, BlobPath(want))
		if err != nil || !bytes.Equal(got, tc.data) {
			t.Fatalf("%s: stored content: %v", tc.name, err)
		}
	}
}

// TestSameBlobTwice: two uploads of the same content into two repositories
// keep one object and link it to both.
func TestSameBlobTwice(t *testing.T) {
	ctx := context.Background()
	srvA, srvB, drv := servers(t, backends[0])
	data := random(t, 5000)
	want := digest.FromBytes(data)
	for _, c := range []struct {
		s    *Store
		repo string
	}{{srvA, "one"}, {srvB, "two"}} {
		sess, _ := c.s.Start(ctx, c.repo)
		if _, err := c.s.Finish(ctx, c.repo, sess.ID, 0, bytes.NewReader(data), want); err != nil {
			t.Fatal(err)
		}
	}
	var blobs, links int
	srvA.db.QueryRow(ctx, `SELECT (SELECT count(*) FROM blobs), (SELECT count(*) FROM repository_blobs)`).Scan(&blobs, &links)
	if blobs != 1 || links != 2 {
		t.Fatalf("%d blob rows, %d links; want 1 and 2", blobs, links)
	}
	if keys := uploadsLeft(t, drv); len(keys) != 0 {
		t.Fatalf("upload data left: %v", keys)
	}
}

func TestCancelAndExpire(t *testing.T) {
	ctx := context.Background()
	srv, _, drv := servers(t, backends[0])
	cancelled, _ := srv.Start(ctx, "r")
	srv.Append(ctx, "r", cancelled.ID, 0, bytes.NewReader([]byte("abc")))
	if err := srv.Cancel(ctx, "r", cancelled.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Get(ctx, "r", cancelled.ID); !errors.Is(err, ErrUnknown) {
		t.Fatalf("after cancel: %v", err)
	}
	old, _ := srv.Start(ctx, "r")
	srv.Append(ctx, "r", old.ID, 0, bytes.NewReader([]byte("abandoned")))
	fresh, _ := srv.Start(ctx, "r")
	srv.db.Exec(ctx, `UPDATE upload_sessions SET updated_at = now() - interval '2 hours' WHERE id = $1`, old.ID)
	n, err := srv.Expire(ctx, time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("Expire: %d, %v; want 1", n, err)
	}
	if _, err := srv.Get(ctx, "r", old.ID); !errors.Is(err, ErrUnknown) {
		t.Fatalf("expired session still there: %v", err)
	}
	if _, err := srv.Get(ctx, "r", fresh.ID); err != nil {
		t.Fatalf("fresh session expired: %v", err)
	}
	keys := uploadsLeft(t, drv)
	if len(keys) != 0 {
		t.Fatalf("data of ended sessions left: %v", keys)
	}

}

// TestSameBlobConcurrently: many clients push the same blob at once through
// two servers; every push succeeds, the blob is one row and one object with
// the right bytes, every repository is linked, and no upload data is left.
func TestSameBlobConcurrently(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		srvA, srvB, drv := servers(t, b)
		data := random(t, 300_000)
		want := digest.FromBytes(data)
		const clients = 8
		// Every client's digest is verified before any moves its data into
		// place: all eight race for the blob's path and row at once.
		all := barrier(t, clients)
		for _, s := range []*Store{srvA, srvB} {
			s.Hook(func(step string) {
				if step == StepVerified {
					all()
				}
			})
		}
		errs := make(chan error, clients)
		for i := range clients {
			s := []*Store{srvA, srvB}[i%2]
			repo := fmt.Sprintf("same/blob%d", i%3)
			go func() {
				sess, err := s.Start(ctx, repo)
				if err == nil {
					_, err = s.Append(ctx, repo, sess.ID, 0, bytes.NewReader(data[:100_000]))
				}
				if err == nil {
					_, err = s.Finish(ctx, repo, sess.ID, 100_000, bytes.NewReader(data[100_000:]), want)
				}
				errs <- err
			}()
		}
		for range clients {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		var blobs, links int
		srvA.db.QueryRow(ctx, `SELECT (SELECT count(*) FROM blobs), (SELECT count(*) FROM repository_blobs)`).Scan(&blobs, &links)
		if blobs != 1 || links != 3 {
			t.Fatalf("%d blob rows, %d links; want 1 and 3", blobs, links)
		}
		got, err := drv.GetContent(ctx, BlobPath(want))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("stored blob: %d bytes, err %v", len(got), err)
		}
		if keys := uploadsLeft(t, drv); len(keys) != 0 {
			t.Fatalf("upload data left: %v", keys)
		}
	})
}
