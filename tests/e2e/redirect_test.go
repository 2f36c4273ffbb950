package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"

	"github.com/gaia-registry/gaia/registry/blobsign"
	"github.com/gaia-registry/gaia/tests/harness"
)

const redirectKey = "e2e-signing-key-0123456789"

// redirectCluster is one IDC of two servers with htpasswd auth and
// signing keys, and two gateways with redirect: blobs and a cache.
type redirectCluster struct {
	*cluster
	gw      [2]*harness.Registry
	gwAddr  [2]string
	auth    string // the user:password every client uses
	authHdr string // its Authorization header
}

func startRedirectCluster(t *testing.T) *redirectCluster { return startRedirectClusterMode(t, "blobs") }

func startRedirectClusterMode(t *testing.T, mode string) *redirectCluster {
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	os.WriteFile(htpasswd, []byte("puller:"+string(hash)+"\n"), 0o600)
	authYAML := fmt.Sprintf("auth: {htpasswd: {realm: gaia-e2e, path: %q}}\n", htpasswd)
	c := startClusterWith(t, func(_ *cluster, cfg string) string {
		return strings.Replace(cfg, "cluster:\n", fmt.Sprintf("cluster:\n  signingkeys: [%q]\n", redirectKey), 1) + authYAML
	}, "idc-a")
	rc := &redirectCluster{cluster: c, auth: "puller:s3cret",
		authHdr: "Basic " + base64.StdEncoding.EncodeToString([]byte("puller:s3cret"))}
	for i := range rc.gw {
		addr := harness.FreeAddr(t)
		rc.gwAddr[i] = addr
		rc.gw[i] = harness.StartGateway(t, addr, gatewayConfig(c, "idc-a", addr, "local")+authYAML+fmt.Sprintf(`redirect: %s
signing: {keys: [%q]}
cache: {maxbytes: 8388608}
database: {url: %q}
`, mode, redirectKey, c.db))
	}
	// The caches are live once the gateways listen for deletions.
	for i := range rc.gw {
		waitUntil(t, "gateway cache live", func() bool {
			return harness.Metric(t, rc.gw[i].URL(), "gaia_gateway_cache_live") == 1
		})
	}
	return rc
}

// dockerConfig writes a docker config with credentials for hosts (read
// by docker --config and by crane through DOCKER_CONFIG).
func dockerConfig(t *testing.T, user string, hosts ...string) string {
	dir := t.TempDir()
	auths := map[string]any{}
	for _, h := range hosts {
		auths[h] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user))}
	}
	b, _ := json.Marshal(map[string]any{"auths": auths})
	os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600)
	return dir
}

// manifestOf fetches a manifest through base with credentials.
func manifestOf(t *testing.T, base, authHdr, repo, ref string) (digest.Digest, []digest.Digest, []int64) {
	req, _ := http.NewRequest(http.MethodGet, base+"/v2/"+repo+"/manifests/"+ref, nil)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	req.Header.Set("Authorization", authHdr)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var m struct {
		Config struct {
			Digest digest.Digest
			Size   int64
		}
		Layers []struct {
			Digest digest.Digest
			Size   int64
		}
	}
	if err := json.Unmarshal(body, &m); err != nil || resp.StatusCode != 200 {
		t.Fatalf("manifest %s:%s: %d %v", repo, ref, resp.StatusCode, err)
	}
	blobs, sizes := []digest.Digest{m.Config.Digest}, []int64{m.Config.Size}
	for _, l := range m.Layers {
		blobs, sizes = append(blobs, l.Digest), append(sizes, l.Size)
	}
	return digest.FromBytes(body), blobs, sizes
}

