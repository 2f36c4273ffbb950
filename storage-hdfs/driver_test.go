package hdfs

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gohdfs "github.com/colinmarc/hdfs/v2"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/distribution/distribution/v3/registry/storage/driver/testsuites"

	"github.com/gaia-registry/gaia/tests/harness"
)

// newTestDriver returns a driver on the shared test HDFS under a root of
// its own, and removes that root when the test ends.
func newTestDriver(t testing.TB, extra map[string]any) *Driver {
	t.Helper()
	env := harness.Start(t, harness.HDFS)
	params := map[string]any{"namenodes": env.Get(t, "GAIA_TEST_HDFS_NAMENODE")}
	for k, v := range extra {
		params[k] = v
	}
	return openDriver(t, harness.HDFS, "/gaia-test", params)
}

// openDriver makes a driver with 1 MiB blocks and replication 1 under a
// root of the test's own below parent (params override), and removes that
// root when the test ends. cluster names the harness service whose logs a
// failure shows.
func openDriver(t testing.TB, cluster, parent string, params map[string]any) *Driver {
	t.Helper()
	all := map[string]any{
		"rootdirectory": fmt.Sprintf("%s/%s-%s", parent, sanitize(t.Name()), randomName()[:8]),
		"user":          "gaia",
		"blocksize":     1 << 20,
		"replication":   1,
	}
	for k, v := range params {
		all[k] = v
	}
	d, err := FromParameters(all)
	if err != nil {
		t.Fatalf("hdfs driver: %v\n%s", err, harness.Logs(cluster))
	}
	t.Cleanup(func() {
		d.d.withClient(context.Background(), func(c *gohdfs.Client) error { return c.RemoveAll(d.d.root) })
		d.Close()
	})
	return d
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' {
			return '_'
		}
		return r
	}, s)
}

// TestDriverSuite runs distribution's shared storage driver suite against
// the real HDFS. Under -short it is the suite's short mode; the full run
// (with the 5 GiB stream test) is `make test-hdfs-full`.
func TestDriverSuite(t *testing.T) {
	d := newTestDriver(t, nil)
	testsuites.Driver(t, func() (storagedriver.StorageDriver, error) { return d, nil }, false)
}

