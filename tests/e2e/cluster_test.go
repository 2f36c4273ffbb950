package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/uploadsession"
	"github.com/gaia-registry/gaia/tests/harness"
)

// cluster is a two-IDC Gaia cluster on loopback: per IDC two servers with
// that IDC's own storage directory and one gateway; one PostgreSQL and one
// Consul agent for both.
type cluster struct {
	service  string
	consul   string
	db       string
	token    string
	gateways map[string]*harness.Registry // by IDC
	gwAddr   map[string]string
	servers  map[string][]*harness.Registry
	storage  map[string]string // storage root per IDC
}

func serverConfig(c *cluster, idc, addr string) string {
	peers := ""
	for other, gw := range c.gwAddr {
		if other != idc {
			peers += fmt.Sprintf("    %s: http://%s\n", other, gw)
		}
	}
	return harness.RegistryConfig(addr, c.db, c.storage[idc]) + fmt.Sprintf(`cluster:
  idc: %s
  consul: {addr: %q, service: %q, checkinterval: 1s, deregisterafter: 30s}
  internaltoken: %q
  peers:
%s`, idc, c.consul, c.service, c.token, peers)
}

func gatewayConfig(c *cluster, idc, addr, failover string) string {
	return fmt.Sprintf(`log: {level: warn}
http: {addr: %s, draintimeout: 10s}
idc: %s
consul: {addr: %q, service: %q}
failover: %s
eject: {failures: 2, duration: 5s}
`, addr, idc, c.consul, c.service, failover)
}

func startCluster(t *testing.T, idcs ...string) *cluster {
	return startClusterWith(t, nil, idcs...)
}

// startClusterWith is startCluster with each server's config text passed
// through tweak first (which may read the cluster's addresses).
func startClusterWith(t *testing.T, tweak func(c *cluster, config string) string, idcs ...string) *cluster {
	env := harness.Start(t, harness.Consul)
	c := &cluster{
		service:  fmt.Sprintf("gaia-registry-e2e-%d", time.Now().UnixNano()),
		consul:   env.Get(t, "GAIA_TEST_CONSUL_ADDR"),
		db:       harness.NewDatabase(t),
		token:    "e2e-internal-token",
		gateways: map[string]*harness.Registry{}, gwAddr: map[string]string{},
		servers: map[string][]*harness.Registry{}, storage: map[string]string{},
	}
	for _, idc := range idcs {
		c.gwAddr[idc] = harness.FreeAddr(t)
		c.storage[idc] = t.TempDir()
	}
	for _, idc := range idcs {
		for range 2 {
			addr := harness.FreeAddr(t)
			cfg := serverConfig(c, idc, addr)
			if tweak != nil {
				cfg = tweak(c, cfg)
			}
			c.servers[idc] = append(c.servers[idc], harness.StartRegistry(t, addr, cfg))
		}
		c.gateways[idc] = harness.StartGateway(t, c.gwAddr[idc], gatewayConfig(c, idc, c.gwAddr[idc], "local"))
	}
	return c
}

// sum adds a metric over every server of an IDC.
func (c *cluster) sum(t *testing.T, idc, name string, labels ...string) float64 {
	var s float64
	for _, r := range c.servers[idc] {
		s += harness.Metric(t, r.URL(), name, labels...)
	}
	return s
}

