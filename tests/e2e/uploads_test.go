package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/tests/harness"
)

// trickle is a request body that sends size bytes, 1 KiB a second, until
// its context ends.
type trickle struct {
	ctx  context.Context
	sent int
	tick *time.Ticker
}

func (tr *trickle) Read(p []byte) (int, error) {
	if tr.sent > 0 {
		select {
		case <-tr.ctx.Done():
			return 0, tr.ctx.Err()
		case <-tr.tick.C:
		}
	}
	n := min(len(p), 1024)
	for i := range p[:n] {
		p[i] = 'x'
	}
	tr.sent += n
	return n, nil
}

// maxConns4 gives a server config a pool of four PostgreSQL connections.
func maxConns4(cfg string) string {
	return strings.Replace(cfg, "migrate: true}", "migrate: true, maxconns: 4}", 1)
}

// pushSmallImage puts a one-layer image by tag through plain HTTP and
// returns the manifest's digest.
func pushSmallImage(t *testing.T, base, repo, tag string) digest.Digest {
	t.Helper()
	m := pushSmallImageBlobs(t, base, repo)
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/"+repo+"/manifests/"+tag, strings.NewReader(m))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("manifest PUT: %v %v", resp, err)
	}
	resp.Body.Close()
	return digest.FromString(m)
}

// pushSmallImageBlobs pushes a one-layer image's blobs and returns its
// manifest, not yet put.
func pushSmallImageBlobs(t *testing.T, base, repo string) string {
	t.Helper()
	layer := pushBlob(t, base, repo, []byte("layer of "+repo))
	config := pushBlob(t, base, repo, []byte(`{"architecture":"amd64","os":"linux"}`))
	m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]}`,
		config, len(`{"architecture":"amd64","os":"linux"}`), layer, len("layer of "+repo))
	return m
}

// TestTrickledUploadsLeaveServerResponsive: a server with a pool of four
// PostgreSQL connections and 200 uploads whose bodies trickle in at
// 1 KiB/s stays ready and answers manifest GETs and new pushes: no upload
// holds a connection while its body streams. (Before, the first four
// chunks pinned the whole pool: /readyz failed and everything else hung.)
func TestTrickledUploadsLeaveServerResponsive(t *testing.T) {
	addr := harness.FreeAddr(t)
	reg := harness.StartRegistry(t, addr, maxConns4(harness.RegistryConfig(addr, harness.NewDatabase(t), t.TempDir())))
	base := reg.URL()
	manifest := pushSmallImage(t, base, "app/one", "v1")

	const uploads = 200
	ctx, stop := context.WithCancel(context.Background())
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: uploads}}
	// Every wait is bounded; a healthy server answers these at once.
	bounded := &http.Client{Timeout: 30 * time.Second, Transport: client.Transport}
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	for i := range uploads {
		resp, err := bounded.Post(base+"/v2/trickle/blobs/uploads/", "", nil)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("upload %d POST, %d bodies trickling: %v %v", i, i, resp, err)
		}
		resp.Body.Close()
		loc := resp.Header.Get("Location")
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPatch, base+loc, &trickle{ctx: ctx, tick: tick})
			req.Header.Set("Content-Type", "application/octet-stream")
			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	// Every PATCH is in the server, its body streaming.
	waitUntil(t, "200 PATCHes in flight", func() bool {
		return harness.Metric(t, base, "gaia_registry_http_requests_in_flight", `method="PATCH"`) >= uploads
	})

	check := func(what string, req *http.Request, want int) {
		t.Helper()
		resp, err := bounded.Do(req)
		if err != nil {
			t.Fatalf("%s while %d uploads trickle: %v", what, uploads, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s while %d uploads trickle: %d %s; want %d", what, uploads, resp.StatusCode, body, want)
		}
	}
	ready, _ := http.NewRequest(http.MethodGet, base+"/readyz", nil)
	check("/readyz", ready, http.StatusOK)
	get, _ := http.NewRequest(http.MethodGet, base+"/v2/app/one/manifests/v1", nil)
	get.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	check("manifest GET", get, http.StatusOK)
	byDigest, _ := http.NewRequest(http.MethodHead, base+"/v2/app/one/manifests/"+manifest.String(), nil)
	byDigest.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	check("manifest HEAD by digest", byDigest, http.StatusOK)
	data := bytes.Repeat([]byte("z"), 100_000)
	put, _ := http.NewRequest(http.MethodPost, base+"/v2/other/blobs/uploads/?digest="+digest.FromBytes(data).String(), bytes.NewReader(data))
	put.Header.Set("Content-Type", "application/octet-stream")
	check("a new monolithic push", put, http.StatusCreated)
	catalog, _ := http.NewRequest(http.MethodGet, base+"/v2/_catalog", nil)
	check("_catalog", catalog, http.StatusOK)
}

// TestConcurrentDockerPushesThroughGateway: 50 docker pushes of different
// multi-layer images at once through an IDC's gateway, to two servers with
// four PostgreSQL connections each: every push succeeds, every tag names
// the digest docker computed, and every recorded blob hashes right in
// storage.
func TestConcurrentDockerPushesThroughGateway(t *testing.T) {
	env := harness.Start(t, harness.Dockerd)
	c := startClusterWith(t, func(_ *cluster, cfg string) string { return maxConns4(cfg) }, "idc-a")
	// The servers' pools: four connections each.
	for _, s := range c.servers["idc-a"] {
		if n := harness.Metric(t, s.URL(), "gaia_registry_db_pool_max_connections"); n != 4 {
			t.Fatalf("server %s pool: %.0f connections; want 4 (maxConns4 no longer matches the config)", s.Addr, n)
		}
	}
	gw := c.gwAddr["idc-a"]
	const pushes = 50
	refs := make([]string, pushes)
	var build sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i := range pushes {
		refs[i] = fmt.Sprintf("%s/many/app%02d:v1", gw, i)
		build.Add(1)
		go func() {
			defer build.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			harness.BuildImage(t, env, refs[i], 300_000+i, 50_000+i)
		}()
	}
	build.Wait()
	if t.Failed() {
		t.FailNow()
	}
	errs := make([]error, pushes)
	var wg sync.WaitGroup
	for i, ref := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = harness.DockerErr(env, "push", ref)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("push %s: %v", refs[i], err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	for _, ref := range refs {
		pushed := harness.Docker(t, env, "image", "inspect", "-f", "{{index .RepoDigests 0}}", ref)
		want := pushed[strings.Index(pushed, "@")+1:]
		repo := strings.TrimPrefix(ref[:strings.LastIndex(ref, ":")], gw+"/")
		req, _ := http.NewRequest(http.MethodHead, "http://"+gw+"/v2/"+repo+"/manifests/v1", nil)
		req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Docker-Content-Digest"); resp.StatusCode != 200 || got != want {
			t.Errorf("%s: registry has %d %s; docker pushed %s", ref, resp.StatusCode, got, want)
		}
		harness.Docker(t, env, "rmi", ref)
	}
	verifyStorage(t, c.db, fsBlobs(c.storage["idc-a"]))
}