var noFollow = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// TestGatewayRedirectRealClients: with redirect: blobs, docker, ctr,
// skopeo and crane each pull a multi-layer image through the gateway
// (servers and gateway with htpasswd auth): every blob GET is answered
// with a redirect to a server, the servers accept the signatures, and the
// gateway's byte counters show no blob passed through it.
func TestGatewayRedirectRealClients(t *testing.T) {
	env := harness.Start(t, harness.Dockerd)
	rc := startRedirectCluster(t)
	gw := rc.gwAddr[0]
	cfgDir := dockerConfig(t, rc.auth, gw)
	docker := func(args ...string) string {
		t.Helper()
		out, err := harness.DockerErr(env, append([]string{"--config", cfgDir}, args...)...)
		if err != nil {
			t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	ref := gw + "/redirect/app:v1"
	harness.BuildImage(t, env, ref, 1<<20+17, 2<<20+5, 300_000)
	docker("push", ref)
	docker("rmi", ref)
	_, blobs, sizes := manifestOf(t, "http://"+gw, rc.authHdr, "redirect/app", "v1")
	smallest := sizes[0]
	var total int64
	for _, s := range sizes {
		smallest = min(smallest, s)
		total += s
	}
	t.Logf("image: %d blobs, %d bytes, the smallest %d", len(blobs), total, smallest)

	out := func() float64 {
		return harness.Metric(t, rc.gw[0].URL(), "gaia_gateway_bytes_total", `direction="out"`)
	}
	blobOut := func() float64 { return harness.Metric(t, rc.gw[0].URL(), "gaia_gateway_blob_bytes_total") }
	redirects := func() float64 { return harness.Metric(t, rc.gw[0].URL(), "gaia_gateway_redirects_total") }
	accepted := func() float64 {
		return rc.sum(t, "idc-a", "gaia_registry_signed_requests_total", `outcome="accepted"`)
	}
	crane := harness.GoTool(t, "github.com/google/go-containerregistry/cmd/crane", "v0.22.1")
	ctrSock := filepath.Join(filepath.Dir(strings.TrimPrefix(env["GAIA_TEST_DOCKER_HOST"], "unix://")), "exec", "containerd", "containerd.sock")
	ctrNS := fmt.Sprintf("gaia-e2e-redirect-%d", time.Now().UnixNano())

	pulls := []struct {
		client string
		pull   func()
	}{
		{"docker", func() {
			docker("pull", ref)
			if got := docker("run", "--rm", "--network", "none", ref, "/bin/sh", "-c", "ls /data"); got != "layer0.bin\nlayer1.bin\nlayer2.bin" {
				t.Fatalf("image pulled by docker: %q", got)
			}
			docker("rmi", ref)
		}},
		{"ctr", func() {
			if o, err := run("ctr", "--address", ctrSock, "-n", ctrNS, "images", "pull", "--plain-http", "--user", rc.auth, ref); err != nil {
				t.Fatalf("ctr pull: %v\n%s", err, o)
			}
			run("ctr", "--address", ctrSock, "-n", ctrNS, "images", "rm", "--sync", ref)
		}},
		{"skopeo", func() {
			skopeo(t, "copy", "--src-tls-verify=false", "--src-creds", rc.auth, "docker://"+ref, "dir:"+t.TempDir())
		}},
		{"crane", func() {
			cmd := exec.Command(crane, "pull", "--insecure", "--format", "oci", ref, t.TempDir())
			cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+cfgDir)
			if o, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("crane pull: %v\n%s", err, o)
			}
		}},
	}
	for _, p := range pulls {
		o0, r0, a0, b0 := out(), redirects(), accepted(), blobOut()
		p.pull()
		o1, r1, a1, b1 := out(), redirects(), accepted(), blobOut()
		t.Logf("%s: %v redirects, %v signed GETs accepted by servers, %v bytes out of the gateway, %v of them blob bytes", p.client, r1-r0, a1-a0, o1-o0, b1-b0)
		if b1 != b0 {
			t.Errorf("%s: %v blob bytes passed through the gateway", p.client, b1-b0)
		}
		if r1-r0 < float64(len(blobs)-1) || a1-a0 < r1-r0 {
			t.Errorf("%s pulled %d blobs with %v redirects, %v signed GETs accepted", p.client, len(blobs), r1-r0, a1-a0)
		}
		if o1-o0 >= float64(smallest) {
			t.Errorf("%s: %v bytes came out of the gateway, at least a blob's (the smallest is %d bytes)", p.client, o1-o0, smallest)
		}
	}
}

