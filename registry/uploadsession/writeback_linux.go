package uploadsession

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncFileRange starts writeback of a file's range without waiting for it.
func syncFileRange(f *os.File, off, n int64) error {
	return unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
