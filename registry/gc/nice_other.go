//go:build !linux

package gc

// yieldCPU: thread niceness is Linux's; elsewhere the collector runs at
// the process's priority.
func yieldCPU(n int) error { return nil }

func threadNice() (int, error) { return 0, nil }
