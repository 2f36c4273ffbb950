package uploadsession

import (
	"io"
	"os"
	"path"
)

// writebackEvery is how many bytes a chunk writes to a local file between
// two requests to start writing them to disk.
const writebackEvery = 8 << 20

// WithLocalRoot says the driver keeps its objects as files under root on
// this machine (distribution's filesystem driver). A chunk then asks the
// kernel to start writing its bytes to disk as they stream, every 8 MiB
// (sync_file_range(2), which does not wait), so the fsync that closes the
// chunk finds little left to write: the disk works while the body is still
// arriving instead of after it.
func (s *Store) WithLocalRoot(root string) *Store {
	s.localRoot = root
	s.syncRange = syncFileRange
	return s
}

// writeback is a chunk's writer that starts writeback of what it wrote
// every writebackEvery bytes.
type writeback struct {
	w       io.Writer
	f       *os.File // the same file, opened by us for sync_file_range
	sync    func(f *os.File, off, n int64) error
	base    int64 // file offset of the chunk's first byte
	written int64
	synced  int64 // bytes of the chunk handed to sync
}

// newWriteback wraps w, the driver's writer of objectPath, appending from
// file offset base. Without a local root it returns w unchanged.
func (s *Store) newWriteback(w io.Writer, objectPath string, base int64) (io.Writer, func()) {
	if s.localRoot == "" {
		return w, func() {}
	}
	f, err := os.Open(path.Join(s.localRoot, objectPath))
	if err != nil {
		return w, func() {} // only an optimisation: the chunk goes on without it
	}
	wb := &writeback{w: w, f: f, sync: s.syncRange, base: base}
	return wb, func() { f.Close() }
}

func (wb *writeback) Write(p []byte) (int, error) {
	n, err := wb.w.Write(p)
	wb.written += int64(n)
	if wb.written-wb.synced >= writebackEvery {
		wb.sync(wb.f, wb.base+wb.synced, wb.written-wb.synced) // advisory: an error changes nothing
		wb.synced = wb.written
	}
	return n, err
}
