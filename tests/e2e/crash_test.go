package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/server"
	"github.com/gaia-registry/gaia/registry/uploadsession"
	"github.com/gaia-registry/gaia/tests/harness"
)

// startParked runs gaia-registry with requests parking at step (the
// server's test hook), on db and storage root.
func startParked(t *testing.T, db, root, step string) *harness.Registry {
	t.Helper()
	addr := harness.FreeAddr(t)
	cfg := filepath.Join(t.TempDir(), "config.yml")
	if err := os.WriteFile(cfg, []byte(harness.RegistryConfig(addr, db, root)), 0o644); err != nil {
		t.Fatal(err)
	}
	var env []string
	if step != "" {
		env = []string{server.TestHookPark + "=" + step}
	}
	return harness.StartProcess(t, harness.Binary(t, "./registry/cmd/gaia-registry"), []string{"serve", "--config", cfg},
		env, addr, "/readyz", func(code int) bool { return code == http.StatusOK })
}

// waitParked waits until reg logs that a request parked at its step.
func waitParked(t *testing.T, reg *harness.Registry) {
	t.Helper()
	waitUntil(t, "a request parked at the test hook", func() bool {
		return strings.Contains(reg.Log(), "test hook: parked")
	})
}

// send runs req in the background; the answer is irrelevant (the server
// dies before it).
func send(req *http.Request) {
	go func() {
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
}

func request(t *testing.T, method, url string, body []byte, header ...string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return req
}

// startUpload opens an upload session and returns its Location.
func startUpload(t *testing.T, base, repo string) string {
	t.Helper()
	resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload: %v %v", resp, err)
	}
	resp.Body.Close()
	return resp.Header.Get("Location")
}

// getBlob returns a blob's status and bytes.
func getBlob(t *testing.T, base, repo string, d digest.Digest) (int, []byte) {
	t.Helper()
	resp, err := http.Get(base + "/v2/" + repo + "/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// noRowWithoutBytes: every blob PostgreSQL records is whole and hashes
// right in storage; no upload session records more bytes than its data
// holds.
func noRowWithoutBytes(t *testing.T, db, root string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	blobsWhole(t, conn, fsBlobs(root))
	rows, _ := conn.Query(ctx, `SELECT id::text, size FROM upload_sessions`)
	type sess struct {
		id   string
		size int64
	}
	sessions, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (sess, error) {
		var s sess
		return s, r.Scan(&s.id, &s.size)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sessions {
		fi, err := os.Stat(filepath.Join(root, strings.TrimPrefix(uploadsession.UploadPath(s.id), "/")))
		if s.size > 0 && (err != nil || fi.Size() < s.size) {
			t.Errorf("upload %s records %d bytes; its data: %v %v", s.id, s.size, fi, err)
		}
	}
}

// TestCrashBetweenStorageAndDatabase: a server killed -9 at each step
// between writing storage and committing PostgreSQL (a chunk streamed but
// not recorded; a blob verified, or moved into place, but not recorded; a
// manifest's rows written but not committed). After a restart no row
// lacks its bytes, what the dead server left is harmless, and the
// client's retry succeeds.
func TestCrashBetweenStorageAndDatabase(t *testing.T) {
	for _, step := range []string{uploadsession.StepStreamed, uploadsession.StepVerified, uploadsession.StepMoved, metadata.StepBeforeCommit} {
		t.Run(step, func(t *testing.T) {
			db, root := harness.NewDatabase(t), t.TempDir()
			parked := startParked(t, db, root, step)
			base := parked.URL()
			data := []byte(fmt.Sprintf("the blob of step %s, %d", step, time.Now().UnixNano()))
			d := digest.FromBytes(data)
			switch step {
			case uploadsession.StepStreamed: // a chunk in storage, its offset not recorded
				loc := startUpload(t, base, "crash/app")
				send(request(t, http.MethodPatch, base+loc, data, "Content-Type", "application/octet-stream"))
			case uploadsession.StepVerified, uploadsession.StepMoved:
				loc := startUpload(t, base, "crash/app")
				sep := "?"
				if strings.Contains(loc, "?") {
					sep = "&"
				}
				send(request(t, http.MethodPut, base+loc+sep+"digest="+d.String(), data, "Content-Type", "application/octet-stream"))
			case metadata.StepBeforeCommit: // the manifest's rows written, not committed
				m := pushSmallImageBlobs(t, base, "crash/base")
				send(request(t, http.MethodPut, base+"/v2/crash/base/manifests/v1", []byte(m),
					"Content-Type", "application/vnd.oci.image.manifest.v1+json"))
			}
			waitParked(t, parked)
			parked.Kill()

			restarted := startParked(t, db, root, "")
			base = restarted.URL()
			noRowWithoutBytes(t, db, root) // as the crash left it, before any retry heals it
			switch step {
			case uploadsession.StepStreamed, uploadsession.StepVerified, uploadsession.StepMoved:
				if code, _ := getBlob(t, base, "crash/app", d); code != http.StatusNotFound {
					t.Fatalf("blob of a push killed at %s: %d; want 404 (never acknowledged)", step, code)
				}
				// The client retries with a new upload: it succeeds, and the
				// blob reads back whole, even where the dead server's bytes
				// already sit at the blob's path.
				pushBlob(t, base, "crash/app", data)
				if code, got := getBlob(t, base, "crash/app", d); code != 200 || !bytes.Equal(got, data) {
					t.Fatalf("blob after the retry: %d, %d bytes", code, len(got))
				}
			case metadata.StepBeforeCommit:
				resp, err := http.Get(base + "/v2/crash/base/manifests/v1")
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusNotFound {
					t.Fatalf("manifest whose PUT was killed before its commit: %d; want 404", resp.StatusCode)
				}
				pushSmallImage(t, base, "crash/base", "v1")
			}
			noRowWithoutBytes(t, db, root)
		})
	}
}
