package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/gaia-registry/gaia/tests/harness"
)

// agentCluster is a real gaia-scheduler and real gaia-nodeagent processes
// sharing the harness's dockerd, each node on a loopback address of its
// own (where its instances' ports are published), and an image built
// locally and pushed with docker to the scheduler's registry.
type agentCluster struct {
	t      *testing.T
	e      *schedEnv
	henv   harness.Env
	sched  *harness.Registry
	cons   *consul.Client
	image  string            // repo:tag in the registry
	nodes  map[string]string // node name → address
	agents map[string]string // node name → the agent's HTTP address
	// agentPort is every agent's HTTP port (on its node's address).
	agentPort string
	app       string
	bin       string                       // the gaia-nodeagent binary
	procs     map[string]*harness.Registry // node name → its agent's process
	configs   map[string]string            // node name → its agent's config file
	// relay is what the agents know as the registry's gateway: a relay to
	// it that a test can cut or hang.
	relay *harness.Relay
}

// opsInstance is an instance as the scheduler's API shows it.
type opsInstance struct {
	ID        string         `json:"id"`
	Version   int64          `json:"version"`
	Node      string         `json:"node"`
	State     string         `json:"state"`
	Reason    string         `json:"reason"`
	HostPorts map[string]int `json:"hostPorts"`
	ExitCode  int            `json:"exitCode"`
	Restarts  int            `json:"restarts"`
}

func (in opsInstance) String() string {
	return fmt.Sprintf("%s@%s:v%d:%s %s", in.ID, in.Node, in.Version, in.State, in.Reason)
}