// TestGatewaySignedURLs: a gateway's signed URL serves its blob without
// credentials, and any change makes it 401 with the spec's error body:
// each field, another digest, another repository, another method, and
// expiry.
func TestGatewaySignedURLs(t *testing.T) {
	rc := startRedirectClusterMode(t, "blobs+uploads")
	gw := "http://" + rc.gwAddr[0]
	layerA, layerB := harness.Layer(1, 300_000), harness.Layer(2, 200_000)
	dA := pushBlobAuth(t, gw, rc.authHdr, "signed/app", layerA)
	dB := pushBlobAuth(t, gw, rc.authHdr, "signed/app", layerB)
	pushBlobAuth(t, gw, rc.authHdr, "signed/other", layerA)

	// Without credentials the gateway refuses to redirect.
	if resp, err := noFollow.Get(gw + "/v2/signed/app/blobs/" + dA.String()); err != nil || resp.StatusCode != 401 {
		t.Fatalf("blob GET without credentials: %v %v", resp.StatusCode, err)
	}
	req, _ := http.NewRequest(http.MethodGet, gw+"/v2/signed/app/blobs/"+dA.String(), nil)
	req.Header.Set("Authorization", rc.authHdr)
	resp, err := noFollow.Do(req)
	if err != nil || resp.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("blob GET through the gateway: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Host == rc.gwAddr[0] {
		t.Fatalf("Location %q", resp.Header.Get("Location"))
	}
	get := func(method, u string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, u, nil) // no credentials
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if code, b := get(http.MethodGet, loc.String()); code != 200 || digest.FromBytes(b) != dA {
		t.Fatalf("the signed URL: %d, %d bytes", code, len(b))
	}
	with := func(f func(q url.Values)) string {
		u := *loc
		q := u.Query()
		f(q)
		u.RawQuery = q.Encode()
		return u.String()
	}
	refused := map[string]string{
		"signature changed": with(func(q url.Values) {
			s := []byte(q.Get(blobsign.ParamSig))
			s[0] ^= 1
			q.Set(blobsign.ParamSig, string(s))
		}),
		"expiry changed":       with(func(q url.Values) { q.Set(blobsign.ParamExp, q.Get(blobsign.ParamExp)+"0") }),
		"identity changed":     with(func(q url.Values) { q.Set(blobsign.ParamID, "someone-else") }),
		"identity removed":     with(func(q url.Values) { q.Del(blobsign.ParamID) }),
		"signature removed":    with(func(q url.Values) { q.Del(blobsign.ParamSig) }),
		"another digest":       strings.Replace(loc.String(), dA.String(), dB.String(), 1),
		"another repository":   strings.Replace(loc.String(), "/signed/app/", "/signed/other/", 1),
		"a manifest path":      strings.Replace(loc.String(), "/blobs/", "/manifests/", 1),
		"expired (signed now)": "http://" + loc.Host + loc.Path + "?" + blobsign.Sign(blobsign.Keys{redirectKey}, "GET", "signed/app", dA.String(), time.Now().Add(-time.Second), "puller").Encode(),
	}
	for what, u := range refused {
		code, b := get(http.MethodGet, u)
		if code != 401 || !strings.Contains(string(b), `"code":"UNAUTHORIZED"`) {
			if len(b) > 300 {
				b = fmt.Appendf(nil, "(%d bytes)", len(b))
			}
			t.Errorf("%s: %d %s", what, code, b)
		}
	}
	if code, _ := get(http.MethodHead, loc.String()); code != 401 {
		t.Errorf("HEAD with a GET's signature: %d", code)
	}
	// The expired URL's twin, valid for a minute, works: only expiry
	// refused it.
	fresh := "http://" + loc.Host + loc.Path + "?" + blobsign.Sign(blobsign.Keys{redirectKey}, "GET", "signed/app", dA.String(), time.Now().Add(time.Minute), "puller").Encode()
	if code, _ := get(http.MethodGet, fresh); code != 200 {
		t.Errorf("a fresh URL signed with the key: %d", code)
	}
	if n := rc.sum(t, "idc-a", "gaia_registry_signed_requests_total", `outcome="refused"`); n < float64(len(refused)+1) {
		t.Errorf("servers counted %v refused signatures, want %d", n, len(refused)+1)
	}

	// An upload session's signed Location works for that session only.
	post := func(repo string) *url.URL {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, gw+"/v2/"+repo+"/blobs/uploads/", nil)
		req.Header.Set("Authorization", rc.authHdr)
		resp, err := noFollow.Do(req)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST upload: %v %v", resp.StatusCode, err)
		}
		resp.Body.Close()
		u, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || u.Host == rc.gwAddr[0] || u.Query().Get(blobsign.ParamSig) == "" {
			t.Fatalf("upload Location %q", resp.Header.Get("Location"))
		}
		return u
	}
	up1, up2 := post("signed/app"), post("signed/app")
	id2 := up2.Path[strings.LastIndex(up2.Path, "/")+1:]
	data := harness.Layer(5, 100_000)
	put := func(u string, body []byte) (int, string) {
		t.Helper()
		pu, _ := url.Parse(u)
		q := pu.Query()
		q.Set("digest", digest.FromBytes(body).String())
		pu.RawQuery = q.Encode()
		req, _ := http.NewRequest(http.MethodPut, pu.String(), strings.NewReader(string(body)))
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	for what, u := range map[string]string{
		"another session":    strings.Replace(up1.String(), up1.Path, up2.Path[:strings.LastIndex(up2.Path, "/")+1]+id2, 1),
		"another repository": strings.Replace(up1.String(), "/signed/app/", "/signed/other/", 1),
		"a blob's signature": "http://" + up1.Host + up1.Path + "?" + loc.RawQuery,
	} {
		if code, b := put(u, data); code != 401 || !strings.Contains(b, `"code":"UNAUTHORIZED"`) {
			t.Errorf("upload PUT with %s: %d %s", what, code, b)
		}
	}
	if code, b := put(up1.String(), data); code != http.StatusCreated {
		t.Errorf("upload PUT with its own signed Location: %d %s", code, b)
	}
}

