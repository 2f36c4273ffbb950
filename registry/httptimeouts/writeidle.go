package httptimeouts

import (
	"io"
	"net/http"
	"time"
)

// DefaultWriteIdleTimeout bounds how long a download may make no progress.
const DefaultWriteIdleTimeout = time.Minute

// sendfileChunk is how much one ReadFrom (sendfile) call may send before the
// write deadline is looked at again: a client must take this much within
// 3/4 of the idle timeout (about 23 KiB/s at the default) or be cut.
const sendfileChunk = 1 << 20

// IdleWriter writes a response body that must keep moving: every write
// (and every sendfileChunk of a ReadFrom) must be taken by the client
// within the idle timeout, or it fails with a timeout error. A client
// that stops reading a blob therefore releases, after the timeout, what
// the download holds (the storage reader, an HDFS client). Like the
// body's read deadline, the write deadline is moved at most every quarter
// of the timeout. Close lifts it: call it before the handler returns, so
// that net/http's flush of the response's last buffered bytes, after the
// handler, cannot meet an expired deadline (net/http clears the deadline
// itself only after that flush).
type IdleWriter struct {
	w     http.ResponseWriter
	rc    *http.ResponseController
	idle  time.Duration
	armed time.Time
}

// NewIdleWriter wraps w; idle ≤ 0 writes without a deadline.
func NewIdleWriter(w http.ResponseWriter, idle time.Duration) *IdleWriter {
	return &IdleWriter{w: w, rc: http.NewResponseController(w), idle: idle}
}

func (iw *IdleWriter) arm() {
	if iw.idle <= 0 {
		return
	}
	if now := time.Now(); iw.armed.IsZero() || now.Sub(iw.armed) > iw.idle/4 {
		if iw.rc.SetWriteDeadline(now.Add(iw.idle)) == nil {
			iw.armed = now
		}
	}
}

// Write writes p, which must be taken within the idle timeout.
func (iw *IdleWriter) Write(p []byte) (int, error) {
	iw.arm()
	return iw.w.Write(p)
}

// ReadFrom keeps the ResponseWriter's ReadFrom (sendfile(2) from a file)
// for a source of known length (*io.LimitedReader, as io.LimitReader
// makes): it is sent in chunks of the same kind, with the deadline looked
// at between them. Other sources are copied through Write.
func (iw *IdleWriter) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := iw.w.(io.ReaderFrom)
	lr, limited := src.(*io.LimitedReader)
	if !ok || !limited {
		return io.Copy(struct{ io.Writer }{iw}, src)
	}
	var total int64
	for lr.N > 0 {
		iw.arm()
		chunk := &io.LimitedReader{R: lr.R, N: min(lr.N, sendfileChunk)}
		n, err := rf.ReadFrom(chunk)
		total += n
		lr.N -= n
		if err != nil {
			return total, err
		}
		if chunk.N > 0 { // the source ended early
			return total, nil
		}
	}
	return total, nil
}

// Close lifts the write deadline, if one was set.
func (iw *IdleWriter) Close() error {
	if iw.armed.IsZero() {
		return nil
	}
	iw.armed = time.Time{}
	return iw.rc.SetWriteDeadline(time.Time{})
}
