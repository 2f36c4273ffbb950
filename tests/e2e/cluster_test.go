package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

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
			c.servers[idc] = append(c.servers[idc], harness.StartRegistry(t, addr, serverConfig(c, idc, addr)))
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
		if code, _ := get(t, "http://"+gwA+"/v2/cluster/app/manifests/v1"); code != 200 {
			t.Fatalf("manifest GET through A with one server left: %d", code)
		}
	}

	// A failover gateway of A, started while A still has a server.
	gwFail := harness.FreeAddr(t)
	harness.StartGateway(t, gwFail, gatewayConfig(c, "idc-a", gwFail, "any"))

	// The last server of A crashes: Consul's check drops it within its interval.
	c.servers["idc-a"][1].Kill()
	waitUntil(t, "a crashed server leaves gateway A", func() bool { return upstreams(gwA, "live")+upstreams(gwA, "ejected") == 0 })
	code, body := get(t, "http://"+gwA+"/v2/cluster/app/manifests/v1")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"code":"UNAVAILABLE"`) || !strings.Contains(body, "idc-a") {
		t.Fatalf("gateway A with no server, local policy: %d %s", code, body)
	}
	if code, body := get(t, "http://"+gwFail+"/v2/cluster/app/manifests/v1"); code != 200 {
		t.Fatalf("failover gateway of A with no server in A: %d %s", code, body)
	}
	if n := harness.Metric(t, "http://"+gwFail, "gaia_gateway_failover_requests_total", `idc="idc-b"`); n < 1 {
		t.Fatalf("failover requests to B counted: %v", n)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
