package gateway

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gaia-registry/gaia/registry/blobsign"
	"github.com/gaia-registry/gaia/registry/internaltoken"
)

const testKey = "0123456789abcdef-test"

// cacheUpstream answers manifests by digest and tag and blob HEADs,
// counting what reaches it.
type cacheUpstream struct {
	manifest []byte
	dgst     digest.Digest
	hits     sync.Map // method+path → *atomic.Int64
	release  chan struct{}
}

func (f *cacheUpstream) count(method, path string) int64 {
	v, ok := f.hits.Load(method + " " + path)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

func (f *cacheUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	v, _ := f.hits.LoadOrStore(r.Method+" "+r.URL.Path, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	if f.release != nil {
		<-f.release
	}
	switch {
	case strings.HasSuffix(r.URL.Path, "/manifests/"+f.dgst.String()), strings.HasSuffix(r.URL.Path, "/manifests/v1"):
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", f.dgst.String())
		w.Write(f.manifest)
	case strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodHead:
		w.Header().Set("Content-Length", "1234")
		w.Header().Set("Docker-Content-Digest", strings.TrimPrefix(r.URL.Path[strings.LastIndex(r.URL.Path, "/"):], "/"))
	case r.Method == http.MethodDelete:
		w.WriteHeader(http.StatusAccepted)
	default:
		http.NotFound(w, r)
	}
}

func cachingGateway(t *testing.T, f *cacheUpstream, maxBytes int64) (*Gateway, string) {
	cfg := testConfig("local")
	cfg.Redirect = "blobs"
	cfg.Signing.Keys = blobsign.Keys{testKey}
	cfg.Signing.Expiry = time.Minute
	cfg.Auth.None = true
	cfg.Cache.MaxBytes = maxBytes
	g := New(cfg, quiet())
	g.SetUpstreams([]*Upstream{upstreamOf(t, "s1", "idc-a", f)})
	g.cache.setLive(true) // as when listening
	return g, serve(t, g)
}

func do(t *testing.T, method, u string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, u, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// Manifests by digest are answered from the cache after one upstream
// request; tags always go upstream; an Accept that does not list the
// media type is proxied; a deletion (heard, or through this gateway)
// drops the entry.
func TestCacheManifests(t *testing.T) {
	m := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	f := &cacheUpstream{manifest: m, dgst: digest.FromBytes(m)}
	g, base := cachingGateway(t, f, 1<<20)
	path := "/v2/lib/app/manifests/" + f.dgst.String()
	for i := range 3 {
		resp, body := do(t, http.MethodGet, base+path)
		if resp.StatusCode != 200 || body != string(m) || resp.Header.Get("Docker-Content-Digest") != f.dgst.String() {
			t.Fatalf("GET %d: %d %q %v", i, resp.StatusCode, body, resp.Header)
		}
		if want := map[bool]string{true: "miss", false: "hit"}[i == 0]; resp.Header.Get("X-Gaia-Cache") != want {
			t.Fatalf("GET %d: cache %q, want %q", i, resp.Header.Get("X-Gaia-Cache"), want)
		}
	}
	if resp, body := do(t, http.MethodHead, base+path); resp.StatusCode != 200 || body != "" || resp.Header.Get("X-Gaia-Cache") != "hit" {
		t.Fatalf("HEAD: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if n := f.count(http.MethodGet, path); n != 1 {
		t.Fatalf("%d upstream GETs for a cached manifest", n)
	}
	// Tags are never cached.
	for range 3 {
		do(t, http.MethodGet, base+"/v2/lib/app/manifests/v1")
	}
	if n := f.count(http.MethodGet, "/v2/lib/app/manifests/v1"); n != 3 {
		t.Fatalf("%d upstream GETs for 3 by tag", n)
	}
	// Another repository is another entry.
	do(t, http.MethodGet, base+"/v2/lib/other/manifests/"+f.dgst.String())
	if n := f.count(http.MethodGet, "/v2/lib/other/manifests/"+f.dgst.String()); n != 1 {
		t.Fatalf("another repository: %d upstream GETs", n)
	}
	// An Accept without the media type goes to the server.
	if resp, _ := do(t, http.MethodGet, base+path, "Accept", "application/vnd.docker.distribution.manifest.v2+json"); resp.Header.Get("X-Gaia-Cache") != "" {
		t.Fatalf("unacceptable media type served from the cache: %v", resp.Header)
	}
	// A deletion notice drops it.
	g.cache.heard("manifest lib/app@" + f.dgst.String())
	if resp, _ := do(t, http.MethodGet, base+path); resp.Header.Get("X-Gaia-Cache") != "miss" {
		t.Fatalf("after a deletion notice: cache %q", resp.Header.Get("X-Gaia-Cache"))
	}
	// A DELETE through this gateway drops it at once.
	do(t, http.MethodDelete, base+path)
	if resp, _ := do(t, http.MethodGet, base+path); resp.Header.Get("X-Gaia-Cache") != "miss" {
		t.Fatalf("after a DELETE: cache %q", resp.Header.Get("X-Gaia-Cache"))
	}
	// Not listening: not cached.
	g.cache.setLive(false)
	do(t, http.MethodGet, base+path)
	if resp, _ := do(t, http.MethodGet, base+path); resp.Header.Get("X-Gaia-Cache") == "hit" {
		t.Fatal("served from the cache while not listening for deletions")
	}
}

// Concurrent misses of one manifest make one upstream request.
func TestCacheCoalescesMisses(t *testing.T) {
	m := []byte(`{"schemaVersion":2}`)
	f := &cacheUpstream{manifest: m, dgst: digest.FromBytes(m), release: make(chan struct{})}
	_, base := cachingGateway(t, f, 1<<20)
	path := "/v2/lib/app/manifests/" + f.dgst.String()
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, body := do(t, http.MethodGet, base+path); resp.StatusCode != 200 || body != string(m) {
				t.Errorf("%d %q", resp.StatusCode, body)
			}
		}()
	}
	for f.count(http.MethodGet, path) == 0 {
		time.Sleep(time.Millisecond)
	}
	close(f.release)
	wg.Wait()
	if n := f.count(http.MethodGet, path); n != 1 {
		t.Fatalf("16 concurrent misses made %d upstream requests", n)
	}
}

// The cache stays within maxbytes, dropping the least recently used.
func TestCacheBounded(t *testing.T) {
	f := &cacheUpstream{dgst: digest.FromString("x")}
	g, base := cachingGateway(t, f, 8*entryOverhead)
	for i := range 50 {
		do(t, http.MethodHead, base+"/v2/lib/app/blobs/"+digest.FromString(strings.Repeat("b", i+1)).String())
	}
	// Blob HEADs are cached whatever the Accept header says.
	d := "/v2/lib/app/blobs/" + digest.FromString("b").String()
	do(t, http.MethodHead, base+d, "Accept", "application/vnd.oci.image.manifest.v1+json")
	if resp, _ := do(t, http.MethodHead, base+d, "Accept", "application/vnd.oci.image.manifest.v1+json"); resp.Header.Get("X-Gaia-Cache") != "hit" || resp.Header.Get("Content-Length") != "1234" {
		t.Fatalf("blob HEAD with an Accept header: %v", resp.Header)
	}
	bytes, entries, _ := g.cache.stats()
	if bytes > 8*entryOverhead || entries == 0 || entries >= 50 {
		t.Fatalf("cache holds %d bytes in %d entries, bound %d", bytes, entries, 8*entryOverhead)
	}
	if metric(t, base, `gaia_gateway_cache_evictions_total{reason="size"}`) <= 0 {
		t.Fatal("no evictions counted")
	}
}

// A fill that was under way when a deletion was heard does not store
// its answer.
func TestCacheFillRacingDeletion(t *testing.T) {
	c := newCache(1<<20, newMetrics(prometheus.NewRegistry(), &Gateway{}), quiet())
	c.setLive(true)
	epoch, live := c.begin()
	c.heard("manifest lib/app@sha256:aa")
	c.put(&entry{key: manifestKey("lib/app", "sha256:aa"), status: 200}, epoch)
	if !live || c.get(manifestKey("lib/app", "sha256:aa")) != nil {
		t.Fatal("a fill older than a deletion was stored")
	}
}

// A blob GET gets a 307 to a signed URL on the server, which verifies.
func TestRedirectSigned(t *testing.T) {
	f := &cacheUpstream{}
	_, base := cachingGateway(t, f, 1<<20)
	d := digest.FromString("blob")
	resp, _ := do(t, http.MethodGet, base+"/v2/lib/app/blobs/"+d.String())
	if resp.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("blob GET: %d", resp.StatusCode)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Path != "/v2/lib/app/blobs/"+d.String() || strings.HasPrefix(base, "http://"+loc.Host) {
		t.Fatalf("Location %q", resp.Header.Get("Location"))
	}
	if _, err := blobsign.Verify(blobsign.Keys{testKey}, loc.Query(), http.MethodGet, "lib/app", d.String(), time.Now()); err != nil {
		t.Fatalf("the signature: %v", err)
	}
	if f.count(http.MethodGet, loc.Path) != 0 {
		t.Fatal("the redirect asked the server")
	}
}

// redirectingGateway serves a gateway with redirect: blobs in front of u.
func redirectingGateway(t *testing.T, u *Upstream) string {
	cfg := testConfig("local")
	cfg.Redirect = "blobs"
	cfg.Signing.Keys = blobsign.Keys{testKey}
	cfg.Auth.None = true
	g := New(cfg, quiet())
	g.SetUpstreams([]*Upstream{u})
	return serve(t, g)
}

// A peer IDC's read with the internal token is proxied, not redirected:
// the servers check the token.
func TestInternalTokenProxied(t *testing.T) {
	var got atomic.Value
	u := upstreamOf(t, "s1", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get(internaltoken.Header))
		w.Write([]byte("bytes"))
	}))
	resp, body := do(t, http.MethodGet, redirectingGateway(t, u)+"/v2/lib/app/blobs/"+digest.FromString("x").String(), internaltoken.Header, "tok")
	if resp.StatusCode != 200 || body != "bytes" || got.Load() != "tok" {
		t.Fatalf("%d %q, server got token %v", resp.StatusCode, body, got.Load())
	}
}

// A peer IDC's copy as a robot (a Bearer token and the no-fill header) is
// proxied, not redirected: a redirect would point another IDC at a server
// inside this one.
func TestPeerCopyProxied(t *testing.T) {
	var got atomic.Value
	u := upstreamOf(t, "s1", "idc-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get(internaltoken.NoFillHeader) + " " + r.Header.Get("Authorization"))
		w.Write([]byte("bytes"))
	}))
	resp, body := do(t, http.MethodGet, redirectingGateway(t, u)+"/v2/lib/app/blobs/"+digest.FromString("x").String(),
		internaltoken.NoFillHeader, "1", "Authorization", "Bearer robot-token")
	if resp.StatusCode != 200 || body != "bytes" || got.Load() != "1 Bearer robot-token" {
		t.Fatalf("%d %q, server got %v", resp.StatusCode, body, got.Load())
	}
}
