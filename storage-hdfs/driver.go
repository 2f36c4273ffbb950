// Package hdfs is a distribution v3 storage driver that keeps blobs in HDFS
// through github.com/colinmarc/hdfs/v2.
//
// It registers itself as "hdfs" with distribution's driver factory, so any
// program built on distribution selects it with `storage: hdfs: {...}`.
// Writes stream (memory use does not grow with upload size), every call
// borrows a pooled client of its own (one colinmarc client serves one RPC at a
// time), and HA NameNode lists fail over. It is meant for large objects:
// small metadata belongs in a database, not in a NameNode's heap.
//
// It does not do Kerberos, and it never returns redirect URLs: HDFS has no
// HTTP endpoint that a registry client could be sent to.
package hdfs

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	gohdfs "github.com/colinmarc/hdfs/v2"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/base"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
)

const driverName = "hdfs"

// stagingDir (under the root) holds PutContent's temporary files until
// they are renamed into place. '@' cannot occur in a distribution path, so
// no caller can name it, and List/Walk of "/" leave it out.
const stagingDir = "@staging"

func init() {
	factory.Register(driverName, &hdfsDriverFactory{})
}

type hdfsDriverFactory struct{}

func (hdfsDriverFactory) Create(ctx context.Context, parameters map[string]any) (storagedriver.StorageDriver, error) {
	return FromParameters(parameters)
}

type driver struct {
	root        string
	pool        *clientPool
	blockSize   int64
	replication int
	ioTimeout   time.Duration

	// Cluster defaults, fetched once when blocksize or replication is unset
	// (again after a failure).
	defaultsMu   sync.Mutex
	haveDefaults bool
	defaults     gohdfs.ServerDefaults
}

type baseEmbed struct{ base.Base }

// Driver is the HDFS storage driver. The real work happens in an unexported
// driver wrapped by distribution's base (path checks, tracing) and
// regulator (at most MaxThreads calls at once).
type Driver struct {
	baseEmbed
	d *driver
}

// FromParameters builds a Driver from a registry config's parameter map.
func FromParameters(parameters map[string]any) (*Driver, error) {
	p, err := fromParametersImpl(parameters)
	if err != nil {
		return nil, err
	}
	return New(*p)
}

// New connects to HDFS and makes sure the root directory exists.
func New(p DriverParameters) (*Driver, error) {
	d := &driver{
		root:        p.RootDirectory,
		pool:        newClientPool(&p),
		blockSize:   p.BlockSize,
		replication: p.Replication,
		ioTimeout:   p.IOTimeout,
	}
	if p.IOTimeout == 0 {
		d.ioTimeout = defaultIOTimeout
	}
	if err := d.withClient(context.Background(), func(c *gohdfs.Client) error { return c.MkdirAll(d.root, 0o755) }); err != nil {
		d.pool.closeAll()
		return nil, fmt.Errorf("hdfs storage driver: cannot create root directory %s on %v: %w", d.root, p.Namenodes, err)
	}
	return &Driver{
		baseEmbed: baseEmbed{base.Base{StorageDriver: base.NewRegulator(d, p.MaxThreads)}},
		d:         d,
	}, nil
}

// Close releases the driver's HDFS connections.
func (d *Driver) Close() error {
	d.d.pool.closeAll()
	return nil
}

// PoolStats reports the state of the driver's HDFS client pool (for
// metrics: gaia-registry exports it as gaia_registry_hdfs_*).
func (d *Driver) PoolStats() PoolStats { return d.d.pool.stats() }

func (d *driver) Name() string { return driverName }

func (d *driver) fullPath(p string) string { return path.Join(d.root, p) }

// mapErr turns HDFS errors into distribution's typed errors.
func (d *driver) mapErr(ctx context.Context, err error, p string) error {
	if errors.Is(err, os.ErrPermission) && d.belowFile(ctx, p) {
		return storagedriver.PathNotFoundError{Path: p, DriverName: driverName}
	}
	return d.mapOpenErr(err, p)
}

