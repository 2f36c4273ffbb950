package api

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"

	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
	"github.com/gaia-registry/gaia/registry/uploadsession"
)

// sink is a ResponseWriter that, like net/http's, has ReadFrom (which is
// sendfile(2) there); it records which way the body came.
type sink struct {
	hdr      http.Header
	status   int
	body     bytes.Buffer
	readFrom []io.Reader // sources handed to ReadFrom
	maxWrite int         // the largest Write
}

func (s *sink) Header() http.Header { return s.hdr }
func (s *sink) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
}
func (s *sink) Write(p []byte) (int, error) {
	s.WriteHeader(200)
	s.maxWrite = max(s.maxWrite, len(p))
	return s.body.Write(p)
}
func (s *sink) ReadFrom(r io.Reader) (int64, error) {
	s.WriteHeader(200)
	s.readFrom = append(s.readFrom, r)
	return s.body.ReadFrom(r)
}

// TestBlobGETCopiesForClientsOnThisHost: a client on this host gets a
// blob through the server's buffers, a remote one through ReadFrom with
// the storage file itself (sendfile). A ranged GET takes the same paths.
func TestBlobGETCopiesForClientsOnThisHost(t *testing.T) {
	pool := metadatatest.Pool(t)
	drv, err := filesystem.FromParameters(map[string]any{"rootdirectory": t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	h := New(Options{Uploads: uploadsession.New(pool, drv), Blobs: metadata.NewBlobs(pool), Manifests: metadata.NewManifests(pool), Driver: drv})
	srv := httptest.NewServer(h)
	defer srv.Close()
	data, d := randomBlob(1<<20 + 17)
	expect(t, "push", do(t, "POST", srv.URL+"/v2/team/app/blobs/uploads/?digest="+d.String(), data), 201, "")

	get := func(remote, local, rng string) *sink {
		t.Helper()
		req := httptest.NewRequest("GET", "/v2/team/app/blobs/"+d.String(), nil)
		req.RemoteAddr = remote
		if local != "" {
			req = req.WithContext(context.WithValue(req.Context(), http.LocalAddrContextKey,
				&net.TCPAddr{IP: net.ParseIP(local), Port: 5000}))
		}
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		s := &sink{hdr: http.Header{}}
		h.ServeHTTP(s, req)
		return s
	}
	for _, c := range []struct {
		name, remote, local string
	}{
		{"loopback", "127.0.0.1:40000", "127.0.0.1"},
		{"IPv6 loopback", "[::1]:40000", "::1"},
		{"this host's own address", "192.0.2.7:40000", "192.0.2.7"},
		{"IPv4-mapped loopback", "[::ffff:127.0.0.1]:40000", ""},
	} {
		s := get(c.remote, c.local, "")
		if s.status != 200 || !bytes.Equal(s.body.Bytes(), data) {
			t.Fatalf("%s: status %d, %d bytes", c.name, s.status, s.body.Len())
		}
		if len(s.readFrom) != 0 {
			t.Fatalf("%s: the body went through ReadFrom (%T), want the server's buffers", c.name, s.readFrom[0])
		}
		if s.maxWrite > 256<<10 {
			t.Fatalf("%s: a write of %d bytes, want at most 256 KiB", c.name, s.maxWrite)
		}
		s = get(c.remote, c.local, "bytes=100-")
		if s.status != 206 || !bytes.Equal(s.body.Bytes(), data[100:]) || len(s.readFrom) != 0 {
			t.Fatalf("%s, ranged: status %d, %d bytes, %d ReadFrom calls", c.name, s.status, s.body.Len(), len(s.readFrom))
		}
	}

	for _, rng := range []string{"", "bytes=100-"} {
		s := get("192.0.2.7:40000", "192.0.2.1", rng)
		if s.status/100 != 2 || s.body.Len() == 0 || !bytes.HasSuffix(data, s.body.Bytes()) {
			t.Fatalf("remote %q: status %d, %d bytes", rng, s.status, s.body.Len())
		}
		// In chunks of 1 MiB (the write deadline is moved between them),
		// each of them the storage file itself.
		if want := (s.body.Len() + 1<<20 - 1) >> 20; len(s.readFrom) != want {
			t.Fatalf("remote %q: %d ReadFrom calls, want %d", rng, len(s.readFrom), want)
		}
		for _, src := range s.readFrom {
			lr, ok := src.(*io.LimitedReader)
			if ok {
				_, ok = lr.R.(*os.File)
			}
			if !ok {
				t.Fatalf("remote %q: ReadFrom got %T, want the storage file (for sendfile)", rng, src)
			}
		}
	}
}

// TestBlobGETToAStalledClientEnds: a client that requests a blob and then
// reads nothing no longer holds the download (and its storage reader) for
// as long as it keeps the connection: the handler ends after WriteIdle.
func TestBlobGETToAStalledClientEnds(t *testing.T) {
	pool := metadatatest.Pool(t)
	drv, err := filesystem.FromParameters(map[string]any{"rootdirectory": t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	h := New(Options{Uploads: uploadsession.New(pool, drv), Blobs: metadata.NewBlobs(pool), Manifests: metadata.NewManifests(pool),
		Driver: drv, WriteIdle: 300 * time.Millisecond})
	ended := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if r.Method == http.MethodGet {
			ended <- struct{}{}
		}
	}))
	defer srv.Close()
	data, d := randomBlob(48 << 20) // more than loopback's socket buffers hold
	expect(t, "push", do(t, "POST", srv.URL+"/v2/team/app/blobs/uploads/?digest="+d.String(), data), 201, "")

	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /v2/team/app/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n", d)
	select { // the client reads nothing; 30 s only bounds the failure
	case <-ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the blob GET is still writing to a client that has read nothing for 30 s")
	}
}
