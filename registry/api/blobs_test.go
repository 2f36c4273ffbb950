package api

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
	"github.com/gaia-registry/gaia/registry/uploadsession"
)

// twoServers starts two API servers sharing one database and one storage
// directory, and nothing else.
func twoServers(t *testing.T) (a, b string) {
	t.Helper()
	url := metadatatest.Database(t)
	root := t.TempDir()
	start := func() string {
		pool := metadatatest.Open(t, url)
		drv, err := filesystem.FromParameters(map[string]any{"rootdirectory": root})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(New(Options{Uploads: uploadsession.New(pool, drv), Blobs: metadata.NewBlobs(pool), Manifests: metadata.NewManifests(pool), Driver: drv, Delete: true}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	a, b = start(), start()
	return a, b
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func do(t *testing.T, method, url string, body []byte, header ...string) resp {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, rd)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, b}
}

// errCode returns the first OCI error code of a body, checking its shape.
func errCode(t *testing.T, r resp) string {
	t.Helper()
	var body struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil || len(body.Errors) == 0 || body.Errors[0].Message == "" {
		t.Fatalf("not an OCI error body (%d): %s", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error Content-Type %q", ct)
	}
	return body.Errors[0].Code
}

func expect(t *testing.T, what string, r resp, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: status %d, want %d; body %s", what, r.status, status, r.body)
	}
	if code != "" {
		if got := errCode(t, r); got != code {
			t.Fatalf("%s: code %s, want %s", what, got, code)
		}
	}
}

func randomBlob(n int) ([]byte, digest.Digest) {
	b := make([]byte, n)
	rand.Read(b)
	return b, digest.FromBytes(b)
}

func TestBaseAndErrors(t *testing.T) {
	a, _ := twoServers(t)
	r := do(t, "GET", a+"/v2/", nil)
	if r.status != 200 || r.header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("base: %d %v", r.status, r.header)
	}
	_, d := randomBlob(10)
	expect(t, "unknown blob", do(t, "HEAD", a+"/v2/team/app/blobs/"+d.String(), nil), 404, "")
	expect(t, "unknown blob GET", do(t, "GET", a+"/v2/team/app/blobs/"+d.String(), nil), 404, "BLOB_UNKNOWN")
	expect(t, "bad digest", do(t, "GET", a+"/v2/team/app/blobs/sha256:nothex", nil), 400, "DIGEST_INVALID")
	for _, name := range []string{"Team/app", "team/../app", "team//app", "-app"} {
		expect(t, "name "+name, do(t, "POST", a+"/v2/"+name+"/blobs/uploads/", nil), 400, "NAME_INVALID")
	}
	expect(t, "unknown upload", do(t, "GET", a+"/v2/team/app/blobs/uploads/"+"0b2a3c56-0000-4000-8000-000000000000", nil), 404, "BLOB_UPLOAD_UNKNOWN")
	expect(t, "garbage upload id", do(t, "PATCH", a+"/v2/team/app/blobs/uploads/zzz", []byte("x")), 404, "BLOB_UPLOAD_UNKNOWN")
}

func TestMonolithicAndRanges(t *testing.T) {
	a, b := twoServers(t)
	data, d := randomBlob(1000)
	r := do(t, "POST", a+"/v2/team/app/blobs/uploads/?digest="+d.String(), data, "Content-Type", "application/octet-stream")
	expect(t, "monolithic push", r, 201, "")
	if r.header.Get("Location") != "/v2/team/app/blobs/"+d.String() || r.header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("monolithic headers: %v", r.header)
	}
	r = do(t, "HEAD", b+"/v2/team/app/blobs/"+d.String(), nil)
	if r.status != 200 || r.header.Get("Content-Length") != "1000" || r.header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("HEAD on the other server: %d %v", r.status, r.header)
	}
	if r = do(t, "GET", b+"/v2/team/app/blobs/"+d.String(), nil); r.status != 200 || !bytes.Equal(r.body, data) {
		t.Fatalf("GET: %d, %d bytes", r.status, len(r.body))
	}
	for _, c := range []struct {
		rng        string
		start, end int
	}{{"bytes=10-19", 10, 19}, {"bytes=990-", 990, 999}, {"bytes=-5", 995, 999}, {"bytes=995-5000", 995, 999},
		{"bytes=-5000", 0, 999}, {"Bytes=10-19", 10, 19}, {"bytes=10-19, ", 10, 19},
		{"bytes=5-99999999999999999999", 5, 999}} {
		r = do(t, "GET", a+"/v2/team/app/blobs/"+d.String(), nil, "Range", c.rng)
		want := fmt.Sprintf("bytes %d-%d/1000", c.start, c.end)
		if r.status != 206 || r.header.Get("Content-Range") != want || !bytes.Equal(r.body, data[c.start:c.end+1]) {
			t.Fatalf("Range %s: %d %q, %d bytes", c.rng, r.status, r.header.Get("Content-Range"), len(r.body))
		}
	}
	// Only a valid range that misses the blob is answered 416.
	for _, bad := range []string{"bytes=1000-", "bytes=1000-1001", "bytes=-0", "bytes=1000-,2000-2001", "bytes=99999999999999999999-"} {
		r = do(t, "GET", a+"/v2/team/app/blobs/"+d.String(), nil, "Range", bad)
		expect(t, "Range "+bad, r, 416, "RANGE_INVALID")
		if r.header.Get("Content-Range") != "bytes */1000" {
			t.Fatalf("Range %s: Content-Range %q", bad, r.header.Get("Content-Range"))
		}
	}
	// A Range the server cannot honour as asked is ignored (RFC 9110
	// §14.2): an unknown unit, an invalid spec, several ranges.
	for _, ignored := range []string{"bytes=5-2", "items=1-2", "bytes=1-2,4-5", "bytes=1-2, 2000-", "bytes=+1-2", "bytes=1-2-3", "bytes=-", "bytes=", "bytes 1-2"} {
		for _, method := range []string{"GET", "HEAD"} {
			r = do(t, method, a+"/v2/team/app/blobs/"+d.String(), nil, "Range", ignored)
			if r.status != 200 || r.header.Get("Content-Range") != "" || r.header.Get("Content-Length") != "1000" ||
				(method == "GET" && !bytes.Equal(r.body, data)) {
				t.Fatalf("%s Range %q: %d %v, %d bytes; want 200 and the whole blob", method, ignored, r.status, r.header, len(r.body))
			}
		}
	}
	// The same content pushed with a wrong digest changes nothing.
	_, other := randomBlob(5)
	expect(t, "digest mismatch", do(t, "POST", a+"/v2/team/app/blobs/uploads/?digest="+other.String(), data), 400, "DIGEST_INVALID")
	expect(t, "nothing stored under the wrong digest", do(t, "GET", a+"/v2/team/app/blobs/"+other.String(), nil), 404, "BLOB_UNKNOWN")
}