// pushBlobAuth is pushBlob with credentials.
func pushBlobAuth(t *testing.T, base, authHdr, repo string, data []byte) digest.Digest {
	d := digest.FromBytes(data)
	req, _ := http.NewRequest(http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), strings.NewReader(string(data)))
	req.Header.Set("Authorization", authHdr)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("blob push to %s: %v %v", repo, resp.StatusCode, err)
	}
	resp.Body.Close()
	return d
}

// TestGatewayCacheDeletion: a manifest cached by two gateways and deleted
// through one is not served by the other's cache afterwards (the delete
// is heard from PostgreSQL), while what was not deleted stays cached.
func TestGatewayCacheDeletion(t *testing.T) {
	rc := startRedirectCluster(t)
	gw1, gw2 := "http://"+rc.gwAddr[0], "http://"+rc.gwAddr[1]
	cfg := harness.Layer(3, 1000)
	pushBlobAuth(t, gw1, rc.authHdr, "cache/app", cfg)
	var digests [2]digest.Digest
	for i := range digests {
		m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[],"annotations":{"n":"%d"}}`,
			digest.FromBytes(cfg), len(cfg), i)
		digests[i] = digest.FromString(m)
		req, _ := http.NewRequest(http.MethodPut, gw1+"/v2/cache/app/manifests/"+digests[i].String(), strings.NewReader(m))
		req.Header.Set("Authorization", rc.authHdr)
		req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 201 {
			t.Fatalf("manifest PUT: %v %v", resp.StatusCode, err)
		}
		resp.Body.Close()
	}
	fetch := func(base, method string, d digest.Digest) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+"/v2/cache/app/manifests/"+d.String(), nil)
		req.Header.Set("Authorization", rc.authHdr)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Gaia-Cache")
	}
	for _, gw := range []string{gw1, gw2} {
		for _, d := range digests {
			fetch(gw, http.MethodGet, d)
			if code, how := fetch(gw, http.MethodGet, d); code != 200 || how != "hit" {
				t.Fatalf("second GET through %s: %d, cache %q", gw, code, how)
			}
		}
	}
	// Without credentials a cached manifest is refused, not served.
	if code, _ := harness.Get(t, gw2+"/v2/cache/app/manifests/"+digests[0].String()); code != 401 {
		t.Fatalf("cached manifest without credentials: %d", code)
	}
	notices := func() float64 { return harness.Metric(t, rc.gw[1].URL(), "gaia_gateway_cache_deletion_notices_total") }
	before := notices()
	req, _ := http.NewRequest(http.MethodDelete, gw1+"/v2/cache/app/manifests/"+digests[0].String(), nil)
	req.Header.Set("Authorization", rc.authHdr)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE through gateway 1: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	waitUntil(t, "gateway 2 hears the deletion", func() bool { return notices() > before })
	for _, m := range []string{http.MethodGet, http.MethodHead} {
		if code, how := fetch(gw2, m, digests[0]); code != 404 || how == "hit" {
			t.Errorf("%s of the deleted manifest through gateway 2: %d (cache %q)", m, code, how)
		}
		if code, how := fetch(gw1, m, digests[0]); code != 404 || how == "hit" {
			t.Errorf("%s of the deleted manifest through gateway 1: %d (cache %q)", m, code, how)
		}
	}
	if code, how := fetch(gw2, http.MethodGet, digests[1]); code != 200 || how != "hit" {
		t.Errorf("the other manifest through gateway 2: %d, cache %q", code, how)
	}
}

// TestGatewayRedirectTargetKilled: the server a redirect points at is
// killed (-9) before the client follows it; the client's retry through
// the gateway gets the blob (a new redirect to a live server).
func TestGatewayRedirectTargetKilled(t *testing.T) {
	rc := startRedirectCluster(t)
	gw := "http://" + rc.gwAddr[0]
	layer := harness.Layer(4, 2<<20)
	d := pushBlobAuth(t, gw, rc.authHdr, "kill/app", layer)
	req, _ := http.NewRequest(http.MethodGet, gw+"/v2/kill/app/blobs/"+d.String(), nil)
	req.Header.Set("Authorization", rc.authHdr)
	resp, err := noFollow.Do(req)
	if err != nil || resp.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("blob GET: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	killed := false
	for _, s := range rc.servers["idc-a"] {
		if s.Addr == loc.Host {
			s.Kill()
			killed = true
		}
	}
	if !killed {
		t.Fatalf("the redirect names no server: %s", loc)
	}
	if resp, err := http.Get(loc.String()); err == nil {
		resp.Body.Close()
		t.Fatalf("following the redirect to a killed server: %d", resp.StatusCode)
	}
	// The client retries as docker does: the whole request again, a few
	// times with a pause.
	var got []byte
	for attempt := 1; ; attempt++ {
		req, _ := http.NewRequest(http.MethodGet, gw+"/v2/kill/app/blobs/"+d.String(), nil)
		req.Header.Set("Authorization", rc.authHdr)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			got, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == 200 {
				t.Logf("attempt %d succeeded", attempt)
				break
			}
		}
		if attempt == 5 {
			t.Fatalf("5 attempts failed, the last: %v", err)
		}
		time.Sleep(time.Duration(attempt) * 500 * time.Millisecond)
	}
	if digest.FromBytes(got) != d {
		t.Fatalf("retry got %d bytes of another content", len(got))
	}
}

// TestGatewayUploadRedirectRealClients: with redirect: blobs+uploads the
// gateway answers an upload's POST with a signed Location on a server, so
// the PATCHes and the PUT (the blob bytes) skip it. docker, skopeo, crane
// and ctr each push a fresh image; the gateway took in no layer's bytes;
// each image reads back whole.
func TestGatewayUploadRedirectRealClients(t *testing.T) {
	env := harness.Start(t, harness.Dockerd)
	rc := startRedirectClusterMode(t, "blobs+uploads")
	gw := rc.gwAddr[0]
	cfgDir := dockerConfig(t, rc.auth, gw)
	docker := func(args ...string) string {
		t.Helper()
		out, err := harness.DockerErr(env, append([]string{"--config", cfgDir}, args...)...)
		if err != nil {
			t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	crane := harness.GoTool(t, "github.com/google/go-containerregistry/cmd/crane", "v0.22.1")
	dockerSock := strings.TrimPrefix(env["GAIA_TEST_DOCKER_HOST"], "unix://")
	ctrSock := filepath.Join(filepath.Dir(dockerSock), "exec", "containerd", "containerd.sock")
	ctrNS := fmt.Sprintf("gaia-e2e-upload-%d", time.Now().UnixNano())
	in := func() float64 { return harness.Metric(t, rc.gw[0].URL(), "gaia_gateway_bytes_total", `direction="in"`) }
	redirects := func() float64 { return harness.Metric(t, rc.gw[0].URL(), "gaia_gateway_redirects_total") }
	accepted := func() float64 {
		return rc.sum(t, "idc-a", "gaia_registry_signed_requests_total", `outcome="accepted"`)
	}
	const smallest = 300_000
	for _, client := range []string{"docker", "skopeo", "crane", "ctr"} {
		ref := gw + "/upload/" + client + ":v1"
		harness.BuildImage(t, env, ref, 1<<20+3, smallest)
		tarball := filepath.Join(t.TempDir(), "image.tar")
		if client == "crane" || client == "ctr" {
			docker("save", "-o", tarball, ref)
		}
		i0, r0, a0 := in(), redirects(), accepted()
		switch client {
		case "docker":
			docker("push", ref)
		case "skopeo":
			skopeo(t, "copy", "--src-daemon-host", "unix://"+dockerSock, "--dest-tls-verify=false", "--dest-creds", rc.auth, "docker-daemon:"+ref, "docker://"+ref)
		case "crane":
			cmd := exec.Command(crane, "push", "--insecure", tarball, ref)
			cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+cfgDir)
			if o, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("crane push: %v\n%s", err, o)
			}
		case "ctr":
			if o, err := run("ctr", "--address", ctrSock, "-n", ctrNS, "images", "import", tarball); err != nil {
				t.Fatalf("ctr import: %v\n%s", err, o)
			}
			if o, err := run("ctr", "--address", ctrSock, "-n", ctrNS, "images", "push", "--plain-http", "--user", rc.auth, ref); err != nil {
				t.Fatalf("ctr push: %v\n%s", err, o)
			}
		}
		i1, r1, a1 := in(), redirects(), accepted()
		t.Logf("%s push: %v uploads redirected, %v signed requests accepted by servers, %v bytes into the gateway", client, r1-r0, a1-a0, i1-i0)
		if r1-r0 < 2 || a1-a0 < r1-r0 {
			t.Errorf("%s push: %v uploads redirected, %v signed requests accepted", client, r1-r0, a1-a0)
		}
		if i1-i0 >= smallest {
			t.Errorf("%s push: %v bytes went into the gateway, a layer's worth", client, i1-i0)
		}
		// The image reads back whole (skopeo verifies every blob's digest).
		skopeo(t, "copy", "--src-tls-verify=false", "--src-creds", rc.auth, "docker://"+ref, "dir:"+t.TempDir())
		harness.DockerErr(env, "rmi", ref)
	}
}