// newAgentCluster starts the scheduler (spread scoring, so instances
// land on every node) and one agent per address in ips.
func newAgentCluster(t *testing.T, ips ...string) *agentCluster {
	e := newSchedEnv(t)
	e.scoring = "spread"
	henv := harness.Start(t, harness.Dockerd)
	host := strings.TrimPrefix(e.registry, "http://")
	tag := host + "/agentops/web:v1"
	harness.BuildImage(t, henv, tag, 1024)
	harness.Docker(t, henv, "push", tag)
	harness.Docker(t, henv, "rmi", tag)
	sched := e.start()
	waitFor(t, "the scheduler to lead", time.Minute, func() bool { return isLeader(sched) })

	suffix := fmt.Sprintf("%d", time.Now().UnixNano()%1_000_000)
	c := &agentCluster{t: t, e: e, henv: henv, sched: sched, cons: consulClient(t, e.consul),
		image: "agentops/web:v1", nodes: map[string]string{}, agents: map[string]string{}, app: "agentops-" + suffix,
		procs: map[string]*harness.Registry{}, configs: map[string]string{}}
	for i, ip := range ips {
		c.nodes[fmt.Sprintf("agent-%c-%s", 'a'+i, suffix)] = ip
	}
	t.Cleanup(func() {
		for node := range c.nodes {
			if ids, err := harness.DockerErr(henv, "ps", "-aq", "--filter", "label=gaia.node="+node); err == nil && ids != "" {
				harness.DockerErr(henv, append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
			}
		}
		svcs, _ := c.cons.Agent().Services()
		for id, s := range svcs {
			if s.Service == c.app {
				c.cons.Agent().ServiceDeregister(id)
			}
		}
	})
	c.bin = harness.Binary(t, "./nodeagent/cmd/gaia-nodeagent")
	// Every agent on the same port of its node's address, as on real
	// machines (gaiactl app logs finds an agent at node address:port).
	_, port, _ := strings.Cut(harness.FreeAddr(t), ":")
	c.agentPort = port
	c.relay = harness.StartRelay(t, host)
	for node, ip := range c.nodes {
		addr := ip + ":" + port
		c.agents[node] = addr
		c.procs[node], c.configs[node] = startNodeAgent(t, e, c.bin, node, ip, addr, sched.URL(), henv.Get(t, "GAIA_TEST_DOCKER_HOST"), c.relay.Addr)
	}
	waitFor(t, "every node registered", time.Minute, func() bool {
		return dbCount(t, e.db, `SELECT count(*) FROM nodes WHERE state = 'ready' AND name = ANY($1)`, keysOf(c.nodes)) == len(c.nodes)
	})
	createPool(t, sched.URL(), map[string]any{"name": "root.agents"})
	return c
}

// spec is the app: an HTTP server answering "$GAIA_INSTANCE $GAIA_PORT_HTTP".
func (c *agentCluster) spec(instances int) map[string]any {
	return map[string]any{"name": c.app, "pool": "root.agents", "image": c.image, "instances": instances,
		"command":   []string{"/bin/busybox", "sh", "-c", `echo "started $GAIA_INSTANCE"; mkdir -p /www && echo "$GAIA_INSTANCE $GAIA_PORT_HTTP" > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www`},
		"resources": map[string]string{"cpu": "100m", "memory": "32Mi"},
		"ports":     []map[string]any{{"name": "http", "containerPort": 8080}},
		"health":    map[string]any{"type": "http", "port": "http", "path": "/", "interval": "1s", "timeout": "1s"},
		"restart":   map[string]any{"attempts": 2, "delay": "100ms"},
	}
}

// post is an admin POST to the scheduler that must answer 2xx.
func (c *agentCluster) post(path string, body any) {
	c.t.Helper()
	var out map[string]any
	if code := call(c.t, c.sched.URL(), schedAdmin, "POST", path, body, &out); code/100 != 2 {
		c.t.Fatalf("POST %s: %d %v", path, code, out)
	}
}

func (c *agentCluster) appVersion() int64 {
	c.t.Helper()
	var a struct {
		Version int64 `json:"version"`
	}
	if code := call(c.t, c.sched.URL(), schedAdmin, "GET", "/v1/apps/"+c.app, nil, &a); code != http.StatusOK {
		c.t.Fatalf("GET app: %d", code)
	}
	return a.Version
}

func (c *agentCluster) instances() []opsInstance {
	var page struct {
		Items []opsInstance `json:"items"`
	}
	call(c.t, c.sched.URL(), schedAdmin, "GET", "/v1/apps/"+c.app+"/instances?limit=100", nil, &page)
	return page.Items
}

// live is the instances neither stopped, failed nor lost.
func (c *agentCluster) live() (out []opsInstance) {
	for _, in := range c.instances() {
		if in.State != "stopped" && in.State != "failed" && in.State != "lost" {
			out = append(out, in)
		}
	}
	return out
}

// waitHealthy waits until exactly n instances live, all healthy and at
// version (0: any), and returns them.
func (c *agentCluster) waitHealthy(what string, n int, version int64) []opsInstance {
	c.t.Helper()
	var healthy []opsInstance
	waitErr(c.t, what, 90*time.Second, func() error {
		live := c.live()
		healthy = nil
		for _, in := range live {
			if in.State == "healthy" && (version == 0 || in.Version == version) {
				healthy = append(healthy, in)
			}
		}
		if len(live) != n || len(healthy) != n {
			return fmt.Errorf("want %d healthy at version %d, instances: %v", n, version, live)
		}
		return nil
	}, c.sched)
	return healthy
}

// checkServing: each instance answers on its node's address and host
// port with its own ID and port.
func (c *agentCluster) checkServing(healthy []opsInstance) {
	c.t.Helper()
	for _, in := range healthy {
		ip, port := c.nodes[in.Node], in.HostPorts["http"]
		body, err := httpGet(fmt.Sprintf("http://%s:%d/", ip, port))
		if want := fmt.Sprintf("%s %d", in.ID, port); err != nil || body != want {
			c.t.Errorf("instance %s on %s: GET %s:%d: %q %v, want %q", in.ID, in.Node, ip, port, body, err, want)
		}
	}
}

// consulEntries is the app's service in Consul: instance ID → entry.
func (c *agentCluster) consulEntries(passing bool) (map[string]*consul.AgentService, error) {
	entries, _, err := c.cons.Health().Service(c.app, "", passing, nil)
	if err != nil {
		return nil, err
	}
	out := map[string]*consul.AgentService{}
	for _, en := range entries {
		out[en.Service.ID] = en.Service
	}
	return out, nil
}

// waitConsul waits until Consul lists exactly these instances under the
// app's name, passing, each at its node's address and host port.
func (c *agentCluster) waitConsul(what string, healthy []opsInstance) {
	c.t.Helper()
	waitErr(c.t, what, time.Minute, func() error {
		got, err := c.consulEntries(false)
		if err != nil {
			return err
		}
		passing, err := c.consulEntries(true)
		if err != nil {
			return err
		}
		list := map[string]string{}
		for id, s := range got {
			list[id] = fmt.Sprintf("%s:%d", s.Address, s.Port)
		}
		for _, in := range healthy {
			if want := fmt.Sprintf("%s:%d", c.nodes[in.Node], in.HostPorts["http"]); list[in.ID] != want || passing[in.ID] == nil {
				return fmt.Errorf("Consul lists %v (%d passing), want %s at %s, passing", list, len(passing), in.ID, want)
			}
		}
		if len(got) != len(healthy) {
			return fmt.Errorf("Consul lists %v, want %d entries", list, len(healthy))
		}
		return nil
	})
}

// containers is the app's containers (running or not) on every node.
func (c *agentCluster) containers() []string {
	c.t.Helper()
	out := []string{}
	for node := range c.nodes {
		ids := harness.Docker(c.t, c.henv, "ps", "-aq", "--filter", "label=gaia.node="+node, "--filter", "label=gaia.app="+c.app)
		out = append(out, strings.Fields(ids)...)
	}
	sort.Strings(out)
	return out
}

// checkEndpoints: gaiactl app endpoints lists exactly these instances,
// each at its node's address and host port, its named port in ports,
// passing, canary when in canaries.
func (c *agentCluster) checkEndpoints(ins []opsInstance, canaries []string) {
	c.t.Helper()
	ctl := harness.Binary(c.t, "./cmd/gaiactl")
	out, err := exec.Command(ctl, "--consul", c.e.consul, "-o", "json", "app", "endpoints", c.app).CombinedOutput()
	if err != nil {
		c.t.Fatalf("gaiactl app endpoints: %v\n%s", err, out)
	}
	var eps []struct {
		Instance string         `json:"instance"`
		Node     string         `json:"node"`
		Address  string         `json:"address"`
		Port     int            `json:"port"`
		Ports    map[string]int `json:"ports"`
		Canary   bool           `json:"canary"`
		Status   string         `json:"status"`
	}
	if err := json.Unmarshal(out, &eps); err != nil {
		c.t.Fatalf("gaiactl app endpoints: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, ep := range eps {
		got[ep.Instance] = fmt.Sprintf("%s %s:%d http=%d %v %s", ep.Node, ep.Address, ep.Port, ep.Ports["http"], ep.Canary, ep.Status)
	}
	want := map[string]string{}
	for _, in := range ins {
		port := in.HostPorts["http"]
		want[in.ID] = fmt.Sprintf("%s %s:%d http=%d %v passing", in.Node, c.nodes[in.Node], port, port, slices.Contains(canaries, in.ID))
	}
	if !maps.Equal(got, want) {
		c.t.Errorf("gaiactl app endpoints:\n got %v\nwant %v", got, want)
	}
}

// gaiactl runs gaiactl against the scheduler.
func (c *agentCluster) gaiactl(args ...string) *exec.Cmd {
	ctl := harness.Binary(c.t, "./cmd/gaiactl")
	return exec.Command(ctl, append([]string{"--server", c.sched.URL(), "--token", schedAdmin}, args...)...)
}

// checkLogs: gaiactl app logs streams an instance's output from its node's
// agent (one instance; every instance, prefixed; --follow keeps going), and
// the agent refuses a wrong node token.
func (c *agentCluster) checkLogs(ins []opsInstance) {
	c.t.Helper()
	logs := func(args ...string) *exec.Cmd {
		return c.gaiactl(append([]string{"app", "logs", c.app, "--agent-port", c.agentPort}, args...)...)
	}
	in := ins[0]
	out, err := logs("--instance", in.ID, "--tail", "5", "--node-token", schedNode).CombinedOutput()
	if want := "started " + in.ID; err != nil || strings.TrimSpace(string(out)) != want {
		c.t.Errorf("gaiactl app logs --instance %s: %v %q, want %q", in.ID, err, out, want)
	}
	cmd := logs()
	cmd.Env = append(os.Environ(), "GAIA_NODE_TOKEN="+schedNode)
	out, err = cmd.CombinedOutput()
	var want []string
	for _, in := range ins {
		want = append(want, in.ID+" | started "+in.ID)
	}
	got := strings.Split(strings.TrimSpace(string(out)), "\n")
	sort.Strings(got)
	sort.Strings(want)
	if err != nil || !slices.Equal(got, want) {
		c.t.Errorf("gaiactl app logs (every instance): %v\n got %q\nwant %q", err, got, want)
	}
	out, err = logs("--instance", in.ID, "--node-token", "not-the-node-token").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "401") {
		c.t.Errorf("gaiactl app logs with a wrong node token: %v %q, want a 401 refusal", err, out)
	}
	// --follow: the line arrives and the stream stays open.
	cmd = logs("--instance", in.ID, "--follow", "--node-token", schedNode)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- line
	}()
	exited := make(chan error, 1)
	select {
	case line := <-lines:
		if strings.TrimSpace(line) != "started "+in.ID {
			c.t.Errorf("gaiactl app logs --follow: first line %q", line)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		c.t.Fatalf("gaiactl app logs --follow printed nothing in 30s")
	}
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		c.t.Errorf("gaiactl app logs --follow ended while the instance runs: %v", err)
		return
	case <-time.After(time.Second):
	}
	cmd.Process.Kill()
	<-exited
}