// TestFactoryRegistration: any distribution-based program selects the
// driver by name.
func TestFactoryRegistration(t *testing.T) {
	env := harness.Start(t, harness.HDFS)
	d, err := factory.Create(context.Background(), "hdfs", map[string]any{
		"namenodes":     []any{env.Get(t, "GAIA_TEST_HDFS_NAMENODE")},
		"rootdirectory": "/gaia-test/factory-" + randomName()[:8],
		"user":          "gaia",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.(*Driver).Close()
	if d.Name() != "hdfs" {
		t.Fatalf("Name() = %q", d.Name())
	}
	if err := d.PutContent(context.Background(), "/x", []byte("y")); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(context.Background(), "/"+""); err == nil {
		t.Fatal("Delete of / must be refused as an invalid path")
	}
	if err := d.Delete(context.Background(), "/x"); err != nil {
		t.Fatal(err)
	}
}

// TestTypedErrors: HDFS errors come back as distribution's typed errors.
func TestTypedErrors(t *testing.T) {
	ctx := context.Background()
	d := newTestDriver(t, nil)
	for name, call := range map[string]func() error{
		"GetContent": func() error { _, err := d.GetContent(ctx, "/missing/file"); return err },
		"Reader":     func() error { _, err := d.Reader(ctx, "/missing/file", 0); return err },
		"Stat":       func() error { _, err := d.Stat(ctx, "/missing/file"); return err },
		"List":       func() error { _, err := d.List(ctx, "/missing"); return err },
		"Move":       func() error { return d.Move(ctx, "/missing/a", "/missing/b") },
		"Delete":     func() error { return d.Delete(ctx, "/missing") },
		"Append":     func() error { _, err := d.Writer(ctx, "/missing/file", true); return err },
	} {
		var nf storagedriver.PathNotFoundError
		if err := call(); !errors.As(err, &nf) {
			t.Errorf("%s on a missing path: got %T %v, want PathNotFoundError", name, err, err)
		}
	}
	if err := d.PutContent(ctx, "/file", []byte("data")); err != nil {
		t.Fatal(err)
	}
	var nf storagedriver.PathNotFoundError
	if _, err := d.Stat(ctx, "/file/child"); !errors.As(err, &nf) {
		t.Errorf("Stat below a file: got %T %v, want PathNotFoundError", err, err)
	}
	if _, err := d.List(ctx, "/file"); !errors.As(err, &nf) {
		t.Errorf("List of a file: got %T %v, want PathNotFoundError", err, err)
	}
	var inv storagedriver.InvalidPathError
	if _, err := d.GetContent(ctx, "relative/path"); !errors.As(err, &inv) {
		t.Errorf("relative path: got %T %v, want InvalidPathError", err, err)
	}
	var off storagedriver.InvalidOffsetError
	if _, err := d.Reader(ctx, "/file", -5); !errors.As(err, &off) {
		t.Errorf("negative offset: got %T %v, want InvalidOffsetError", err, err)
	}
	// The staging directory of PutContent never shows.
	if keys, err := d.List(ctx, "/"); err != nil || len(keys) != 1 || keys[0] != "/file" {
		t.Errorf("List(/) = %v, %v; want [/file]", keys, err)
	}
}

// TestWalk: Walk visits every entry in order with the same
// FileInfo a Stat would give.
func TestWalk(t *testing.T) {
	ctx := context.Background()
	d := newTestDriver(t, nil)
	files := []string{"/a/b/c", "/a/b/d", "/a/e", "/f"}
	for _, f := range files {
		if err := d.PutContent(ctx, f, []byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	var seen []string
	err := d.Walk(ctx, "/", func(fi storagedriver.FileInfo) error {
		seen = append(seen, fmt.Sprintf("%s:%v:%d", fi.Path(), fi.IsDir(), fi.Size()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "/a:true:0 /a/b:true:0 /a/b/c:false:6 /a/b/d:false:6 /a/e:false:4 /f:false:2"
	if got := strings.Join(seen, " "); got != want {
		t.Fatalf("walk\n got %s\nwant %s", got, want)
	}
	seen = nil
	err = d.Walk(ctx, "/", func(fi storagedriver.FileInfo) error {
		seen = append(seen, fi.Path())
		if fi.Path() == "/a/b" {
			return storagedriver.ErrSkipDir
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(seen, " "); got != "/a /a/b /a/e /f" {
		t.Fatalf("walk skipping /a/b: got %s", got)
	}
	seen = nil
	err = d.Walk(ctx, "/", func(fi storagedriver.FileInfo) error {
		seen = append(seen, fi.Path())
		if fi.Path() == "/a/e" {
			return storagedriver.ErrFilledBuffer
		}
		return nil
	}, storagedriver.WithStartAfterHint("/a/b/c"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(seen, " "); got != "/a/b/d /a/e" {
		t.Fatalf("walk after /a/b/c until /a/e: got %s", got)
	}
}

// TestResumeFromAnotherProcess: an upload begun by one process (a driver
// instance in a child process) is continued by Writer(path, true) here.
func TestResumeFromAnotherProcess(t *testing.T) {
	ctx := context.Background()
	d := newTestDriver(t, nil)
	first := randomBytes(t, 3<<20+12345) // crosses block boundaries, ends mid-block
	second := randomBytes(t, 2<<20+777)

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWriteFirstPart$")
	cmd.Env = append(os.Environ(),
		"GAIA_HELPER_WRITE=1",
		"GAIA_HELPER_NAMENODE="+harness.Start(t, harness.HDFS).Get(t, "GAIA_TEST_HDFS_NAMENODE"),
		"GAIA_HELPER_ROOT="+d.d.root)
	cmd.Stdin = bytes.NewReader(first)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper process: %v\n%s", err, out)
	}

	w, err := d.Writer(ctx, "/uploads/u1/data", true)
	if err != nil {
		t.Fatal(err)
	}
	if w.Size() != int64(len(first)) {
		t.Fatalf("resumed Size() = %d, want %d", w.Size(), len(first))
	}
	if _, err := w.Write(second); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := d.GetContent(ctx, "/uploads/u1/data")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(append([]byte{}, first...), second...)) {
		t.Fatalf("content after resume differs (len %d, want %d)", len(got), len(first)+len(second))
	}
}

// TestHelperWriteFirstPart is the child process of
// TestResumeFromAnotherProcess: it writes stdin to the upload and closes the
// writer without committing, like a registry server ending a PATCH.
func TestHelperWriteFirstPart(t *testing.T) {
	if os.Getenv("GAIA_HELPER_WRITE") != "1" {
		return // only meaningful as TestResumeFromAnotherProcess's child
	}
	d, err := FromParameters(map[string]any{
		"namenodes": os.Getenv("GAIA_HELPER_NAMENODE"), "rootdirectory": os.Getenv("GAIA_HELPER_ROOT"),
		"user": "gaia", "blocksize": 1 << 20, "replication": 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	w, err := d.Writer(context.Background(), "/uploads/u1/data", false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(w, os.Stdin); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestStreamingWriteMemory: writing 256 MiB through Writer keeps the heap
// small (no whole-upload buffering).
func TestStreamingWriteMemory(t *testing.T) {
	ctx := context.Background()
	d := newTestDriver(t, nil)
	const total = 256 << 20
	chunk := randomBytes(t, 1<<20)

	// Live heap (after a collection), sampled while the write runs: garbage
	// from per-packet buffers does not count, anything the writer keeps does.
	liveHeap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	base := liveHeap()
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if h := liveHeap(); h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()

	w, err := d.Writer(ctx, "/big", false)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	for written := 0; written < total; written += len(chunk) {
		chunk[0] = byte(written >> 20) // vary the content per chunk
		h.Write(chunk)
		if _, err := w.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	w.Close()
	close(stop)
	wg.Wait()

	growth := int64(peak.Load()) - int64(base)
	t.Logf("live heap grew by %d KiB while writing %d MiB", growth>>10, total>>20)
	if growth > 32<<20 {
		t.Fatalf("live heap grew by %d MiB during a %d MiB write: the writer buffers", growth>>20, total>>20)
	}

	r, err := d.Reader(ctx, "/big", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h2 := sha256.New()
	n, err := io.Copy(h2, r)
	if err != nil || n != total || !bytes.Equal(h.Sum(nil), h2.Sum(nil)) {
		t.Fatalf("read back %d bytes, err %v, digest match %v", n, err, bytes.Equal(h.Sum(nil), h2.Sum(nil)))
	}
}

// TestConcurrentCallsUseSeveralClients: concurrent calls do not funnel
// through one client: as many run at once as maxthreads lets, each on a
// client of its own; and the pool keeps the clients for reuse.
func TestConcurrentCallsUseSeveralClients(t *testing.T) {
	const threads, readers, calls = 16, 8, 64
	ctx := context.Background()
	d := newTestDriver(t, map[string]any{"maxthreads": threads})
	if err := d.PutContent(ctx, "/f", []byte("x")); err != nil {
		t.Fatal(err)
	}
	// From here on, the reads of every NameNode connection wait while the
	// gate is shut: a call keeps its client until its answer arrives.
	d.d.pool.closeAll()
	var gate atomic.Pointer[chan struct{}]
	dial := d.d.pool.options.NamenodeDialFunc
	d.d.pool.options.NamenodeDialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &gatedConn{Conn: c, gate: &gate}, nil
	}
	base := d.PoolStats()
	describe := func() string { return fmt.Sprintf("%+v (at first %+v)", d.PoolStats(), base) }

	// Open readers hold their clients, so 8 open readers need 8 clients.
	var rs []io.ReadCloser
	for range readers {
		r, err := d.Reader(ctx, "/f", 0)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	if s := d.PoolStats(); s.Created-base.Created != readers || s.Open != readers {
		t.Fatalf("%d open readers: %s", readers, describe())
	}
	for _, r := range rs {
		r.Close()
	}

	// 64 Stats while the gate is shut: maxthreads of them are under way
	// at once, each holding a client of its own (8 of them the readers'),
	// the others queued.
	shut := make(chan struct{})
	gate.Store(&shut)
	opened := false
	open := func() {
		if !opened {
			opened = true
			gate.Store(nil)
			close(shut)
		}
	}
	defer open() // on failure too: the calls must end before the driver's cleanup
	errs := make(chan error, calls)
	for range calls {
		go func() { _, err := d.Stat(ctx, "/f"); errs <- err }()
	}
	waitUntil(t, fmt.Sprintf("%d Stats under way at once", threads), func() bool {
		s := d.PoolStats()
		if busy := s.Open - s.Idle; busy > threads {
			t.Fatalf("%d clients in use at once with maxthreads %d: %s", busy, threads, describe())
		}
		return s.Open-s.Idle == threads
	}, describe)
	open()
	for range calls {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// The 16 at once took the 8 idle clients and 8 new ones; every call
	// after them found a client returned: none more was dialled, and all
	// 16 are kept.
	if s := d.PoolStats(); s.Created-base.Created != threads || s.Open != threads || s.Idle != threads || s.Replaced != base.Replaced {
		t.Fatalf("after %d Stats, %d at a time: %s; want %d clients dialled in all, %d kept idle",
			calls, threads, describe(), threads, threads)
	}
}

// gatedConn is a NameNode connection whose reads wait while the gate is
// shut.
type gatedConn struct {
	net.Conn
	gate *atomic.Pointer[chan struct{}]
}

func (c *gatedConn) Read(p []byte) (int, error) {
	if g := c.gate.Load(); g != nil {
		<-*g
	}
	return c.Conn.Read(p)
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPutContentAtomic: while PutContent replaces a file again and again
// with contents of different sizes, concurrent readers only ever see one
// whole version, and never an error. (A read that raced the NameNode's
// delete of the replaced file used to fail with the DataNode's "length
// 9223372036854775807 don't match block"; under load, 1 run in 2 of 300
// replacements did.)
func TestPutContentAtomic(t *testing.T) {
	ctx := context.Background()
	d := newTestDriver(t, nil)
	versions := [][]byte{
		bytes.Repeat([]byte("a"), 3<<20+17), // crosses block boundaries
		bytes.Repeat([]byte("b"), 1<<20-3),
	}
	if err := d.PutContent(ctx, "/atomic", versions[0]); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads atomic.Int64
	errs := make(chan error, 4)
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := d.GetContent(ctx, "/atomic")
				if err != nil {
					errs <- fmt.Errorf("GetContent during replacement: %v", err)
					return
				}
				if !bytes.Equal(got, versions[0]) && !bytes.Equal(got, versions[1]) {
					errs <- fmt.Errorf("read %d bytes that are neither version", len(got))
					return
				}
				reads.Add(1)
			}
		}()
	}
	for i := 0; i < 100; i++ {
		if err := d.PutContent(ctx, "/atomic", versions[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d whole reads during 100 replacements", reads.Load())
	// Nothing is left in the staging directory.
	var left []string
	err := d.d.withClient(context.Background(), func(c *gohdfs.Client) error {
		entries, err := c.ReadDir(d.d.root + "/" + stagingDir)
		for _, e := range entries {
			left = append(left, e.Name())
		}
		return err
	})
	if err != nil {
		t.Fatalf("listing the staging directory: %v", err)
	}
	if len(left) > 0 {
		t.Fatalf("staging files left behind: %v", left)
	}
}
