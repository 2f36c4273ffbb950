package uploadsession

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// failingWriter takes limit bytes, then fails (possibly part-way through a write).
type failingWriter struct {
	bytes.Buffer
	limit int
}

var errDisk = errors.New("disk full")

func (w *failingWriter) Write(p []byte) (int, error) {
	room := w.limit - w.Len()
	if room >= len(p) {
		return w.Buffer.Write(p)
	}
	w.Buffer.Write(p[:room])
	return room, errDisk
}

// TestCopyHashedHashesWhatWasWritten: whatever ends the copy (the end of
// the body, a failed read, a failed or short write), the hash has consumed
// exactly the bytes storage took, and n says how many.
func TestCopyHashedHashesWhatWasWritten(t *testing.T) {
	data := make([]byte, 5<<20+123)
	rand.Read(data)
	check := func(name string, n int64, err, wantErr error, written []byte) {
		t.Helper()
		if !errors.Is(err, wantErr) {
			t.Fatalf("%s: err %v, want %v", name, err, wantErr)
		}
		if n != int64(len(written)) {
			t.Fatalf("%s: n = %d, storage took %d", name, n, len(written))
		}
	}
	// Whole body, in reads of odd sizes.
	h := sha256.New()
	var out bytes.Buffer
	n, err := copyHashed(&out, h, iotest.HalfReader(bytes.NewReader(data)))
	check("whole body", n, err, nil, out.Bytes())
	if !bytes.Equal(out.Bytes(), data) || !bytes.Equal(h.Sum(nil), sha(data)) {
		t.Fatal("whole body: bytes or hash differ")
	}
	// The body fails after 3 MiB + 7.
	h = sha256.New()
	out.Reset()
	errGone := errors.New("client went away")
	n, err = copyHashed(&out, h, io.MultiReader(bytes.NewReader(data[:3<<20+7]), iotest.ErrReader(errGone)))
	check("read error", n, err, errGone, out.Bytes())
	if !bytes.Equal(out.Bytes(), data[:3<<20+7]) || !bytes.Equal(h.Sum(nil), sha(out.Bytes())) {
		t.Fatal("read error: bytes or hash differ")
	}
	// The body breaks off with io.ErrUnexpectedEOF (what net/http says when a
	// client closes before its Content-Length): an error, not the end.
	h = sha256.New()
	out.Reset()
	n, err = copyHashed(&out, h, io.MultiReader(bytes.NewReader(data[:1<<20+3]), iotest.ErrReader(io.ErrUnexpectedEOF)))
	check("body cut short", n, err, io.ErrUnexpectedEOF, out.Bytes())
	if !bytes.Equal(out.Bytes(), data[:1<<20+3]) || !bytes.Equal(h.Sum(nil), sha(out.Bytes())) {
		t.Fatal("body cut short: bytes or hash differ")
	}
	// Storage fails part-way through a write.
	h = sha256.New()
	fw := &failingWriter{limit: 2<<20 + 5}
	n, err = copyHashed(fw, h, bytes.NewReader(data))
	check("write error", n, err, errDisk, fw.Bytes())
	if !bytes.Equal(h.Sum(nil), sha(fw.Bytes())) {
		t.Fatal("write error: the hash does not cover exactly the bytes written")
	}
}

func sha(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// smallReads hands out at most 4 KiB per Read, as a socket often does.
type smallReads struct{ r io.Reader }

func (s smallReads) Read(p []byte) (int, error) { return s.r.Read(p[:min(len(p), 4<<10)]) }

// countingWriter counts writes.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	return w.Buffer.Write(p)
}

// TestCopyHashedWritesFullBuffers: a body that arrives a few KiB at a time
// reaches storage in full buffers, not one write per read.
func TestCopyHashedWritesFullBuffers(t *testing.T) {
	data := make([]byte, 2*copyBufferSize+100)
	rand.Read(data)
	var out countingWriter
	h := sha256.New()
	n, err := copyHashed(&out, h, smallReads{bytes.NewReader(data)})
	if err != nil || n != int64(len(data)) || !bytes.Equal(out.Bytes(), data) || !bytes.Equal(h.Sum(nil), sha(data)) {
		t.Fatalf("copied %d bytes, err %v", n, err)
	}
	if out.writes != 3 {
		t.Fatalf("%d writes to storage for %d bytes in 4 KiB reads, want 3 (two full buffers and the rest)", out.writes, len(data))
	}
}

// TestChunkCutShortIsBroken: a chunk whose body ends before its
// Content-Length (net/http's io.ErrUnexpectedEOF) is a broken body, not a
// finished chunk; the bytes that arrived are kept.
func TestChunkCutShortIsBroken(t *testing.T) {
	ctx := context.Background()
	srv, _, _ := servers(t, backends[0])
	data := make([]byte, 700_000)
	rand.Read(data)
	sess, err := srv.Start(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	cut := io.MultiReader(bytes.NewReader(data[:300_000]), iotest.ErrReader(io.ErrUnexpectedEOF))
	if _, err := srv.Append(ctx, "r", sess.ID, 0, cut); !errors.Is(err, ErrBodyBroken) {
		t.Fatalf("a chunk cut short: %v; want ErrBodyBroken", err)
	}
	if got, err := srv.Get(ctx, "r", sess.ID); err != nil || got.Size != 300_000 {
		t.Fatalf("after the cut: %+v, %v; want offset 300000", got, err)
	}
}