// checkExec: gaiactl app exec runs a command in the instance's container
// through its node's agent: its output comes back, gaiactl exits with its
// code, and a wrong node token is refused.
func (c *agentCluster) checkExec(in opsInstance) {
	c.t.Helper()
	exe := func(token string, cmd ...string) *exec.Cmd {
		return c.gaiactl(append([]string{"app", "exec", c.app, "--instance", in.ID, "--agent-port", c.agentPort, "--node-token", token, "--"}, cmd...)...)
	}
	out, err := exe(schedNode, "/bin/busybox", "cat", "/www/index.html").CombinedOutput()
	if want := fmt.Sprintf("%s %d", in.ID, in.HostPorts["http"]); err != nil || strings.TrimSpace(string(out)) != want {
		c.t.Errorf("gaiactl app exec cat: %v %q, want %q", err, out, want)
	}
	out, err = exe(schedNode, "/bin/busybox", "sh", "-c", `echo "in $GAIA_INSTANCE"; exit 3`).CombinedOutput()
	var xe *exec.ExitError
	if !errors.As(err, &xe) || xe.ExitCode() != 3 || strings.TrimSpace(string(out)) != "in "+in.ID {
		c.t.Errorf("gaiactl app exec of a command exiting 3: %v %q, want exit status 3 and %q", err, out, "in "+in.ID)
	}
	out, err = exe("not-the-node-token", "/bin/busybox", "true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "401") {
		c.t.Errorf("gaiactl app exec with a wrong node token: %v %q, want a 401 refusal", err, out)
	}
}