// TestChunkedAcrossServers: POST on A, chunks on A and B (one out of
// order, one streamed), status and PUT on the other server.
func TestChunkedAcrossServers(t *testing.T) {
	a, b := twoServers(t)
	data, d := randomBlob(300_000)
	r := do(t, "POST", a+"/v2/team/app/blobs/uploads/", nil)
	expect(t, "start", r, 202, "")
	loc := r.header.Get("Location")
	if !strings.HasPrefix(loc, "/v2/team/app/blobs/uploads/") || r.header.Get("Range") != "0-0" {
		t.Fatalf("start headers: %v", r.header)
	}
	r = do(t, "PATCH", a+loc, data[:100_000], "Content-Range", "0-99999", "Content-Type", "application/octet-stream")
	expect(t, "chunk 1 on A", r, 202, "")
	if r.header.Get("Range") != "0-99999" {
		t.Fatalf("Range after chunk 1: %q", r.header.Get("Range"))
	}
	r = do(t, "PATCH", b+loc, data[150_000:200_000], "Content-Range", "150000-199999")
	expect(t, "out-of-order chunk", r, 416, "RANGE_INVALID")
	if r.header.Get("Range") != "0-99999" || r.header.Get("Location") != loc {
		t.Fatalf("416 headers: %v", r.header)
	}
	expect(t, "Content-Range vs length", do(t, "PATCH", b+loc, data[100_000:100_010], "Content-Range", "100000-100099"), 416, "RANGE_INVALID")
	expect(t, "chunk 2 on B", do(t, "PATCH", b+loc, data[100_000:200_000], "Content-Range", "100000-199999"), 202, "")
	expect(t, "streamed chunk on A", do(t, "PATCH", a+loc, data[200_000:250_000]), 202, "")
	r = do(t, "GET", b+loc, nil)
	if r.status != 204 || r.header.Get("Range") != "0-249999" {
		t.Fatalf("status on B: %d %v", r.status, r.header)
	}
	r = do(t, "PUT", b+loc+"?digest="+d.String(), data[250_000:], "Content-Range", "250000-299999")
	expect(t, "final PUT on B", r, 201, "")
	if r = do(t, "GET", a+"/v2/team/app/blobs/"+d.String(), nil); r.status != 200 || !bytes.Equal(r.body, data) {
		t.Fatalf("blob after chunked push: %d, equal %v", r.status, bytes.Equal(r.body, data))
	}
	expect(t, "session ended", do(t, "GET", a+loc, nil), 404, "BLOB_UPLOAD_UNKNOWN")
}

