package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// fakeRegistry: a registry with token auth (like Docker Hub): requests
// without a valid bearer get a challenge; the token endpoint wants Basic
// credentials and hands out a token bound to the requested scope.
type fakeRegistry struct {
	srv           *httptest.Server
	tokenRequests atomic.Int64
	throttle      atomic.Int64 // answer 429 this many more times
	inflight, max atomic.Int64
	hold          atomic.Pointer[chan struct{}] // set: requests wait in the handler until it is closed
	manifest      []byte
	blob          []byte
	corrupt       bool
}

func newFake(t *testing.T) *fakeRegistry {
	f := &fakeRegistry{manifest: []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`), blob: []byte("layer bytes")}
	mux := http.NewServeMux()
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		f.tokenRequests.Add(1)
		if u, p, ok := r.BasicAuth(); !ok || u != "bot" || p != "pw" {
			http.Error(w, "bad credentials", 401)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"token": "tok:" + r.URL.Query().Get("scope")})
	})
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, r *http.Request) {
		n := f.inflight.Add(1)
		defer f.inflight.Add(-1)
		for m := f.max.Load(); n > m && !f.max.CompareAndSwap(m, n); m = f.max.Load() {
		}
		if f.throttle.Add(-1) >= 0 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		if hold := f.hold.Load(); hold != nil {
			<-*hold
		}
		repo := strings.Split(strings.TrimPrefix(r.URL.Path, "/v2/"), "/")[0] + "/" + strings.Split(strings.TrimPrefix(r.URL.Path, "/v2/"), "/")[1]
		if r.Header.Get("Authorization") != "Bearer tok:repository:"+repo+":pull" {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="fake",scope="repository:%s:pull"`, f.srv.URL, repo))
			w.WriteHeader(401)
			return
		}
		switch {
		case strings.HasSuffix(r.URL.Path, "/tags/list"):
			page := map[string][]string{"": {"a", "b"}, "b": {"c"}}[r.URL.Query().Get("last")]
			if r.URL.Query().Get("last") == "" {
				w.Header().Set("Link", fmt.Sprintf(`</v2/%s/tags/list?last=b&n=2>; rel="next"`, repo))
			}
			json.NewEncoder(w).Encode(map[string]any{"name": repo, "tags": page})
		case strings.Contains(r.URL.Path, "/manifests/"):
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Docker-Content-Digest", digest.FromBytes(f.manifest).String())
			w.Write(f.manifest)
		case strings.Contains(r.URL.Path, "/blobs/"):
			b := f.blob
			if f.corrupt {
				b = []byte("layer bytez")
			}
			w.Write(b)
		}
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func TestTokenFlowTagsManifestBlob(t *testing.T) {
	f := newFake(t)
	c := New(Options{URL: f.srv.URL, Username: "bot", Password: "pw"})
	ctx := context.Background()
	tags, err := c.Tags(ctx, "library/nginx")
	if err != nil || strings.Join(tags, ",") != "a,b,c" {
		t.Fatalf("tags over two pages: %v %v", tags, err)
	}
	body, mt, d, err := c.Manifest(ctx, "library/nginx", "a")
	if err != nil || string(body) != string(f.manifest) || mt != "application/vnd.oci.image.manifest.v1+json" || d != digest.FromBytes(f.manifest) {
		t.Fatalf("manifest: %q %s %s %v", body, mt, d, err)
	}
	if _, _, _, err := c.Manifest(ctx, "library/nginx", digest.FromString("other").String()); err == nil || !strings.Contains(err.Error(), "hashing to") {
		t.Fatalf("manifest by a digest it does not have: %v", err)
	}
	rc, err := c.Blob(ctx, "library/nginx", digest.FromBytes(f.blob), int64(len(f.blob)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(got) != string(f.blob) {
		t.Fatalf("blob: %q %v", got, err)
	}
	if n := f.tokenRequests.Load(); n != 1 {
		t.Fatalf("%d token requests for one scope: the token is not cached", n)
	}
	if _, err := c.Tags(ctx, "library/redis"); err != nil || f.tokenRequests.Load() != 2 {
		t.Fatalf("a second scope gets its own token: %v, %d", err, f.tokenRequests.Load())
	}
	f.corrupt = true
	rc, _ = c.Blob(ctx, "library/nginx", digest.FromBytes(f.blob), int64(len(f.blob)))
	if _, err := io.ReadAll(rc); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("corrupt blob read without error: %v", err)
	}
	rc.Close()

	bad := New(Options{URL: f.srv.URL, Username: "bot", Password: "wrong"})
	if _, err := bad.Tags(ctx, "library/nginx"); err == nil || !strings.Contains(err.Error(), "token endpoint: 401") {
		t.Fatalf("wrong credentials: %v", err)
	}
}

func TestThrottlingAndConcurrency(t *testing.T) {
	f := newFake(t)
	c := New(Options{URL: f.srv.URL, Username: "bot", Password: "pw", Concurrency: 2, MaxRetries: 5})
	ctx := context.Background()
	f.throttle.Store(3)
	if _, err := c.Tags(ctx, "library/nginx"); err != nil {
		t.Fatalf("after three 429s: %v", err)
	}
	if c.Throttled.Load() != 3 {
		t.Fatalf("429s waited out: %d", c.Throttled.Load())
	}
	f.throttle.Store(100)
	if _, err := c.Tags(ctx, "library/nginx"); err == nil || !strings.Contains(err.Error(), "429") {
		t.Fatalf("endless 429: %v", err)
	}
	// 10 requests held in the upstream: 2 reach it, the other 8 wait for
	// a slot in the client.
	f.throttle.Store(0)
	f.max.Store(0)
	hold := make(chan struct{})
	f.hold.Store(&hold)
	released := false
	release := func() {
		if !released {
			released = true
			close(hold)
		}
	}
	defer release() // on failure too: the server's Close waits for the held handlers
	done := make(chan error, 10)
	for range 10 {
		go func() { _, _, _, err := c.Manifest(ctx, "library/nginx", "a"); done <- err }()
	}
	for deadline := time.Now().Add(30 * time.Second); f.inflight.Load() != 2 || waitingForSlot() != 8; {
		if n := f.inflight.Load(); n > 2 {
			t.Fatalf("%d requests in the upstream at once with concurrency 2", n)
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s: %d requests in the upstream, %d waiting for a slot; want 2 and 8", f.inflight.Load(), waitingForSlot())
		}
		time.Sleep(time.Millisecond)
	}
	release()
	for range 10 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if m := f.max.Load(); m != 2 {
		t.Fatalf("%d requests in the upstream at once with concurrency 2", m)
	}
}

// waitingForSlot counts the goroutines waiting in send for a request slot
// of a client: blocked in a select with send itself on top of the stack
// (send's other select, a retry's back-off, does not happen here).
func waitingForSlot() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, top, _ := strings.Cut(g, "\n")
		if strings.Contains(header, "[select") && strings.HasPrefix(top, "github.com/gaia-registry/gaia/mirror-sync/upstream.(*Client).send(") {
			n++
		}
	}
	return n
}