// consulCanaries: the instances tagged canary in Consul (under the app's
// name, passing) are exactly want, and every entry is passing.
func (c *agentCluster) consulCanaries(want []string) error {
	all, err := c.consulEntries(false)
	if err != nil {
		return err
	}
	passing, err := c.consulEntries(true)
	if err != nil {
		return err
	}
	var tagged []string
	for id, s := range all {
		for _, tag := range s.Tags {
			if tag == "canary" {
				tagged = append(tagged, id)
			}
		}
	}
	sort.Strings(tagged)
	sort.Strings(want)
	if strings.Join(tagged, ",") != strings.Join(want, ",") || len(passing) != len(all) {
		return fmt.Errorf("Consul: %d entries, %d passing, tagged canary %v; want %v", len(all), len(passing), tagged, want)
	}
	return nil
}

// waitContainers waits until the app has n containers and Consul n entries.
func (c *agentCluster) waitContainers(what string, n int) {
	c.t.Helper()
	waitErr(c.t, what, time.Minute, func() error {
		got, err := c.consulEntries(false)
		if err != nil {
			return err
		}
		if cs := c.containers(); len(cs) != n || len(got) != n {
			return fmt.Errorf("containers %v, %d Consul entries; want %d of each", cs, len(got), n)
		}
		return nil
	})
}

func nodesOf(ins []opsInstance) map[string]int {
	out := map[string]int{}
	for _, in := range ins {
		out[in.Node]++
	}
	return out
}

// checkAutoRollback: an update (maxParallel 1, autoRollback, a short
// healthyDeadline) to a version whose health check fails (a path the
// instances answer 404) is rolled back automatically to good (the
// version the app's 2 instances run, healthy): meanwhile at least
// 2 - maxParallel of them stay healthy, and afterwards only good's spec
// runs (good's instances, or the rollback's, which equals it), healthy,
// in Consul, the failed version's instance gone.
func (c *agentCluster) checkAutoRollback(good int64) {
	c.t.Helper()
	upd := c.spec(2)
	upd["env"] = map[string]string{"RELEASE": "3"}
	upd["health"] = map[string]any{"type": "http", "port": "http", "path": "/missing", "interval": "1s", "timeout": "1s"}
	upd["update"] = map[string]any{"maxParallel": 1, "autoRollback": true, "healthyDeadline": "5s"}
	c.post("/v1/apps/"+c.app+"/update", upd)
	bad := c.appVersion()
	type appView struct {
		Version  int64   `json:"version"`
		Same     []int64 `json:"same"`
		Rollback *struct {
			From   int64  `json:"from"`
			To     int64  `json:"to"`
			Auto   bool   `json:"auto"`
			Reason string `json:"reason"`
		} `json:"rollback"`
	}
	var a appView
	sawBad := false
	waitErr(c.t, "the automatic rollback of the failing version", 90*time.Second, func() error {
		var states []string
		goodHealthy := 0
		for _, in := range c.live() {
			states = append(states, in.String())
			if in.Version == good && in.State == "healthy" {
				goodHealthy++
			}
			sawBad = sawBad || in.Version == bad
		}
		if goodHealthy < 1 {
			c.t.Fatalf("%d instances of version %d healthy during the update, want at least 2 - maxParallel = 1: %v", goodHealthy, good, states)
		}
		a = appView{}
		if code := call(c.t, c.sched.URL(), schedAdmin, "GET", "/v1/apps/"+c.app, nil, &a); code != http.StatusOK {
			return fmt.Errorf("GET app: %d", code)
		}
		if a.Rollback == nil {
			return fmt.Errorf("version %d, no rollback yet: %v", a.Version, states)
		}
		return nil
	}, c.sched)
	if r := a.Rollback; !r.Auto || r.From != bad || r.To != good || a.Version != bad+1 || !slices.Contains(a.Same, good) || !sawBad {
		c.t.Errorf("rollback %+v at version %d (same %v), want an automatic one from %d to %d at %d; an instance of %d seen: %v",
			*r, a.Version, a.Same, bad, good, bad+1, bad, sawBad)
	}
	var healthy []opsInstance
	waitErr(c.t, "only the good version's spec running after the rollback", 90*time.Second, func() error {
		live := c.live()
		healthy = nil
		for _, in := range live {
			if in.State == "healthy" && (in.Version == good || in.Version == a.Version) {
				healthy = append(healthy, in)
			}
		}
		if len(live) != 2 || len(healthy) != 2 {
			return fmt.Errorf("want 2 healthy at version %d or %d: %v", good, a.Version, live)
		}
		return nil
	}, c.sched)
	c.waitContainers("2 containers after the rollback", 2)
	c.waitConsul("Consul to list the instances after the rollback", healthy)
	c.checkServing(healthy)
}

