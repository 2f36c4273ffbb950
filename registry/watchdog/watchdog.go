// Package watchdog ends an HTTP transfer that stops making progress: a
// response body that stops arriving, or a streamed request body the
// server stops taking. Blobs are large, so a transfer gets no overall
// timeout; a peer that stalls must still not hold a transfer (and the
// locks or slots it holds) for ever. The mirror's upstream client and the
// cross-IDC replication client both use it.
package watchdog

import (
	"context"
	"io"
	"time"
)

// Watchdog watches one transfer (one HTTP request and its bodies).
type Watchdog struct {
	timer   *time.Timer
	idle    time.Duration
	ctx     context.Context
	cancel  context.CancelCauseFunc
	stalled error
}

// New returns a disarmed watchdog and the context to make the request
// with: once armed, the watchdog cancels that context, with stalled as
// its cause, when no progress is made for idle.
func New(parent context.Context, idle time.Duration, stalled error) (*Watchdog, context.Context) {
	ctx, cancel := context.WithCancelCause(parent)
	w := &Watchdog{idle: idle, ctx: ctx, cancel: cancel, stalled: stalled}
	w.timer = time.AfterFunc(time.Hour, func() { cancel(stalled) })
	w.timer.Stop()
	return w, ctx
}

// Arm starts the countdown again from idle.
func (w *Watchdog) Arm() { w.timer.Reset(w.idle) }

// Stop disarms the watchdog (while waiting for response headers, which
// the transport's own timeout bounds).
func (w *Watchdog) Stop() { w.timer.Stop() }

// Done disarms the watchdog for good and releases its context: call it
// when the transfer is over.
func (w *Watchdog) Done() {
	w.timer.Stop()
	w.cancel(nil)
}

// Err returns the stall error when the watchdog cut the transfer that
// failed with err, and err otherwise.
func (w *Watchdog) Err(err error) error {
	if err != nil && err != io.EOF && context.Cause(w.ctx) == w.stalled {
		return w.stalled
	}
	return err
}

// Body wraps a response body. The watchdog is armed at the first read (a
// consumer that opens the body and is slow to start, waiting for a slot
// of its own, is not a stall) and re-armed by every read; a read it cut
// reports the stall rather than a bare "context canceled".
func (w *Watchdog) Body(rc io.ReadCloser) io.ReadCloser { return &watched{ReadCloser: rc, w: w} }

// RequestBody wraps a streamed request body: every read re-arms the
// watchdog, and its end disarms it (the answer's headers are waited for
// under the transport's timeout).
func (w *Watchdog) RequestBody(rc io.ReadCloser) io.ReadCloser {
	return &watched{ReadCloser: rc, w: w, request: true}
}

type watched struct {
	io.ReadCloser
	w       *Watchdog
	request bool
}

func (b *watched) Read(p []byte) (int, error) {
	b.w.Arm() // a read that blocks is bounded too
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && b.request {
		b.w.Stop()
	} else {
		b.w.Arm()
	}
	if !b.request {
		err = b.w.Err(err)
	}
	return n, err
}
