package hdfs

import (
	"context"
	"fmt"
	"time"

	gohdfs "github.com/colinmarc/hdfs/v2"
)

// Retry budget for closing a file while the NameNode has not yet heard
// from the DataNodes about its last block: complete() returns false, which
// colinmarc reports as ErrReplicating. The Java client retries with
// exponential back-off; so do we. 10 ms doubling 12 times: a small file
// usually completes on the first retry, and a slow cluster still gets ~40 s.
//
// The NameNode's other "not yet" answer, NotReplicatedYetException when a
// new block is requested, cannot be retried through colinmarc's client (it
// forgets the previous block before the call); it fails the write. A
// NameNode with dfs.namenode.file.close.num-committed-allowed=1 gives it,
// and ErrReplicating, far less room (docs/configuration.md).
const (
	replicationRetries = 12
	replicationBackoff = 10 * time.Millisecond
)

// fileWriter streams into one HDFS file. Data goes straight to the
// DataNodes in packets, so memory use does not depend on the upload size.
// Close leaves the file closed in HDFS (complete, visible, and appendable by
// any other writer); Commit does the same and marks the write final; Cancel
// deletes the file.
type fileWriter struct {
	d      *driver
	client *gohdfs.Client // owned until the file is closed; nil afterwards
	fw     *gohdfs.FileWriter
	path   string // the storage path, for errors
	full   string // the HDFS path
	size   int64
	// Write deadline; Close always sets a fresh one.
	deadline deadline
	// failed is the first write failure: colinmarc's block writer cannot
	// recover from one, so the file can no longer be completed.
	failed error

	closed, committed, cancelled bool
}

func (w *fileWriter) Write(p []byte) (int, error) {
	switch {
	case w.closed:
		return 0, fmt.Errorf("already closed")
	case w.committed:
		return 0, fmt.Errorf("already committed")
	case w.cancelled:
		return 0, fmt.Errorf("already cancelled")
	}
	if w.failed != nil {
		return 0, w.d.mapOpenErr(w.failed, w.path)
	}
	n, err := w.writeChunk(p)
	w.size += int64(n)
	if err != nil {
		w.failed = err
		return n, w.d.mapOpenErr(err, w.path)
	}
	return n, nil
}

func (w *fileWriter) writeChunk(p []byte) (int, error) {
	if len(p) == 0 {
		// colinmarc's client would allocate an empty block, which the
		// NameNode then never sees replicated: Close would never complete.
		return 0, nil
	}
	w.deadline.refresh(w.fw.SetDeadline)
	return w.fw.Write(p)
}

func (w *fileWriter) Size() int64 { return w.size }

// Close closes the HDFS file, so that its bytes are durable on the
// DataNodes and visible to readers, and a later Writer(path, true) (from
// any process) can append to it.
func (w *fileWriter) Close() error {
	if w.closed {
		return fmt.Errorf("already closed")
	}
	w.closed = true
	if w.committed || w.cancelled {
		return nil
	}
	return w.d.mapOpenErr(w.closeFile(), w.path)
}

// Commit makes the written data durable and visible. It closes the HDFS
// file (a flush alone would leave the last block invisible to readers).
func (w *fileWriter) Commit(ctx context.Context) error {
	switch {
	case w.closed:
		return fmt.Errorf("already closed")
	case w.committed:
		return fmt.Errorf("already committed")
	case w.cancelled:
		return fmt.Errorf("already cancelled")
	}
	if err := w.closeFile(); err != nil {
		return w.d.mapOpenErr(err, w.path)
	}
	w.committed = true
	return nil
}

// Cancel abandons the write and removes the file.
func (w *fileWriter) Cancel(ctx context.Context) error {
	if w.closed {
		return fmt.Errorf("already closed")
	} else if w.committed {
		return fmt.Errorf("already committed")
	}
	w.cancelled = true
	// The writer's client goes back first: the delete borrows one, and
	// must not wait for this one with every client held by writers.
	// Closing the file releases its lease if it can; the delete does in
	// any case.
	w.fw.SetDeadline(time.Now().Add(w.d.ioTimeout))
	w.release(w.client, w.fw.Close())
	err := w.d.withClient(ctx, func(c *gohdfs.Client) error { return c.Remove(w.full) })
	if err != nil && !isNotFound(err) {
		return w.d.mapErr(ctx, err, w.path)
	}
	return nil
}

// closeFile flushes the last packets, waits for the DataNodes' acks and
// completes the file at the NameNode. ErrReplicating means every byte is
// on the DataNodes but the NameNode has not heard of all replicas yet;
// Close is retried until it completes, as the Java client does, because
// giving up would leave the file's lease held and the file unappendable.
// After a failed write the last block may have no replica at all, so the
// file may never complete: one close, to drop the DataNode connection,
// and the write's failure is the answer; closing the client gives the
// lease up (HDFS recovers the file; a later Writer replaces it or finds
// its size changed).
func (w *fileWriter) closeFile() error {
	if w.failed != nil {
		w.fw.SetDeadline(time.Now().Add(w.d.ioTimeout))
		w.fw.Close()
		w.release(w.client, w.failed)
		return w.failed
	}
	backoff := replicationBackoff
	var err error
	for attempt := 0; ; attempt++ {
		w.fw.SetDeadline(time.Now().Add(w.d.ioTimeout))
		err = w.fw.Close()
		if !gohdfs.IsErrReplicating(err) || attempt == replicationRetries {
			break
		}
		time.Sleep(backoff)
		backoff *= 2
	}
	w.release(w.client, err)
	return err
}

// release hands the writer's client back to the pool. After a failed
// write it closes the client instead: that client may still hold the
// file's lease, and a pooled client would renew it forever.
func (w *fileWriter) release(c *gohdfs.Client, err error) {
	if c == nil {
		return
	}
	w.client = nil
	if err != nil {
		w.d.pool.discard(c)
		return
	}
	w.d.pool.put(c)
}