// mapOpenErr is mapErr for a file already open, whose ancestors are
// directories: it skips mapErr's probe, which would borrow a second
// client while the stream holds one (with every client held so, it
// would wait for itself).
func (d *driver) mapOpenErr(err error, p string) error {
	if err == nil {
		return nil
	}
	if isNotFound(err) {
		return storagedriver.PathNotFoundError{Path: p, DriverName: driverName}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// The caller gave up (waiting for a client): left as it is, so
		// base's storagedriver.Error holds it directly, for errors.Is.
		return err
	}
	var remote gohdfs.Error
	if errors.As(err, &remote) {
		// colinmarc's error text names only the exception class; the first
		// line of HDFS's own message says what went wrong.
		msg, _, _ := strings.Cut(remote.Message(), "\n")
		err = fmt.Errorf("%w: %s", err, msg)
	}
	return storagedriver.Error{DriverName: driverName, Detail: err}
}

// belowFile reports whether one of p's ancestors is a regular file or
// missing. HDFS refuses to traverse a regular file with an
// AccessControlException, which colinmarc's client reports as plain
// "permission denied"; for a path below a file the truthful answer is
// "not found". Only runs on that error path.
func (d *driver) belowFile(ctx context.Context, p string) bool {
	below := false
	d.withClient(ctx, func(c *gohdfs.Client) error {
		for dir := path.Dir(p); dir != "/" && dir != "."; dir = path.Dir(dir) {
			fi, err := c.Stat(d.fullPath(dir))
			if errors.Is(err, os.ErrNotExist) || (err == nil && !fi.IsDir()) {
				below = true
				return nil
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	return below
}

func isNotFound(err error) bool {
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	var remote gohdfs.Error
	if !errors.As(err, &remote) {
		return false
	}
	switch remote.Exception() {
	case "java.io.FileNotFoundException": // uninterpreted, e.g. from a read's block lookup
		return true
	case "org.apache.hadoop.fs.ParentNotDirectoryException": // a path below a regular file
		return true
	}
	return false
}

func (d *driver) GetContent(ctx context.Context, p string) ([]byte, error) {
	var out []byte
	full := d.fullPath(p)
	err := d.withClient(ctx, func(c *gohdfs.Client) error {
		for attempt := 0; ; attempt++ {
			r, size, err := d.openAt(c, full, 0)
			if err != nil {
				return err
			}
			out = make([]byte, size)
			_, err = io.ReadFull(r, out)
			r.f.Close()
			if err == nil || attempt == 3 || !replaced(c, full, r.inode) {
				return err
			}
			// Replaced while it was read: read the new file.
		}
	})
	if err != nil {
		return nil, d.mapErr(ctx, err, p)
	}
	return out, nil
}

func (d *driver) PutContent(ctx context.Context, p string, contents []byte) error {
	// Write a staging file and rename it over the target: a reader sees the
	// old content or the new, never part of the new.
	full := d.fullPath(p)
	tmp := path.Join(d.root, stagingDir, randomName())
	err := d.withClient(ctx, func(c *gohdfs.Client) error {
		if err := d.writeFile(c, tmp, contents); err != nil {
			return err
		}
		return renameCreatingParent(c, tmp, full)
	})
	if err != nil {
		// On a client of its own: the one that failed may be broken. Even
		// when the caller gave up, but not waiting for a client forever.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.ioTimeout)
		d.withClient(cctx, func(c *gohdfs.Client) error { return c.Remove(tmp) })
		cancel()
	}
	return d.mapErr(ctx, err, p)
}

// writeFile writes data to a new file at full (its parent created on demand)
// and closes it.
func (d *driver) writeFile(c *gohdfs.Client, full string, data []byte) error {
	fw, err := d.create(c, full)
	if err != nil {
		return err
	}
	w := &fileWriter{d: d, fw: fw, deadline: deadline{timeout: d.ioTimeout}}
	if _, err := w.writeChunk(data); err != nil {
		fw.Close()
		return err
	}
	return w.closeFile()
}

// create opens a new file for writing, creating parent directories when
// missing and replacing an existing file.
func (d *driver) create(c *gohdfs.Client, full string) (*gohdfs.FileWriter, error) {
	bs, repl, err := d.fileSettings(c)
	if err != nil {
		return nil, err
	}
	fw, err := c.CreateFile(full, repl, bs, 0o644)
	if errors.Is(err, os.ErrNotExist) {
		if err := c.MkdirAll(path.Dir(full), 0o755); err != nil {
			return nil, err
		}
		fw, err = c.CreateFile(full, repl, bs, 0o644)
	}
	if errors.Is(err, os.ErrExist) {
		if err := c.Remove(full); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		fw, err = c.CreateFile(full, repl, bs, 0o644)
	}
	return fw, err
}

func (d *driver) fileSettings(c *gohdfs.Client) (int64, int, error) {
	bs, repl := d.blockSize, d.replication
	if bs > 0 && repl > 0 {
		return bs, repl, nil
	}
	d.defaultsMu.Lock()
	defer d.defaultsMu.Unlock()
	if !d.haveDefaults {
		def, err := c.ServerDefaults()
		if err != nil {
			return 0, 0, err
		}
		d.defaults, d.haveDefaults = def, true
	}
	if bs == 0 {
		bs = d.defaults.BlockSize
	}
	if repl == 0 {
		repl = d.defaults.Replication
	}
	return bs, repl, nil
}

func renameCreatingParent(c *gohdfs.Client, from, to string) error {
	err := c.Rename(from, to)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := c.Stat(from); serr != nil {
			return serr
		}
		if err := c.MkdirAll(path.Dir(to), 0o755); err != nil {
			return err
		}
		err = c.Rename(from, to)
	}
	return err
}

func randomName() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Reader streams the file at p from offset. The reader holds a pooled client
// until it is closed.
func (d *driver) Reader(ctx context.Context, p string, offset int64) (io.ReadCloser, error) {
	if offset < 0 {
		return nil, storagedriver.InvalidOffsetError{Path: p, Offset: offset, DriverName: driverName}
	}
	var rc io.ReadCloser
	err := d.withClientKept(ctx, func(c *gohdfs.Client) (bool, error) {
		r, size, err := d.openAt(c, d.fullPath(p), offset)
		if err != nil {
			return false, err
		}
		if offset >= size {
			// Past the end: a reader that returns io.EOF at once.
			r.f.Close()
			rc = io.NopCloser(bytes.NewReader(nil))
			return false, nil
		}
		r.release = func() { d.pool.put(c) }
		rc = r
		return true, nil
	})
	if err != nil {
		return nil, d.mapErr(ctx, err, p)
	}
	return rc, nil
}

// openAt opens the regular file at full for reading from offset, pinned to
// one inode and with its block list already fetched, and returns its size.
//
// colinmarc's Open reads a file's length by path, and its block list only
// on the first Read, again by path: a PutContent renaming a new file over
// full in between would pair the old length with the new blocks (a torn
// read). Opening the inode itself (HDFS's /.reserved/.inodes/<id> path)
// keeps both from one file, and reading the first byte here fetches the
// block list at once; if the file was replaced (its inode deleted) in
// between, openAt starts again from the path.
func (d *driver) openAt(c *gohdfs.Client, full string, offset int64) (*fileReader, int64, error) {
	for attempt := 0; ; attempt++ {
		fi, err := c.Stat(full)
		if err != nil {
			return nil, 0, err
		}
		if fi.IsDir() {
			return nil, 0, &os.PathError{Op: "open", Path: full, Err: os.ErrNotExist}
		}
		name, inode := full, fileID(fi)
		if inode != 0 {
			name = fmt.Sprintf("/.reserved/.inodes/%d", inode)
		}
		f, err := c.Open(name)
		if err == nil && offset < f.Stat().Size() {
			r := &fileReader{f: f, inode: inode, deadline: deadline{timeout: d.ioTimeout}}
			if _, err = f.Seek(offset, io.SeekStart); err == nil {
				r.deadline.refresh(f.SetDeadline)
				var n int
				n, err = f.Read(r.peek[:])
				r.pending = r.peek[:n]
			}
			if err == nil {
				return r, f.Stat().Size(), nil
			}
			f.Close()
		} else if err == nil {
			return &fileReader{f: f, inode: inode}, f.Stat().Size(), nil
		}
		if attempt == 3 || !(isNotFound(err) || replaced(c, full, inode)) {
			return nil, 0, err
		}
		// Replaced or deleted since the Stat: look again.
	}
}

// fileID is the HDFS inode number of fi, 0 when the NameNode gave none.
func fileID(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(interface{ GetFileId() uint64 }); ok {
		return st.GetFileId()
	}
	return 0
}

// replaced tells whether full is gone or is now another file than inode.
// A read that races the delete of its file (a PutContent renaming a new
// file over it) does not always fail as not-found: the NameNode can hand
// out the block list of a file it is deleting, with each block's length
// already set to its "deleted" marker (Long.MAX_VALUE), and the DataNode
// then refuses the read as "Offset 0 and length 9223372036854775807 don't
// match block". Looking at the path again tells that case from a real
// read error.
func replaced(c *gohdfs.Client, full string, inode uint64) bool {
	if inode == 0 {
		return false
	}
	fi, err := c.Stat(full)
	if err != nil {
		return isNotFound(err)
	}
	return fileID(fi) != inode
}

type fileReader struct {
	f        *gohdfs.FileReader
	inode    uint64 // the file's inode number, 0 if unknown
	deadline deadline
	release  func()
	closed   bool
	peek     [1]byte
	pending  []byte // read by openAt, not yet returned
}

func (r *fileReader) Read(b []byte) (int, error) {
	if len(r.pending) > 0 {
		n := copy(b, r.pending)
		r.pending = r.pending[n:]
		return n, nil
	}
	r.deadline.refresh(r.f.SetDeadline)
	return r.f.Read(b)
}

// deadline keeps an I/O deadline between 3/4 and all of timeout ahead,
// re-arming it only when a quarter has passed rather than on every 64 KiB
// packet (docs/benchmarks.md has the before and after figures; the
// difference was within this machine's run-to-run noise).
type deadline struct {
	timeout time.Duration
	rearmAt time.Time
}

func (d *deadline) refresh(set func(time.Time) error) {
	now := time.Now()
	if now.Before(d.rearmAt) {
		return
	}
	set(now.Add(d.timeout))
	d.rearmAt = now.Add(d.timeout / 4)
}

func (r *fileReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	err := r.f.Close()
	if r.release != nil {
		r.release()
	}
	return err
}

// Writer returns a FileWriter for p; with append, it continues the file
// that a previous writer (in this process or another) closed.
func (d *driver) Writer(ctx context.Context, p string, appendMode bool) (storagedriver.FileWriter, error) {
	full := d.fullPath(p)
	var w *fileWriter
	err := d.withClientKept(ctx, func(c *gohdfs.Client) (bool, error) {
		var (
			fw   *gohdfs.FileWriter
			size int64
			err  error
		)
		if appendMode {
			var fi os.FileInfo
			if fi, err = c.Stat(full); err != nil {
				return false, err
			}
			if fi.IsDir() {
				return false, os.ErrNotExist
			}
			size = fi.Size()
			fw, err = c.Append(full)
		} else {
			fw, err = d.create(c, full)
		}
		if err != nil {
			return false, err
		}
		w = &fileWriter{d: d, client: c, fw: fw, path: p, full: full, size: size, deadline: deadline{timeout: d.ioTimeout}}
		return true, nil
	})
	if err != nil {
		return nil, d.mapErr(ctx, err, p)
	}
	return w, nil
}

func (d *driver) Stat(ctx context.Context, p string) (storagedriver.FileInfo, error) {
	var fi os.FileInfo
	err := d.withClient(ctx, func(c *gohdfs.Client) (err error) {
		fi, err = c.Stat(d.fullPath(p))
		return err
	})
	if err != nil {
		return nil, d.mapErr(ctx, err, p)
	}
	return toFileInfo(p, fi), nil
}

func toFileInfo(p string, fi os.FileInfo) storagedriver.FileInfo {
	f := storagedriver.FileInfoFields{Path: p, ModTime: fi.ModTime(), IsDir: fi.IsDir()}
	if !fi.IsDir() {
		f.Size = fi.Size()
	}
	return storagedriver.FileInfoInternal{FileInfoFields: f}
}

func (d *driver) List(ctx context.Context, p string) ([]string, error) {
	infos, err := d.readDir(ctx, p)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(infos))
	for i, fi := range infos {
		out[i] = fi.Path()
	}
	return out, nil
}

// readDir lists p's children with their metadata in one NameNode call per
// page, sorted by path.
func (d *driver) readDir(ctx context.Context, p string) ([]storagedriver.FileInfo, error) {
	var entries []os.FileInfo
	err := d.withClient(ctx, func(c *gohdfs.Client) (err error) {
		entries, err = c.ReadDir(d.fullPath(p))
		return err
	})
	if err != nil {
		// ReadDir of a regular file: there is no such directory. (colinmarc
		// reports any listing failure as a "readdir" PathError; only this
		// message means "not a directory".)
		var pe *os.PathError
		if errors.As(err, &pe) && pe.Op == "readdir" && pe.Err.Error() == "the file is not a directory" {
			return nil, storagedriver.PathNotFoundError{Path: p, DriverName: driverName}
		}
		return nil, d.mapErr(ctx, err, p)
	}
	out := make([]storagedriver.FileInfo, 0, len(entries))
	for _, e := range entries {
		if p == "/" && e.Name() == stagingDir {
			continue
		}
		out = append(out, toFileInfo(path.Join(p, e.Name()), e))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path() < out[j].Path() })
	return out, nil
}

func (d *driver) Move(ctx context.Context, sourcePath, destPath string) error {
	from, to := d.fullPath(sourcePath), d.fullPath(destPath)
	retried := false
	err := d.withClient(ctx, func(c *gohdfs.Client) error {
		err := renameCreatingParent(c, from, to)
		if retried && isNotFound(err) {
			// The first attempt may have renamed before its connection broke.
			if _, serr := c.Stat(to); serr == nil {
				return nil
			}
		}
		retried = true
		return err
	})
	return d.mapErr(ctx, err, sourcePath)
}

func (d *driver) Delete(ctx context.Context, p string) error {
	full := d.fullPath(p)
	retried := false
	err := d.withClient(ctx, func(c *gohdfs.Client) error {
		err := c.Remove(full)
		if errors.Is(err, syscall.ENOTEMPTY) {
			err = c.RemoveAll(full)
		}
		if retried && isNotFound(err) {
			// The first attempt may have deleted before its connection broke.
			return nil
		}
		retried = true
		return err
	})
	return d.mapErr(ctx, err, p)
}

// RedirectURL returns "": HDFS has no URL a client could fetch from.
func (d *driver) RedirectURL(*http.Request, string) (string, error) { return "", nil }

// Walk visits the tree under p in lexical order. It reuses distribution's
// WalkFallback (start-after hints, ErrSkipDir, ErrFilledBuffer) but serves
// each entry's Stat from the directory listing that found it, so a walk
// costs one NameNode call per directory instead of one per entry.
//
// WalkFallback, given a start-after hint, goes on to the parent directories
// after fn returned ErrFilledBuffer; the wrapper keeps the buffer filled so
// the walk really stops.
func (d *driver) Walk(ctx context.Context, p string, fn storagedriver.WalkFn, options ...func(*storagedriver.WalkOptions)) error {
	filled := false
	stopAfterFilled := func(fi storagedriver.FileInfo) error {
		if filled {
			return storagedriver.ErrFilledBuffer
		}
		err := fn(fi)
		filled = errors.Is(err, storagedriver.ErrFilledBuffer)
		return err
	}
	return storagedriver.WalkFallback(ctx, &listingWalker{driver: d, infos: map[string]storagedriver.FileInfo{}}, p, stopAfterFilled, options...)
}

type listingWalker struct {
	*driver
	infos map[string]storagedriver.FileInfo
}

func (w *listingWalker) List(ctx context.Context, p string) ([]string, error) {
	infos, err := w.readDir(ctx, p)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(infos))
	for i, fi := range infos {
		w.infos[fi.Path()] = fi
		out[i] = fi.Path()
	}
	return out, nil
}

func (w *listingWalker) Stat(ctx context.Context, p string) (storagedriver.FileInfo, error) {
	if fi, ok := w.infos[p]; ok {
		delete(w.infos, p)
		return fi, nil
	}
	return w.driver.Stat(ctx, p)
}

// SweepStaging removes the staging files (PutContent's, under @staging)
// older than olderThan: what a writer killed between writing one and
// renaming it into place left behind. A live PutContent renames its file
// within one call, so olderThan only needs to exceed a call's duration.
// It returns how many it removed (garbage collection's storage walk).
func (d *Driver) SweepStaging(ctx context.Context, olderThan time.Duration) (int, error) {
	dir := path.Join(d.d.root, stagingDir)
	removed := 0
	err := d.d.withClient(ctx, func(c *gohdfs.Client) error {
		entries, err := c.ReadDir(dir)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		var errs []error
		for _, e := range entries {
			if time.Since(e.ModTime()) < olderThan {
				continue
			}
			if err := c.Remove(path.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
				continue
			}
			removed++
		}
		return errors.Join(errs...)
	})
	return removed, err
}
