//go:build !linux

package uploadsession

import "os"

// syncFileRange: only Linux has sync_file_range(2); elsewhere the chunk's
// closing fsync writes everything.
func syncFileRange(*os.File, int64, int64) error { return nil }
