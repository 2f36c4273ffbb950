package allocfile

import (
	"context"
	"crypto/sha256"
	"os"
	"sync"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
)

// Watcher reloads an allocation file when it changes. It polls the
// file's modification time and size, and reads and hashes the file when
// they moved (or when the last read was too close to the modification
// time to trust it); only new content is parsed and reported.
//
//	w, err := allocfile.NewWatcher(path, func(pools []model.Pool, warnings []string, err error) {...})
//	pools := w.Pools()          // the file as loaded by NewWatcher
//	go w.Run(ctx, 5*time.Second)
//
// On a change, fn gets the new pools and nil, or nil and the error; after
// an error Pools() still answers the last good set, and the same bad
// content is not reported twice. A file that disappears is an error too.
// fn runs on the goroutine that polls (Run's, or Check's caller).
type Watcher struct {
	path string
	fn   func(pools []model.Pool, warnings []string, err error)

	mu       sync.Mutex
	pools    []model.Pool
	warnings []string
	mtime    time.Time
	size     int64
	readAt   time.Time // when the content was last read
	sum      [32]byte  // the content last reported (good or bad)
	missing  bool      // the file was missing at the last poll, reported
}

// NewWatcher loads path now; an error here (unreadable or invalid file)
// is returned and no watcher is made. fn may be nil.
func NewWatcher(path string, fn func(pools []model.Pool, warnings []string, err error)) (*Watcher, error) {
	w := &Watcher{path: path, fn: fn}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pools, warnings, err := Parse(data)
	if err != nil {
		if e, ok := err.(*Error); ok {
			e.File = path
		}
		return nil, err
	}
	w.pools, w.warnings = pools, warnings
	w.mtime, w.size, w.readAt, w.sum = fi.ModTime(), fi.Size(), time.Now(), sha256.Sum256(data)
	return w, nil
}

// Pools returns the last good set of pools and its warnings.
func (w *Watcher) Pools() ([]model.Pool, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pools, w.warnings
}

// Run polls every interval until ctx is done.
func (w *Watcher) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.Check()
		}
	}
}

// racyWindow: content read this close after its modification time may
// have been written again within the same timestamp, so it is read again.
const racyWindow = 2 * time.Second

// Check polls once: it reports whether it called fn.
func (w *Watcher) Check() bool {
	fi, err := os.Stat(w.path)
	w.mu.Lock()
	if err != nil {
		if w.missing {
			w.mu.Unlock()
			return false
		}
		w.missing = true
		w.sum = [32]byte{}
		w.mu.Unlock()
		w.report(nil, nil, err)
		return true
	}
	w.missing = false
	unchanged := fi.ModTime().Equal(w.mtime) && fi.Size() == w.size && w.readAt.Sub(w.mtime) > racyWindow
	w.mu.Unlock()
	if unchanged {
		return false
	}
	now := time.Now()
	data, err := os.ReadFile(w.path)
	if err != nil {
		w.report(nil, nil, err)
		return true
	}
	sum := sha256.Sum256(data)
	w.mu.Lock()
	w.mtime, w.size, w.readAt = fi.ModTime(), fi.Size(), now
	same := sum == w.sum
	w.sum = sum
	w.mu.Unlock()
	if same {
		return false
	}
	pools, warnings, err := Parse(data)
	if err != nil {
		if e, ok := err.(*Error); ok {
			e.File = w.path
		}
		w.report(nil, nil, err)
		return true
	}
	w.mu.Lock()
	w.pools, w.warnings = pools, warnings
	w.mu.Unlock()
	w.report(pools, warnings, nil)
	return true
}

func (w *Watcher) report(pools []model.Pool, warnings []string, err error) {
	if w.fn != nil {
		w.fn(pools, warnings, err)
	}
}