// TestNodeAgentsAppOperations: issue 12's main flow with a real scheduler
// and three real agents. An app of 6 instances reaches healthy on the
// three nodes, each answering on its host port with its GAIA_INSTANCE and
// GAIA_PORT_HTTP, all 6 in Consul under the app's name with their ports
// (and so in gaiactl app endpoints), gaiactl app logs and exec reach
// them through their agents;
// scaled to 9, then 2; restarted (a rolling replacement: new instances
// at the new version, the old ones gone from Docker and Consul); a
// canary update with 1 canary shows exactly one instance tagged canary
// in Consul (and in gaiactl app endpoints), and promote moves both to the new version, none tagged; one
// instance stopped is replaced; the app stopped leaves no container nor
// Consul entry, started comes back, deleted leaves nothing.
func TestNodeAgentsAppOperations(t *testing.T) {
	c := newAgentCluster(t, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	c.post("/v1/apps", c.spec(6))

	healthy := c.waitHealthy("6 instances healthy", 6, 0)
	if on := nodesOf(healthy); len(on) != 3 {
		t.Errorf("6 instances on nodes %v, want all three", on)
	}
	c.checkServing(healthy)
	c.waitConsul("Consul to list the 6 instances", healthy)
	c.checkDNS(healthy)
	c.waitContainers("6 containers", 6)
	c.checkEndpoints(healthy, nil)
	c.checkLogs(healthy)
	c.checkExec(healthy[1])

	c.post("/v1/apps/"+c.app+"/scale", map[string]int{"instances": 9})
	healthy = c.waitHealthy("9 instances healthy after scaling up", 9, 0)
	if on := nodesOf(healthy); len(on) != 3 {
		t.Errorf("9 instances on nodes %v, want all three", on)
	}
	c.checkServing(healthy)
	c.waitConsul("Consul to list the 9 instances", healthy)
	c.waitContainers("9 containers", 9)

	c.post("/v1/apps/"+c.app+"/scale", map[string]int{"instances": 2})
	healthy = c.waitHealthy("2 instances healthy after scaling down", 2, 0)
	c.waitContainers("2 containers after scaling down", 2)
	c.waitConsul("Consul to list the 2 instances", healthy)

	before := map[string]bool{}
	for _, in := range healthy {
		before[in.ID] = true
	}
	c.post("/v1/apps/"+c.app+"/restart", nil)
	v := c.appVersion()
	healthy = c.waitHealthy("2 instances healthy at the restarted version", 2, v)
	for _, in := range healthy {
		if before[in.ID] {
			t.Errorf("instance %s survived the rolling restart", in.ID)
		}
	}
	c.waitContainers("2 containers after the restart", 2)
	c.checkServing(healthy)
	c.waitConsul("Consul to list the restarted instances", healthy)

	// A canary update: one instance moves to the new version, tagged
	// canary in Consul; the other stays. Promote: both on the new version,
	// none tagged.
	old := c.appVersion()
	upd := c.spec(2)
	upd["env"] = map[string]string{"RELEASE": "2"}
	upd["update"] = map[string]any{"canary": 1}
	c.post("/v1/apps/"+c.app+"/update", upd)
	v = c.appVersion()
	waitErr(t, "one canary at the new version, tagged in Consul, beside one old instance", 90*time.Second, func() error {
		byVersion := map[int64][]string{}
		var states []string
		for _, in := range c.live() {
			states = append(states, in.String())
			if in.State == "healthy" {
				byVersion[in.Version] = append(byVersion[in.Version], in.ID)
			}
		}
		if len(byVersion[v]) != 1 || len(byVersion[old]) != 1 || len(states) != 2 {
			return fmt.Errorf("want one healthy at v%d and one at v%d: %v", v, old, states)
		}
		return c.consulCanaries(byVersion[v])
	}, c.sched)
	var canary []string
	for _, in := range c.live() {
		if in.Version == v {
			canary = append(canary, in.ID)
		}
	}
	c.checkEndpoints(c.live(), canary)
	c.post("/v1/apps/"+c.app+"/promote", nil)
	healthy = c.waitHealthy("both instances at the new version after the promote", 2, v)
	waitErr(t, "no canary tag in Consul after the promote", time.Minute, func() error { return c.consulCanaries(nil) })
	c.waitConsul("Consul to list the promoted instances", healthy)
	c.checkServing(healthy)
	c.checkAutoRollback(v)

	victim := healthy[0]
	c.post("/v1/instances/"+victim.ID+"/stop", nil)
	waitErr(t, "the stopped instance replaced", 90*time.Second, func() error {
		var states []string
		n := 0
		for _, in := range c.live() {
			states = append(states, in.String())
			if in.ID == victim.ID {
				return fmt.Errorf("%s still live: %v", victim.ID, states)
			}
			if in.State == "healthy" {
				n++
			}
		}
		if n != 2 {
			return fmt.Errorf("instances: %v", states)
		}
		return nil
	}, c.sched)
	healthy = c.waitHealthy("2 instances healthy after the replacement", 2, 0)
	c.checkServing(healthy)
	c.waitConsul("Consul to list the replacement, not the stopped instance", healthy)
	c.waitContainers("2 containers after the replacement", 2)

	c.post("/v1/apps/"+c.app+"/stop", nil)
	c.waitContainers("no container nor Consul entry after stopping the app", 0)
	c.post("/v1/apps/"+c.app+"/start", nil)
	healthy = c.waitHealthy("2 instances healthy after starting the app", 2, 0)
	c.checkServing(healthy)
	c.waitConsul("Consul to list the started instances", healthy)

	if code := call(t, c.sched.URL(), schedAdmin, "DELETE", "/v1/apps/"+c.app, nil, nil); code/100 != 2 {
		t.Fatalf("delete: %d", code)
	}
	c.waitContainers("no container nor Consul entry after the delete", 0)
}

// checkDNS: Consul's DNS answers the app's SRV name with exactly these
// instances, each at its node's address and host port.
func (c *agentCluster) checkDNS(ins []opsInstance) {
	c.t.Helper()
	dnsAddr := harness.Start(c.t, harness.Consul).Get(c.t, "GAIA_TEST_CONSUL_DNS")
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsAddr)
	}}
	want := []string{}
	for _, in := range ins {
		want = append(want, fmt.Sprintf("%s:%d", c.nodes[in.Node], in.HostPorts["http"]))
	}
	sort.Strings(want)
	var got []string
	waitErr(c.t, "Consul DNS to answer "+c.app+".service.consul", time.Minute, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, srvs, err := r.LookupSRV(ctx, c.app, "tcp", "service.consul")
		if err != nil {
			return err
		}
		got = nil
		for _, srv := range srvs {
			// A target is the node's name in Consul; its A record is the
			// service's address.
			addrs, err := r.LookupHost(ctx, srv.Target)
			if err != nil {
				return fmt.Errorf("resolving %s: %v", srv.Target, err)
			}
			for _, a := range addrs {
				got = append(got, fmt.Sprintf("%s:%d", a, srv.Port))
			}
		}
		sort.Strings(got)
		if !slices.Equal(got, want) {
			return fmt.Errorf("SRV %s answers %v, want %v", c.app, got, want)
		}
		return nil
	})
}

