package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/gaia-registry/gaia/tests/harness"
)

// TestNodeAgentsWithScheduler: a gaia-scheduler and two gaia-nodeagent
// processes sharing the harness's dockerd (each node on a loopback
// address of its own, where its instances' ports are published), a
// gaia-registry holding an image built and pushed with docker. An app of
// 4 instances (an HTTP server answering its GAIA_INSTANCE and
// GAIA_PORT_HTTP) is submitted: all 4 become healthy in the scheduler's
// view, each answers on its node's address and published host port with
// its own values, and Consul lists them under the app's name with those
// ports. Scaled to 1: three containers and Consul entries go. Deleted:
// none left.
func TestNodeAgentsWithScheduler(t *testing.T) {
	e := newSchedEnv(t)
	henv := harness.Start(t, harness.Dockerd)
	host := strings.TrimPrefix(e.registry, "http://")
	tag := host + "/agente2e/web:v1"
	harness.BuildImage(t, henv, tag, 1024)
	harness.Docker(t, henv, "push", tag)
	harness.Docker(t, henv, "rmi", tag)
	sched := e.start()
	waitFor(t, "the scheduler to lead", time.Minute, func() bool { return isLeader(sched) })

	suffix := fmt.Sprintf("%d", time.Now().UnixNano()%1_000_000)
	app := "agente2e-" + suffix
	nodes := map[string]string{"agent-a-" + suffix: "127.0.0.2", "agent-b-" + suffix: "127.0.0.3"}
	cons := consulClient(t, e.consul)
	t.Cleanup(func() {
		for node := range nodes {
			if ids, err := harness.DockerErr(henv, "ps", "-aq", "--filter", "label=gaia.node="+node); err == nil && ids != "" {
				harness.DockerErr(henv, append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
			}
		}
		svcs, _ := cons.Agent().Services()
		for id, s := range svcs {
			if s.Service == app {
				cons.Agent().ServiceDeregister(id)
			}
		}
	})
	bin := harness.Binary(t, "./nodeagent/cmd/gaia-nodeagent")
	for node, ip := range nodes {
		startNodeAgent(t, e, bin, node, ip, harness.FreeAddr(t), sched.URL(), henv.Get(t, "GAIA_TEST_DOCKER_HOST"), host)
	}
	waitFor(t, "both nodes registered", time.Minute, func() bool {
		return dbCount(t, e.db, `SELECT count(*) FROM nodes WHERE state = 'ready' AND name = ANY($1)`, keysOf(nodes)) == 2
	})

	createPool(t, sched.URL(), map[string]any{"name": "root.agents"})
	spec := map[string]any{"name": app, "pool": "root.agents", "image": "agente2e/web:v1", "instances": 4,
		"command":   []string{"/bin/busybox", "sh", "-c", `mkdir -p /www && echo "$GAIA_INSTANCE $GAIA_PORT_HTTP" > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www`},
		"resources": map[string]string{"cpu": "100m", "memory": "32Mi"},
		"ports":     []map[string]any{{"name": "http", "containerPort": 8080}},
		"health":    map[string]any{"type": "http", "port": "http", "path": "/", "interval": "1s", "timeout": "1s"},
		"restart":   map[string]any{"attempts": 2, "delay": "100ms"},
	}
	var created map[string]any
	if code := call(t, sched.URL(), schedAdmin, "POST", "/v1/apps", spec, &created); code != http.StatusCreated {
		t.Fatalf("submit: %d %v", code, created)
	}

	type inst struct {
		ID        string         `json:"id"`
		Node      string         `json:"node"`
		State     string         `json:"state"`
		Reason    string         `json:"reason"`
		HostPorts map[string]int `json:"hostPorts"`
	}
	instances := func() []inst {
		var page struct {
			Items []inst `json:"items"`
		}
		call(t, sched.URL(), schedAdmin, "GET", "/v1/apps/"+app+"/instances?limit=100", nil, &page)
		return page.Items
	}
	live := func() (out []inst) {
		for _, in := range instances() {
			if in.State != "stopped" && in.State != "failed" && in.State != "lost" {
				out = append(out, in)
			}
		}
		return out
	}
	var healthy []inst
	waitErr(t, "4 instances healthy", 2*time.Minute, func() error {
		healthy = nil
		var states []string
		for _, in := range live() {
			states = append(states, in.ID+"@"+in.Node+":"+in.State+" "+in.Reason)
			if in.State == "healthy" {
				healthy = append(healthy, in)
			}
		}
		if len(healthy) != 4 {
			return fmt.Errorf("instances: %v", states)
		}
		return nil
	}, sched)
	for _, in := range healthy {
		ip, port := nodes[in.Node], in.HostPorts["http"]
		body, err := httpGet(fmt.Sprintf("http://%s:%d/", ip, port))
		if want := fmt.Sprintf("%s %d", in.ID, port); err != nil || body != want {
			t.Errorf("instance %s on %s: GET %s:%d: %q %v, want %q", in.ID, in.Node, ip, port, body, err, want)
		}
	}
	waitErr(t, "Consul to list the 4 instances, passing", time.Minute, func() error {
		entries, _, err := cons.Health().Service(app, "", true, nil)
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, en := range entries {
			got[en.Service.ID] = fmt.Sprintf("%s:%d", en.Service.Address, en.Service.Port)
		}
		for _, in := range healthy {
			if want := fmt.Sprintf("%s:%d", nodes[in.Node], in.HostPorts["http"]); got[in.ID] != want {
				return fmt.Errorf("Consul lists %v, want %s at %s", got, in.ID, want)
			}
		}
		if len(got) != 4 {
			return fmt.Errorf("Consul lists %v", got)
		}
		return nil
	})

	containers := func() []string {
		out := []string{}
		for node := range nodes {
			ids := harness.Docker(t, henv, "ps", "-aq", "--filter", "label=gaia.node="+node, "--filter", "label=gaia.app="+app)
			out = append(out, strings.Fields(ids)...)
		}
		sort.Strings(out)
		return out
	}
	consulCount := func() int {
		entries, _, err := cons.Health().Service(app, "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	if code := call(t, sched.URL(), schedAdmin, "POST", "/v1/apps/"+app+"/scale", map[string]int{"instances": 1}, nil); code != http.StatusOK {
		t.Fatalf("scale: %d", code)
	}
	waitErr(t, "one container and one Consul entry after scaling to 1", time.Minute, func() error {
		if c, n := containers(), consulCount(); len(c) != 1 || n != 1 {
			return fmt.Errorf("containers %v, Consul entries %d", c, n)
		}
		return nil
	})
	if code := call(t, sched.URL(), schedAdmin, "DELETE", "/v1/apps/"+app, nil, nil); code/100 != 2 {
		t.Fatalf("delete: %d", code)
	}
	waitErr(t, "no container nor Consul entry after the delete", time.Minute, func() error {
		if c, n := containers(), consulCount(); len(c) != 0 || n != 0 {
			return fmt.Errorf("containers %v, Consul entries %d", c, n)
		}
		return nil
	})
}

func consulClient(t *testing.T, addr string) *consul.Client {
	cc := consul.DefaultConfig()
	cc.Address = addr
	c, err := consul.NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func keysOf(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func httpGet(url string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}

// startNodeAgent runs a gaia-nodeagent binary (bin) for node, on address
// ip and listening on addr, speaking to the scheduler at schedURL, running
// instances on the dockerd at dockerHost and pulling through gateway
// (with e's registry credential, if any); it
// returns the process once /healthz answers (it stops with the test) and
// its config file.
func startNodeAgent(t *testing.T, e *schedEnv, bin, node, ip, addr, schedURL, dockerHost, gateway string) (*harness.Registry, string) {
	t.Helper()
	cfg := fmt.Sprintf(`log: {level: info, formatter: json}
http: {addr: %q}
node: {name: %q, idc: idc-a, address: %s, datadir: %q, capacity: {cpu: 4, memory: 4Gi}}
scheduler: {urls: [%q], token: %s}
docker: {host: %q}
registry: {gateway: %q, username: %q, password: %q}
consul: {addr: %q}
instances: {publiship: %s, stoptimeout: 2s}
agent: {reportinterval: 1s, retryinterval: 200ms}
pull: {stalltimeout: 10s, attempts: 2, backoff: 200ms, maxbackoff: 1s}
`, addr, node, ip, t.TempDir(), schedURL, schedNode, dockerHost, gateway, e.regUser, e.regPass, e.consul, ip)
	path := filepath.Join(t.TempDir(), node+".yml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return runNodeAgent(t, bin, path, addr), path
}

// runNodeAgent starts the agent bin with the config at path, listening on
// addr; it returns once /healthz answers.
func runNodeAgent(t *testing.T, bin, path, addr string) *harness.Registry {
	t.Helper()
	return harness.StartProcess(t, bin, []string{"--config", path}, nil, addr, "/healthz",
		func(code int) bool { return code == http.StatusOK })
}