// blobBytes is the total size of an image's config and layers, from its
// manifest.
func blobBytes(t *testing.T, base, repo, ref string) int64 {
	req, _ := http.NewRequest(http.MethodGet, base+"/v2/"+repo+"/manifests/"+ref, nil)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m struct {
		Config struct{ Size int64 }
		Layers []struct{ Size int64 }
	}
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != 200 {
		t.Fatalf("manifest %s:%s: %d %v", repo, ref, resp.StatusCode, err)
	}
	total := m.Config.Size
	for _, l := range m.Layers {
		total += l.Size
	}
	return total
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 60s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestClusterPushInAPullInB: docker pushes through IDC A's gateway and
// pulls through IDC B's. The digest matches; the bytes that crossed from A
// to B are exactly the image's blobs, once; a second pull in B moves
// nothing across. Then the rotation: a stopped server leaves its gateway's
// pool, and with every server of A down, A's gateway answers 503 (local
// policy) while a failover gateway of A serves from B.
func TestClusterPushInAPullInB(t *testing.T) {
	env := harness.Start(t, harness.Dockerd)
	c := startCluster(t, "idc-a", "idc-b")
	gwA, gwB := c.gwAddr["idc-a"], c.gwAddr["idc-b"]

	refA := gwA + "/cluster/app:v1"
	harness.BuildImage(t, env, refA, 1<<20+17, 200_000)
	harness.Docker(t, env, "push", refA)
	pushed := harness.Docker(t, env, "image", "inspect", "-f", "{{index .RepoDigests 0}}", refA)
	harness.Docker(t, env, "rmi", refA)
	digest := pushed[strings.Index(pushed, "@")+1:]
	total := blobBytes(t, "http://"+gwA, "cluster/app", "v1")

	refB := gwB + "/cluster/app@" + digest
	harness.Docker(t, env, "pull", refB)
	if out := harness.Docker(t, env, "run", "--rm", "--network", "none", refB, "/bin/sh", "-c", "ls /data"); out != "layer0.bin\nlayer1.bin" {
		t.Fatalf("image pulled in B: %q", out)
	}
	in := c.sum(t, "idc-b", "gaia_registry_cross_idc_bytes_total", `direction="in"`, `cause="fill"`, `peer="idc-a"`)
	out := c.sum(t, "idc-a", "gaia_registry_cross_idc_bytes_total", `direction="out"`, `cause="fill"`, `peer="idc-b"`)
	if in != float64(total) || out != float64(total) {
		t.Fatalf("cross-IDC bytes: B took in %.0f, A sent %.0f; the image's blobs are %d bytes", in, out, total)
	}
	harness.Docker(t, env, "rmi", refB)
	harness.Docker(t, env, "pull", refB)
	harness.Docker(t, env, "rmi", refB)
	if again := c.sum(t, "idc-b", "gaia_registry_cross_idc_bytes_total", `direction="in"`); again != in {
		t.Fatalf("a second pull in B moved %.0f more bytes across IDCs", again-in)
	}
	if n := c.sum(t, "idc-a", "gaia_registry_http_requests_total", `route="blob"`, `method="GET"`, `code="200"`); n == 0 {
		t.Fatal("IDC A's servers served no blob GETs (the fills)")
	}

	// A stopped server leaves the rotation (it deregisters on SIGTERM);
	// requests keep working on the other.
	upstreams := func(gw, state string) float64 {
		return harness.Metric(t, "http://"+gw, "gaia_gateway_upstreams", `idc="idc-a"`, `state="`+state+`"`)
	}
	if n := upstreams(gwA, "live"); n != 2 {
		t.Fatalf("gateway A knows %v live servers of A, want 2", n)
	}
	if err := c.servers["idc-a"][0].Stop(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the stopped server leaves gateway A", func() bool { return upstreams(gwA, "live") == 1 })
	for range 10 {
		if code, _ := harness.Get(t, "http://"+gwA+"/v2/cluster/app/manifests/v1"); code != 200 {
			t.Fatalf("manifest GET through A with one server left: %d", code)
		}
	}

	// A failover gateway of A, started while A still has a server.
	gwFail := harness.FreeAddr(t)
	harness.StartGateway(t, gwFail, gatewayConfig(c, "idc-a", gwFail, "any"))

	// The last server of A crashes: Consul's check drops it within its interval.
	c.servers["idc-a"][1].Kill()
	waitUntil(t, "a crashed server leaves gateway A", func() bool { return upstreams(gwA, "live")+upstreams(gwA, "ejected") == 0 })
	code, body := harness.Get(t, "http://"+gwA+"/v2/cluster/app/manifests/v1")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"code":"UNAVAILABLE"`) || !strings.Contains(body, "idc-a") {
		t.Fatalf("gateway A with no server, local policy: %d %s", code, body)
	}
	if code, body := harness.Get(t, "http://"+gwFail+"/v2/cluster/app/manifests/v1"); code != 200 {
		t.Fatalf("failover gateway of A with no server in A: %d %s", code, body)
	}
	if n := harness.Metric(t, "http://"+gwFail, "gaia_gateway_failover_requests_total", `idc="idc-b"`); n < 1 {
		t.Fatalf("failover requests to B counted: %v", n)
	}
}

// TestClusterKillDuringPushAndPull: a server of the IDC is killed (-9) in
// the middle of a large push through the gateway, and another in the
// middle of a large pull. Both docker commands complete (docker's own
// retries plus the gateway's), the image is intact, and PostgreSQL holds
// nothing half-written: every blob it records is whole in storage, every
// manifest's blobs are linked.
func TestClusterKillDuringPushAndPull(t *testing.T) {
	env := harness.Start(t, harness.Dockerd)
	c := startCluster(t, "idc-a")
	// Two more servers: one is killed during the push, up to two during
	// pulls, and one is left.
	for range 2 {
		addr := harness.FreeAddr(t)
		c.servers["idc-a"] = append(c.servers["idc-a"], harness.StartRegistry(t, addr, serverConfig(c, "idc-a", addr)))
	}
	gw := c.gwAddr["idc-a"]
	waitUntil(t, "gateway sees 4 servers", func() bool {
		return harness.Metric(t, "http://"+gw, "gaia_gateway_upstreams", `state="live"`) == 4
	})

	// killWhen kills the first server whose metric stays above threshold
	// for three polls in a row: with the in-flight gauge, a server in the
	// middle of a long request (a layer, not a config blob).
	killWhen := func(name, label string, threshold float64) <-chan *harness.Registry {
		done := make(chan *harness.Registry, 1)
		go func() {
			seen := map[*harness.Registry]int{}
			deadline := time.Now().Add(2 * time.Minute)
			for time.Now().Before(deadline) {
				for _, r := range c.servers["idc-a"] {
					if r.Killed() {
						continue
					}
					// Not harness.Metric: t.Fatal from this goroutine would
					// leave the test waiting on done for ever.
					v, err := harness.ScrapeMetric(nil, r.URL(), name, label)
					if err != nil {
						t.Errorf("killWhen: %v", err)
						done <- nil
						return
					}
					if v > threshold {
						if seen[r]++; seen[r] >= 3 {
							r.Kill()
							done <- r
							return
						}
					} else {
						seen[r] = 0
					}
				}
				time.Sleep(5 * time.Millisecond)
			}
			done <- nil
		}()
		return done
	}

	ref := gw + "/crash/big:v1"
	harness.BuildImage(t, env, ref, 128<<20, 1<<20) // a layer long enough to be caught mid-transfer on a loaded machine
	killed := killWhen("gaia_registry_http_requests_in_flight", `method="PATCH",route="upload"`, 0)
	harness.Docker(t, env, "push", ref)
	if r := <-killed; r == nil {
		t.Fatal("no server was killed during the push (no PATCH seen in flight)")
	}
	// The gateway saw the PATCH fail mid-body (it cannot retry that one:
	// docker did, with a new upload).
	if n := harness.Metric(t, "http://"+gw, "gaia_gateway_upstream_errors_total"); n < 1 {
		t.Fatalf("gateway upstream errors after a kill mid-push: %v", n)
	}
	pushed := harness.Docker(t, env, "image", "inspect", "-f", "{{index .RepoDigests 0}}", ref)
	harness.Docker(t, env, "rmi", ref)

	// A server whose last bytes already sit in kernel buffers can die
	// without cutting the download: then pull again and kill another.
	for attempt := 1; ; attempt++ {
		killed = killWhen("gaia_registry_http_requests_in_flight", `method="GET",route="blob"`, 0)
		harness.Docker(t, env, "pull", ref)
		if r := <-killed; r == nil {
			t.Fatal("no server was killed during the pull")
		}
		if harness.Metric(t, "http://"+gw, "gaia_gateway_requests_total", `code="cut"`) >= 1 {
			break
		}
		if attempt == 2 {
			t.Fatal("two kills mid-pull, and the gateway saw no download cut")
		}
		harness.Docker(t, env, "rmi", ref)
	}
	pulled := harness.Docker(t, env, "image", "inspect", "-f", "{{index .RepoDigests 0}}", ref)
	if pushed != pulled {
		t.Fatalf("pushed %s, pulled %s", pushed, pulled)
	}
	if out := harness.Docker(t, env, "run", "--rm", "--network", "none", ref, "/bin/sh", "-c", "ls -l /data | wc -l"); out != "3" {
		t.Fatalf("pulled image: %q", out)
	}
	harness.Docker(t, env, "rmi", ref)

	// Nothing half-written: each recorded blob is whole in storage.
	verifyStorage(t, c.db, fsBlobs(c.storage["idc-a"]))
}

// blobOpener opens a blob's bytes where a registry's storage keeps them.
type blobOpener func(d digest.Digest) (io.ReadCloser, error)

// fsBlobs opens blobs in a filesystem storage root.
func fsBlobs(root string) blobOpener {
	return func(d digest.Digest) (io.ReadCloser, error) {
		return os.Open(filepath.Join(root, strings.TrimPrefix(uploadsession.BlobPath(d), "/")))
	}
}

// verifyStorage checks every blob PostgreSQL records: its bytes are in
// storage (open), whole, and hash to its digest (there is at least one);
// and every image manifest's recorded blobs are exactly its config and
// layers.
func verifyStorage(t *testing.T, dbURL string, open blobOpener) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if n := blobsWhole(t, conn, open); n == 0 {
		t.Fatal("no blobs in PostgreSQL")
	}
	// Every image manifest's recorded blobs are exactly its config and
	// layers (not merely "some").
	rows, _ := conn.Query(ctx, `
		SELECT m.digest, m.content, COALESCE(array_agg(mb.digest) FILTER (WHERE mb.digest IS NOT NULL), '{}')
		FROM manifests m LEFT JOIN manifest_blobs mb ON mb.manifest_id = m.id
		WHERE m.media_type NOT LIKE '%index%' AND m.media_type NOT LIKE '%list%'
		GROUP BY m.id`)
	checked := 0
	for rows.Next() {
		var d string
		var content []byte
		var recorded []string
		if err := rows.Scan(&d, &content, &recorded); err != nil {
			t.Fatal(err)
		}
		var m struct {
			Config struct{ Digest string }
			Layers []struct{ Digest string }
		}
		if err := json.Unmarshal(content, &m); err != nil {
			t.Fatalf("manifest %s: %v", d, err)
		}
		want := []string{m.Config.Digest}
		for _, l := range m.Layers {
			want = append(want, l.Digest)
		}
		slices.Sort(want)
		want = slices.Compact(want)
		slices.Sort(recorded)
		if !slices.Equal(want, recorded) {
			t.Errorf("manifest %s records blobs %v; its content names %v", d, recorded, want)
		}
		checked++
	}
	if err := rows.Err(); err != nil || checked == 0 {
		t.Fatalf("image manifests checked: %d (%v)", checked, err)
	}
}

// blobsWhole checks that every blob PostgreSQL records is in storage
// (open), whole, and hashes to its digest; it returns how many there are.
func blobsWhole(t *testing.T, conn *pgx.Conn, open blobOpener) int {
	t.Helper()
	ctx := context.Background()
	rows, _ := conn.Query(ctx, `SELECT digest, size FROM blobs`)
	type blob struct {
		d    digest.Digest
		size int64
	}
	blobs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (blob, error) {
		var b blob
		return b, r.Scan(&b.d, &b.size)
	})
	if err != nil {
		t.Fatalf("blobs in PostgreSQL: %v", err)
	}
	for _, b := range blobs {
		f, err := open(b.d)
		if err != nil {
			t.Errorf("blob %s recorded but not in storage: %v", b.d, err)
			continue
		}
		h := b.d.Algorithm().Digester()
		n, err := io.Copy(h.Hash(), f)
		f.Close()
		if err != nil || h.Digest() != b.d || n != b.size {
			t.Errorf("blob %s in storage: %d bytes (recorded %d), digest %s, read error %v", b.d, n, b.size, h.Digest(), err)
		}
	}
	return len(blobs)
}

// pushBlob uploads a blob monolithically and returns its digest.
func pushBlob(t *testing.T, base, repo string, data []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(data)
	resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(data))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("push blob: %v %v", resp, err)
	}
	resp.Body.Close()
	return d
}

// TestClusterConcurrentFillIsOnce: 24 clients pull a blob that only IDC A
// holds, through IDC B's gateway (so on both of B's servers) at once. All
// get the right bytes; exactly one copy crossed from A to B. Whether the
// two servers' fills overlapped is up to timing here: that they exclude
// each other through the advisory lock, and that a waiter takes over from
// a dead holder, is registry/replication's TestFillOnceAcrossServers and
// TestFillTakeoverWhenHolderDies, deterministically.
func TestClusterConcurrentFillIsOnce(t *testing.T) {
	c := startCluster(t, "idc-a", "idc-b")
	data := make([]byte, 3<<20)
	rand.Read(data)
	d := pushBlob(t, "http://"+c.gwAddr["idc-a"], "fill/once", data)
	// The gateway is ready with one server: wait until it routes to both.
	waitUntil(t, "B's gateway routing to both of B's servers", func() bool {
		_, body := harness.Get(t, "http://"+c.gwAddr["idc-b"]+"/readyz")
		return strings.HasPrefix(body, "ok: 2 registry servers")
	})

	errs := make(chan error, 24)
	for range 24 {
		go func() {
			resp, err := http.Get("http://" + c.gwAddr["idc-b"] + "/v2/fill/once/blobs/" + d.String())
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err == nil && (resp.StatusCode != 200 || !bytes.Equal(got, data)) {
				err = fmt.Errorf("status %d, %d bytes", resp.StatusCode, len(got))
			}
			errs <- err
		}()
	}
	for range 24 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if in := c.sum(t, "idc-b", "gaia_registry_cross_idc_bytes_total", `direction="in"`); in != float64(len(data)) {
		t.Fatalf("%.0f bytes crossed into B for one %d-byte blob", in, len(data))
	}
	if n := c.sum(t, "idc-b", "gaia_registry_http_requests_total", `route="blob"`, `code="200"`); n != 24 {
		t.Fatalf("B's servers answered %v blob GETs with 200, want 24", n)
	}
	// Both of B's servers served pulls: the run is two servers' traffic,
	// not one server coalescing all 24 (whether they overlapped is not
	// known here; see above).
	for i, r := range c.servers["idc-b"] {
		if n := harness.Metric(t, r.URL(), "gaia_registry_http_requests_total", `route="blob"`, `code="200"`); n == 0 {
			t.Fatalf("B's server %d answered none of the 24 blob GETs", i)
		}
	}
}

// TestClusterEagerReplication: with cluster.replicate covering the
// repository, a blob pushed in A is copied to B by B's servers right away,
// so the first pull in B crosses no IDC.
func TestClusterEagerReplication(t *testing.T) {
	env := harness.Start(t, harness.Consul)
	c := &cluster{
		service: fmt.Sprintf("gaia-registry-e2e-%d", time.Now().UnixNano()),
		consul:  env.Get(t, "GAIA_TEST_CONSUL_ADDR"), db: harness.NewDatabase(t), token: "e2e-token",
		gateways: map[string]*harness.Registry{}, gwAddr: map[string]string{},
		servers: map[string][]*harness.Registry{}, storage: map[string]string{},
	}
	for _, idc := range []string{"idc-a", "idc-b"} {
		c.gwAddr[idc] = harness.FreeAddr(t)
		c.storage[idc] = t.TempDir()
	}
	for _, idc := range []string{"idc-a", "idc-b"} {
		addr := harness.FreeAddr(t)
		c.servers[idc] = append(c.servers[idc], harness.StartRegistry(t, addr,
			serverConfig(c, idc, addr)+"  replicate: [\"base/\"]\n"))
		c.gateways[idc] = harness.StartGateway(t, c.gwAddr[idc], gatewayConfig(c, idc, c.gwAddr[idc], "local"))
	}
	data := make([]byte, 2<<20)
	rand.Read(data)
	d := pushBlob(t, "http://"+c.gwAddr["idc-a"], "base/image", data)
	other := pushBlob(t, "http://"+c.gwAddr["idc-a"], "scratch/image", []byte("not replicated"))

	waitUntil(t, "replication into B", func() bool {
		return c.sum(t, "idc-b", "gaia_registry_cross_idc_bytes_total", `direction="in"`, `cause="replication"`) == float64(len(data))
	})
	if _, err := os.Stat(filepath.Join(c.storage["idc-b"], "blobs", "sha256", d.Encoded()[:2], d.Encoded(), "data")); err != nil {
		t.Fatalf("replicated blob not in B's storage: %v", err)
	}
	code, body := harness.Get(t, "http://"+c.gwAddr["idc-b"]+"/v2/base/image/blobs/"+d.String())
	if code != 200 || body != string(data) {
		t.Fatalf("pull in B: %d, %d bytes", code, len(body))
	}
	if fill := c.sum(t, "idc-b", "gaia_registry_cross_idc_bytes_total", `cause="fill"`); fill != 0 {
		t.Fatalf("the first pull in B filled %.0f bytes across IDCs", fill)
	}
	if _, err := os.Stat(filepath.Join(c.storage["idc-b"], "blobs", "sha256", other.Encoded()[:2], other.Encoded(), "data")); err == nil {
		t.Fatal("a blob outside the replicate prefixes was replicated")
	}
}