// withApp is the cluster driving another app (its Consul entries removed
// at the end of the test).
func (c *agentCluster) withApp(name string) *agentCluster {
	d := *c
	d.app = c.app + "-" + name
	c.t.Cleanup(func() {
		svcs, _ := c.cons.Agent().Services()
		for id, s := range svcs {
			if s.Service == d.app {
				c.cons.Agent().ServiceDeregister(id)
			}
		}
	})
	return &d
}

// running is the IDs of the app's running containers on node.
func (c *agentCluster) running(node string) []string {
	c.t.Helper()
	ids := harness.Docker(c.t, c.henv, "ps", "-q", "--no-trunc", "--filter", "label=gaia.node="+node, "--filter", "label=gaia.app="+c.app)
	out := strings.Fields(ids)
	sort.Strings(out)
	return out
}

func (c *agentCluster) delete() {
	c.t.Helper()
	if code := call(c.t, c.sched.URL(), schedAdmin, "DELETE", "/v1/apps/"+c.app, nil, nil); code/100 != 2 {
		c.t.Fatalf("delete %s: %d", c.app, code)
	}
	c.waitContainers("no container nor Consul entry after the delete of "+c.app, 0)
}

func ids(ins []opsInstance) []string {
	var out []string
	for _, in := range ins {
		out = append(out, in.ID)
	}
	sort.Strings(out)
	return out
}

