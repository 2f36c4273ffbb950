package uploadsession

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
)

// TestChunkStartsWritebackWhileStreaming: on a local filesystem, a chunk
// asks for its bytes to be written to disk every 8 MiB while its body is
// still arriving, at file offsets that continue across chunks; the
// content is unaffected.
func TestChunkStartsWritebackWhileStreaming(t *testing.T) {
	root := t.TempDir()
	drv, err := filesystem.FromParameters(map[string]any{"rootdirectory": root})
	if err != nil {
		t.Fatal(err)
	}
	s := New(metadatatest.Pool(t), drv).WithLocalRoot(root)
	type call struct{ off, n int64 }
	calls := make(chan call, 16)
	real := s.syncRange
	s.syncRange = func(f *os.File, off, n int64) error {
		calls <- call{off, n}
		return real(f, off, n)
	}
	ctx := context.Background()
	sess, err := s.Start(ctx, "team/app")
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 2*writebackEvery+12345)
	rand.Read(data)
	next := func(want call) {
		t.Helper()
		select {
		case c := <-calls:
			if c != want {
				t.Fatalf("writeback of [%d, +%d), want [%d, +%d)", c.off, c.n, want.off, want.n)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no writeback of [%d, +%d) while the body streams", want.off, want.n)
		}
	}

	// First chunk: 8 MiB + 1 KiB, the body held open after it.
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := s.Append(ctx, "team/app", sess.ID, 0, pr)
		done <- err
	}()
	first := writebackEvery + 1024
	if _, err := pw.Write(data[:first]); err != nil {
		t.Fatal(err)
	}
	next(call{0, writebackEvery}) // the body has not ended yet
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Second chunk: offsets go on from where the file stands.
	if _, err := s.Append(ctx, "team/app", sess.ID, int64(first), bytes.NewReader(data[first:])); err != nil {
		t.Fatal(err)
	}
	next(call{int64(first), writebackEvery})
	if _, err := s.Finish(ctx, "team/app", sess.ID, AtEnd, nil, digest.FromBytes(data)); err != nil {
		t.Fatal(err)
	}
	got, err := drv.GetContent(ctx, BlobPath(digest.FromBytes(data)))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("stored blob: %d bytes, err %v", len(got), err)
	}
}