func TestMountCancelDelete(t *testing.T) {
	a, b := twoServers(t)
	data, d := randomBlob(2000)
	expect(t, "push", do(t, "POST", a+"/v2/src/app/blobs/uploads/?digest="+d.String(), data), 201, "")

	r := do(t, "POST", b+"/v2/dst/app/blobs/uploads/?mount="+d.String()+"&from=src/app", nil)
	expect(t, "mount from src", r, 201, "")
	if r.header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("mount headers: %v", r.header)
	}
	expect(t, "mounted blob", do(t, "HEAD", a+"/v2/dst/app/blobs/"+d.String(), nil), 200, "")
	// Not in `from`: falls back to a new upload session.
	expect(t, "mount from a repository without it", do(t, "POST", a+"/v2/x/app/blobs/uploads/?mount="+d.String()+"&from=nowhere/app", nil), 202, "")
	// No `from`: anonymous mount of a blob the registry holds.
	expect(t, "anonymous mount", do(t, "POST", a+"/v2/y/app/blobs/uploads/?mount="+d.String(), nil), 201, "")

	r = do(t, "POST", a+"/v2/src/app/blobs/uploads/", nil)
	loc := r.header.Get("Location")
	do(t, "PATCH", a+loc, []byte("partial"))
	expect(t, "cancel", do(t, "DELETE", b+loc, nil), 204, "")
	expect(t, "cancelled upload", do(t, "PATCH", a+loc, []byte("more")), 404, "BLOB_UPLOAD_UNKNOWN")

	expect(t, "delete blob from dst", do(t, "DELETE", a+"/v2/dst/app/blobs/"+d.String(), nil), 202, "")
	expect(t, "deleted from dst", do(t, "HEAD", b+"/v2/dst/app/blobs/"+d.String(), nil), 404, "")
	expect(t, "still in src", do(t, "HEAD", b+"/v2/src/app/blobs/"+d.String(), nil), 200, "")
	expect(t, "delete again", do(t, "DELETE", a+"/v2/dst/app/blobs/"+d.String(), nil), 404, "BLOB_UNKNOWN")
}

// newHandler is a Handler on a database and a storage directory of its own.
func newHandler(t *testing.T) *Handler {
	t.Helper()
	pool := metadatatest.Open(t, metadatatest.Database(t))
	drv, err := filesystem.FromParameters(map[string]any{"rootdirectory": t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return New(Options{Uploads: uploadsession.New(pool, drv), Blobs: metadata.NewBlobs(pool), Manifests: metadata.NewManifests(pool), Driver: drv})
}

// A mount without `from` links only from repositories the caller may pull
// (a token's pull scopes, set by the auth middleware through
// WithPullable); otherwise it opens an upload, revealing nothing.
func TestMountWithoutFromNeedsPull(t *testing.T) {
	h := newHandler(t)
	// What a token granting pull,push on team/app and pull on team/base
	// (but only push on team/other) leaves in the context.
	scoped := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(WithPullable(r.Context(), func(repo string) bool { return repo == "team/app" || repo == "team/base" })))
	}))
	t.Cleanup(scoped.Close)
	open := httptest.NewServer(h) // no auth (or htpasswd): every repository
	t.Cleanup(open.Close)

	secret, sd := randomBlob(1000)
	expect(t, "push the private blob", do(t, "POST", open.URL+"/v2/private/team/blobs/uploads/?digest="+sd.String(), secret), 201, "")
	base, bd := randomBlob(1000)
	expect(t, "push the base blob", do(t, "POST", open.URL+"/v2/team/base/blobs/uploads/?digest="+bd.String(), base), 201, "")
	expect(t, "push it elsewhere too", do(t, "POST", open.URL+"/v2/team/other/blobs/uploads/?digest="+sd.String(), secret), 201, "")

	r := do(t, "POST", scoped.URL+"/v2/team/app/blobs/uploads/?mount="+sd.String(), nil)
	expect(t, "mount of a blob only in repositories the token may not pull", r, 202, "")
	if r.header.Get("Location") == "" || r.header.Get("Docker-Upload-UUID") == "" {
		t.Fatalf("the refused mount opened no upload: %v", r.header)
	}
	expect(t, "not linked", do(t, "HEAD", open.URL+"/v2/team/app/blobs/"+sd.String(), nil), 404, "")
	expect(t, "mount from a pullable repository", do(t, "POST", scoped.URL+"/v2/team/app/blobs/uploads/?mount="+bd.String(), nil), 201, "")
	expect(t, "linked", do(t, "HEAD", open.URL+"/v2/team/app/blobs/"+bd.String(), nil), 200, "")
	// With `from` (auth checked pull there), as before.
	expect(t, "mount with from", do(t, "POST", scoped.URL+"/v2/team/app/blobs/uploads/?mount="+sd.String()+"&from=private/team", nil), 201, "")
	// Without a grant in the context, every repository.
	expect(t, "open mount", do(t, "POST", open.URL+"/v2/y/app/blobs/uploads/?mount="+sd.String(), nil), 201, "")
}