// TestNodeAgentsFailures: issue 12's agent failures with a real scheduler
// and three real agents (one cluster, one app per case).
//   - kill -9 of an agent while its instance runs: the container keeps
//     running; the restarted agent adopts it (same container, none
//     created), the scheduler's view and Consul unchanged.
//   - an agent stopped (SIGSTOP) longer than the node timeout: its
//     instance is replaced on the other nodes; when it resumes, its stale
//     container is removed and Consul no longer lists it.
//   - a command that exits at once: restarted with back-off, then failed
//     with its exit code, listed so, counted in the app's status.
func TestNodeAgentsFailures(t *testing.T) {
	c := newAgentCluster(t, "127.0.0.5", "127.0.0.6", "127.0.0.7")

	// kill -9 and adoption
	d := c.withApp("adopt")
	d.post("/v1/apps", d.spec(3))
	healthy := d.waitHealthy("3 instances healthy", 3, 0)
	if on := nodesOf(healthy); len(on) != 3 {
		t.Fatalf("3 instances on nodes %v, want one on each", on)
	}
	d.waitConsul("Consul to list the 3 instances", healthy)
	all := d.containers()
	node := healthy[0].Node
	mine := d.running(node)
	if len(mine) != 1 {
		t.Fatalf("running containers on %s: %v, want 1", node, mine)
	}
	c.procs[node].Kill()
	if got := d.running(node); !slices.Equal(got, mine) {
		t.Fatalf("after kill -9 of its agent, %s runs %v, want %v", node, got, mine)
	}
	c.procs[node] = runNodeAgent(t, c.bin, c.configs[node], c.agents[node])
	agentURL := "http://" + c.agents[node]
	waitErr(t, "the restarted agent to adopt its container", time.Minute, func() error {
		if n := harness.Metric(t, agentURL, "gaia_nodeagent_container_operations_total", `op="adopt"`); n != 1 {
			return fmt.Errorf("%v adopted", n)
		}
		return nil
	}, c.procs[node])
	if n := harness.Metric(t, agentURL, "gaia_nodeagent_container_operations_total", `op="create"`); n != 0 {
		t.Errorf("the restarted agent created %v containers, want 0", n)
	}
	after := d.waitHealthy("3 instances healthy after the agent's restart", 3, 0)
	if !slices.Equal(ids(after), ids(healthy)) || !slices.Equal(d.containers(), all) || !slices.Equal(d.running(node), mine) {
		t.Errorf("after the restart: instances %v containers %v (%v on %s), want %v, %v, %v",
			ids(after), d.containers(), d.running(node), node, ids(healthy), all, mine)
	}
	d.waitConsul("Consul to list the same 3 instances", healthy)

	// an agent stopped longer than the node timeout
	node = healthy[1].Node
	stale := d.running(node)
	if err := c.procs[node].Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			c.procs[node].Signal(syscall.SIGCONT)
		}
	}
	defer resume()
	var moved []opsInstance
	waitErr(t, "the stopped agent's instance replaced on the other nodes", 90*time.Second, func() error {
		moved = nil
		var states []string
		for _, in := range d.live() {
			states = append(states, in.String())
			if in.State == "healthy" && in.Node != node {
				moved = append(moved, in)
			}
		}
		if len(moved) != 3 || len(states) != 3 {
			return fmt.Errorf("want 3 healthy off %s: %v", node, states)
		}
		return nil
	}, c.sched)
	if got := d.running(node); !slices.Equal(got, stale) {
		t.Fatalf("while its agent is stopped, %s runs %v, want %v", node, got, stale)
	}
	resume()
	waitErr(t, "the resumed agent to remove its stale container", time.Minute, func() error {
		if ids := harness.Docker(t, c.henv, "ps", "-aq", "--filter", "label=gaia.node="+node, "--filter", "label=gaia.app="+d.app); ids != "" {
			return fmt.Errorf("%s still has %s", node, ids)
		}
		return nil
	}, c.procs[node])
	d.waitConsul("Consul to list the 3 replacements, not the stale instance", moved)
	d.waitContainers("3 containers", 3)
	d.delete()

	// a command that exits at once: restarted with back-off by its agent,
	// then failed with its exit code, listed as such (gaiactl app
	// instances --all), its replacements held by the scheduler's back-off
	d = c.withApp("exits")
	spec := d.spec(1)
	spec["command"] = []string{"/bin/busybox", "sh", "-c", "echo bye; exit 3"}
	delete(spec, "health")
	spec["restart"] = map[string]any{"attempts": 2, "delay": "1s", "backoff": 2}
	d.post("/v1/apps", spec)
	var failed opsInstance
	backoff := ""
	waitErr(t, "an instance failed after its restarts", time.Minute, func() error {
		var page struct {
			Items []opsInstance `json:"items"`
		}
		call(t, c.sched.URL(), schedAdmin, "GET", "/v1/apps/"+d.app+"/instances?all=true&limit=100", nil, &page)
		for _, in := range page.Items {
			if in.State == "starting" && strings.Contains(in.Reason, "restart") {
				backoff = in.Reason
			}
			if in.State == "failed" {
				failed = in
				return nil
			}
		}
		return fmt.Errorf("instances: %v", page.Items)
	}, c.sched)
	if failed.ExitCode != 3 || failed.Restarts != 2 || !strings.Contains(failed.Reason, "exited with code 3") {
		t.Errorf("failed instance %v: exit code %d, %d restarts; want exit code 3 after 2 restarts, the reason naming it", failed, failed.ExitCode, failed.Restarts)
	}
	t.Logf("a restart's back-off as reported: %q", backoff)
	out, err := d.gaiactl("app", "instances", d.app, "--all").CombinedOutput()
	if line := lineWith(string(out), failed.ID); err != nil || !strings.Contains(line, "failed") {
		t.Errorf("gaiactl app instances --all: %v, the failed instance's line %q in:\n%s", err, line, out)
	}
	var app struct {
		Status struct {
			Failures    int    `json:"failures"`
			LastFailure string `json:"lastFailure"`
		} `json:"status"`
	}
	call(t, c.sched.URL(), schedAdmin, "GET", "/v1/apps/"+d.app, nil, &app)
	if app.Status.Failures < 1 || !strings.Contains(app.Status.LastFailure, failed.ID) {
		t.Errorf("app status %+v: want the failure of %s counted and named", app.Status, failed.ID)
	}
	d.delete()

	c.registryOutage()
}