func TestParseChallenge(t *testing.T) {
	s, p := parseChallenge(`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push"`)
	if s != "Bearer" || p["realm"] != "https://auth.docker.io/token" || p["service"] != "registry.docker.io" || p["scope"] != "repository:library/nginx:pull,push" {
		t.Fatalf("%s %v", s, p)
	}
	if s, p := parseChallenge(`Basic realm=gaia`); s != "Basic" || p["realm"] != "gaia" {
		t.Fatalf("%s %v", s, p)
	}
	if nextLink(`</v2/x/tags/list?last=b&n=2>; rel="next"`) != "/v2/x/tags/list?last=b&n=2" || nextLink("") != "" {
		t.Fatal("nextLink")
	}
}

// A transfer that stops making progress ends after IdleTimeout, both a
// response body that stops arriving and a request body the server stops
// taking (told by the error, whatever the time it took); a slow but moving
// transfer does not, with a margin no loaded machine closes: a byte every
// tenth of the timeout, longer than the timeout in all.
func TestIdleTimeout(t *testing.T) {
	const slowIdle, slowBody = time.Second, "slow, moving" // 11 gaps: 1.1 timeouts
	stall := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/a/b/blobs/" + digest.FromString("xxxx").String(): // half the body, then nothing
			w.Header().Set("Content-Length", "4")
			w.Write([]byte("xx"))
			w.(http.Flusher).Flush()
			<-stall
		case "/v2/a/b/blobs/" + digest.FromString(slowBody).String(): // a byte every slowIdle/10
			w.Header().Set("Content-Length", fmt.Sprint(len(slowBody)))
			for i := range len(slowBody) {
				if i > 0 {
					time.Sleep(slowIdle / 10)
				}
				w.Write([]byte{slowBody[i]})
				w.(http.Flusher).Flush()
			}
		default: // an upload the server never reads
			<-stall
		}
	}))
	defer srv.Close()
	defer close(stall) // before Close, which waits for the handlers
	c := New(Options{URL: srv.URL, IdleTimeout: 150 * time.Millisecond, MaxRetries: -1})
	ctx := context.Background()

	rc, err := c.Blob(ctx, "a/b", digest.FromString("xxxx"), 4)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = io.ReadAll(rc)
	rc.Close()
	if err == nil || !strings.Contains(err.Error(), "no progress") {
		t.Fatalf("stalled download: %v after %s", err, time.Since(start))
	}

	slow := New(Options{URL: srv.URL, IdleTimeout: slowIdle, MaxRetries: -1})
	rc, err = slow.Blob(ctx, "a/b", digest.FromString(slowBody), int64(len(slowBody)))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(rc); err != nil || string(b) != slowBody {
		t.Fatalf("slow download: %q %v", b, err)
	}
	rc.Close()

	big := strings.NewReader(strings.Repeat("z", 64<<20)) // more than the socket buffers hold
	err = c.PushBlobTo(ctx, "a/b", srv.URL+"/v2/a/b/blobs/uploads/x", digest.FromString("z"), int64(big.Len()), big)
	if err == nil || !strings.Contains(err.Error(), "no progress") {
		t.Fatalf("stalled upload: %v", err)
	}
}

// An upstream with Basic auth (a vendor registry behind htpasswd): the
// client answers the challenge with the rule's credentials, and says so
// clearly when it has none. An upstream without auth needs nothing.
func TestBasicAndAnonymous(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v2/open/") {
			json.NewEncoder(w).Encode(map[string]any{"tags": []string{"free"}})
			return
		}
		if u, p, ok := r.BasicAuth(); !ok || u != "vendor" || p != "secret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="vendor registry"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"tags": []string{"1.0"}})
	}))
	defer srv.Close()
	ctx := context.Background()
	tags, err := New(Options{URL: srv.URL, Username: "vendor", Password: "secret"}).Tags(ctx, "team/app")
	if err != nil || len(tags) != 1 || tags[0] != "1.0" {
		t.Fatalf("Basic: %v %v", tags, err)
	}
	if _, err := New(Options{URL: srv.URL}).Tags(ctx, "team/app"); err == nil || !strings.Contains(err.Error(), "the rule has none") {
		t.Fatalf("Basic without credentials: %v", err)
	}
	if tags, err := New(Options{URL: srv.URL}).Tags(ctx, "open/app"); err != nil || len(tags) != 1 {
		t.Fatalf("anonymous: %v %v", tags, err)
	}
}
