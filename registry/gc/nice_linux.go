package gc

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// yieldCPU locks the calling goroutine to its thread and gives the thread
// CPU niceness n (on Linux niceness belongs to a thread): the collector's
// work on it runs only on CPU the server's requests leave. The caller
// must end the goroutine when done (a goroutine that ends locked takes
// its thread with it), so no other goroutine inherits the niceness.
// A thread already nicer than n (a server started under nice) keeps its
// niceness: this only ever lowers a priority.
func yieldCPU(n int) error {
	if n <= 0 {
		return nil
	}
	runtime.LockOSThread()
	if cur, err := threadNice(); err != nil || cur >= n {
		return err
	}
	return unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), n)
}

// threadNice is the calling thread's niceness (tests).
func threadNice() (int, error) {
	// getpriority(2)'s raw value is 20 - nice.
	p, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
	return 20 - p, err
}