// registryOutage: the registry unreachable while two instances' image is
// pulled, first down (connections closed), then behind a black hole
// (connections accepted, never answered: each attempt cut by the agents'
// stall timeout). The instances stay pulling, past the pull's attempts,
// with the error in their reason and no container made; once the
// registry is back they start by themselves.
func (c *agentCluster) registryOutage() {
	t := c.t
	for _, mode := range []struct {
		name string
		mode harness.RelayMode
		errs []string // one of them in the instances' reason
	}{{"down", harness.RelayCut, []string{"EOF", "connection reset"}}, {"hanging", harness.RelayHang, []string{"no progress"}}} {
		d := c.withApp("outage-" + mode.name)
		host := strings.TrimPrefix(c.e.registry, "http://")
		tag := host + "/agentops/" + d.app + ":v1"
		harness.BuildImage(t, c.henv, tag, 1024)
		harness.Docker(t, c.henv, "push", tag)
		harness.Docker(t, c.henv, "rmi", tag)
		c.relay.Set(mode.mode)
		spec := d.spec(2)
		spec["image"] = "agentops/" + d.app + ":v1"
		d.post("/v1/apps", spec)
		var seen []opsInstance
		waitErr(t, fmt.Sprintf("2 instances pulling and retrying while the registry is %s", mode.name), 2*time.Minute, func() error {
			seen = d.live()
			retried := 0
			for _, in := range seen {
				if in.State != "pending" && in.State != "assigned" && in.State != "pulling" {
					t.Fatalf("an instance %v while the registry is %s, want pulling", in, mode.name)
				}
				// Past the pull's attempts (pull.attempts 2 below): an
				// unreachable registry is retried for as long as it lasts.
				if m := retryReason.FindStringSubmatch(in.Reason); m != nil && atoi(m[1]) > 2 &&
					slices.ContainsFunc(mode.errs, func(e string) bool { return strings.Contains(in.Reason, e) }) {
					retried++
				}
			}
			if retried != 2 {
				return fmt.Errorf("want 2 instances retrying past attempt 2 with one of %q in the reason: %v", mode.errs, seen)
			}
			return nil
		}, c.agentProcs()...)
		t.Logf("while the registry is %s: %v", mode.name, seen)
		if ids := harness.Docker(t, c.henv, "ps", "-aq", "--filter", "label=gaia.app="+d.app); ids != "" {
			t.Fatalf("containers %s made while the image could not be pulled", ids)
		}
		c.relay.Set(harness.RelayOpen)
		d.checkServing(d.waitHealthy(fmt.Sprintf("2 instances healthy once the registry is back (was %s)", mode.name), 2, 0))
		d.delete()
	}
}

// agentProcs are the agents' processes (for their logs), by node name.
func (c *agentCluster) agentProcs() []*harness.Registry {
	var out []*harness.Registry
	for _, node := range slices.Sorted(maps.Keys(c.procs)) {
		out = append(out, c.procs[node])
	}
	return out
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// retryReason is a pulling instance's reason while its pull is retried.
var retryReason = regexp.MustCompile(`attempt (\d+) after: `)

// lineWith is the first line of out containing s.
func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}
