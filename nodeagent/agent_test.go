package nodeagent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/client"
	consul "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/crypto/bcrypt"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
	"github.com/gaia-registry/gaia/tests/harness"
)

// testEnv is a real dockerd (with bridge networking), the harness's Consul
// and a gaia-registry holding the test images.
type testEnv struct {
	h        harness.Env
	docker   *client.Client
	consul   *consul.Client
	registry *harness.Registry
	node     string // a node name of this test only
	// dockerConfig is the docker CLI's config directory holding the
	// login (a private one: logins do not leak into other tests).
	dockerConfig string
	dataDir      string // the agents' node.datadir
}

const robotUser, robotPassword = "robot", "r0bot-secret"

// robotAuth is the agent's encoded robot credential.
func robotAuth(t *testing.T, addr string) string {
	a, err := registry.EncodeAuthConfig(registry.AuthConfig{Username: robotUser, Password: robotPassword, ServerAddress: addr})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func setup(t *testing.T) *testEnv {
	t.Helper()
	h := harness.Start(t, harness.Dockerd, harness.Consul)
	dc, err := client.NewClientWithOpts(client.WithHost(h.Get(t, "GAIA_TEST_DOCKER_HOST")), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dc.Close() })
	// Instances need bridge networking and published ports: a dockerd
	// started with --bridge=none (svc.sh before the node agent) has no
	// "bridge" network, and nothing here can work without it.
	nw, err := dc.NetworkInspect(t.Context(), "bridge", network.InspectOptions{})
	if err != nil || nw.Driver != "bridge" {
		t.Fatalf("dockerd at %s has no bridge network (%v): it must run with its own bridge "+
			"(tests/services/svc.sh start dockerd restarts one started with --bridge=none)", h["GAIA_TEST_DOCKER_HOST"], err)
	}
	cc := consul.DefaultConfig()
	cc.Address = h.Get(t, "GAIA_TEST_CONSUL_ADDR")
	cons, err := consul.NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	// The registry wants credentials for pulls too: the agent pulls with
	// its robot credential.
	hash, _ := bcrypt.GenerateFromPassword([]byte(robotPassword), bcrypt.MinCost)
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	os.WriteFile(htpasswd, []byte(robotUser+":"+string(hash)+"\n"), 0o600)
	addr := harness.FreeAddr(t)
	reg := harness.StartRegistry(t, addr, harness.RegistryConfig(addr, harness.NewDatabase(t), t.TempDir())+
		fmt.Sprintf("auth: {anonymouspull: false, htpasswd: {realm: gaia-agent-test, path: %q}}\n", htpasswd))
	e := &testEnv{h: h, docker: dc, consul: cons, registry: reg, node: "agent-test-" + randHex(4), dockerConfig: t.TempDir(),
		dataDir: t.TempDir()}
	harness.Docker(t, h, "--config", e.dockerConfig, "login", "-u", robotUser, "-p", robotPassword, addr)
	t.Cleanup(func() { e.cleanup() })
	return e
}

// cleanup removes every container and Consul service of the test's node.
func (e *testEnv) cleanup() {
	ctx := context.Background()
	list, _ := e.docker.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", LabelNode+"="+e.node))})
	for _, c := range list {
		e.docker.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	}
	svcs, _ := e.consul.Agent().Services()
	for id, s := range svcs {
		if s.Meta["node"] == e.node {
			e.consul.Agent().ServiceDeregister(id)
		}
	}
}

// pushImage builds a test image (busybox and a layer of random bytes),
// pushes it to the registry, removes it from dockerd and returns its
// reference by digest and its number of blobs.
func (e *testEnv) pushImage(t *testing.T, name string) (string, int) {
	t.Helper()
	tag := e.registry.Addr + "/agenttest/" + name + ":v1"
	harness.BuildImage(t, e.h, tag, 4096)
	harness.Docker(t, e.h, "--config", e.dockerConfig, "push", tag)
	digests := harness.Docker(t, e.h, "inspect", "--format", "{{range .RepoDigests}}{{println .}}{{end}}", tag)
	ref := strings.TrimSpace(strings.Split(digests, "\n")[0])
	if !strings.Contains(ref, "@sha256:") {
		t.Fatalf("no repo digest after push: %q", digests)
	}
	harness.Docker(t, e.h, "rmi", tag)
	if _, err := harness.DockerErr(e.h, "image", "inspect", ref); err == nil {
		t.Fatalf("%s is still in dockerd after rmi", ref)
	}
	return ref, 3 // config, busybox layer, random layer
}

func (e *testEnv) agent(t *testing.T, sched Scheduler, metrics *Metrics) *Agent {
	return New(Options{
		Node: e.node, Address: "127.0.0.1", Capacity: resource.Vector{4000, 8 << 30},
		Docker: e.docker, Scheduler: sched, Consul: e.consul,
		Puller: &Puller{Docker: e.docker, Auth: robotAuth(t, e.registry.Addr), Stall: 30 * time.Second, Attempts: 2,
			Backoff: 100 * time.Millisecond, MaxBackoff: time.Second},
		Gateway: e.registry.Addr, DataDir: e.dataDir,
		PublishIP: "127.0.0.1", StopTimeout: 2 * time.Second,
		PollWait: 5 * time.Second, ReportInterval: time.Second, RetryInterval: 200 * time.Millisecond,
		UsageInterval: 500 * time.Millisecond, Resync: time.Second,
		Log: testLogger(), Metrics: metrics,
	})
}

// runAgent runs an agent until the returned stop is called (which waits
// for Run to return).
func runAgent(t *testing.T, a *Agent) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent.Run: %v", err)
			}
		case <-time.After(time.Minute):
			t.Error("agent.Run did not return within a minute of its context's end")
		}
	}
	t.Cleanup(stop)
	return stop
}

// startCount is how many starts gaia_nodeagent_start_seconds observed
// with the image label.
func startCount(t *testing.T, m *Metrics, image string) uint64 {
	t.Helper()
	var out dto.Metric
	if err := m.startSecs.WithLabelValues(image).(prometheus.Histogram).Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetHistogram().GetSampleCount()
}

func freePort(t *testing.T) int {
	_, p, _ := net.SplitHostPort(harness.FreeAddr(t))
	n, _ := strconv.Atoi(p)
	return n
}

const webCommand = `mkdir -p /www && echo "$GAIA_INSTANCE $GAIA_PORT_HTTP $GAIA_APP $GAIA_HOST_IP" > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www`

func webInstance(t *testing.T, app, id, ref string) DesiredInstance {
	return DesiredInstance{
		ID: id, App: app, Version: 1, Image: ref,
		Command:     []string{"/bin/busybox", "sh", "-c", webCommand},
		Env:         map[string]string{"GREETING": "hello"},
		Resources:   resource.Vector{resource.CPU: 250, resource.Memory: 64 << 20},
		MemoryLimit: 128 << 20,
		CPULimit:    500,
		CPUSet:      "0",
		Ports:       []model.Port{{Name: "http", ContainerPort: 8080, Protocol: "tcp", HostPort: freePort(t)}},
		Health:      &model.Health{Type: model.HealthHTTP, Port: "http", Path: "/", Interval: model.Duration(time.Second), Timeout: model.Duration(time.Second)},
		Restart:     model.Restart{Attempts: 3, Interval: model.Duration(time.Minute), Delay: model.Duration(100 * time.Millisecond), Backoff: 2},
		Labels:      map[string]string{"team": "search"},
		Desired:     model.DesiredRun,
	}
}

// waitFor polls cond until it holds; after a generous bound (not a
// performance threshold: a hang) it fails with cond's last description.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %s", what, desc)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitStates waits until every id is reported in state.
func waitStates(t *testing.T, s *fakeScheduler, state model.InstanceState, ids ...string) map[string]InstanceReport {
	t.Helper()
	var reps map[string]InstanceReport
	waitFor(t, fmt.Sprintf("%v %s", ids, state), func() (bool, string) {
		reps = s.Reports()
		var bad []string
		for _, id := range ids {
			if r := reps[id]; r.State != state {
				bad = append(bad, fmt.Sprintf("%s: %s %q", id, r.State, r.Reason))
			}
		}
		return len(bad) == 0, strings.Join(bad, "; ")
	})
	return reps
}

// containers lists the node's containers: instance → container IDs.
func (e *testEnv) containers(t *testing.T) map[string][]string {
	t.Helper()
	list, err := e.docker.ContainerList(t.Context(), container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", LabelNode+"="+e.node))})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, c := range list {
		out[c.Labels[LabelInstance]] = append(out[c.Labels[LabelInstance]], c.ID)
	}
	return out
}

func get(t *testing.T, url string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}

// consulEntries is what Consul lists under app: instance ID → service.
func (e *testEnv) consulEntries(t *testing.T, app string, passingOnly bool) map[string]*consul.AgentService {
	t.Helper()
	entries, _, err := e.consul.Health().Service(app, "", passingOnly, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*consul.AgentService{}
	for _, en := range entries {
		out[en.Service.ID] = en.Service
	}
	return out
}

func keys[M ~map[string]V, V any](m M) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// eventLog records dockerd's events from its start on.
type eventLog struct {
	mu   sync.Mutex
	msgs []events.Message
}

func (e *testEnv) events(t *testing.T) *eventLog {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	l := &eventLog{}
	msgs, _ := e.docker.Events(ctx, events.ListOptions{})
	go func() {
		for m := range msgs {
			l.mu.Lock()
			l.msgs = append(l.msgs, m)
			l.mu.Unlock()
		}
	}()
	return l
}

// find is the index of the first event match accepts, -1 if none.
func (l *eventLog) find(match func(events.Message) bool) (int, events.Message) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, m := range l.msgs {
		if match(m) {
			return i, m
		}
	}
	return -1, events.Message{}
}

func containerEvent(action events.Action, instance string) func(events.Message) bool {
	return func(m events.Message) bool {
		return m.Type == events.ContainerEventType && m.Action == action && m.Actor.Attributes[LabelInstance] == instance
	}
}

// TestAgentRunsAdoptsRemoves: instances start with the right environment,
// ports, labels and limits, answer on their published ports, are listed
// in Consul under the app's name; a restarted agent adopts them; ones no
// longer wanted (and strays) are stopped, removed and deregistered; twenty
// instances of a new image cause one pull (the registry's metrics count
// it) and twenty start-latency observations; a command that exits at once
// is restarted with back-off, then failed with its exit code; an image
// that does not exist fails with the registry's error.
func TestAgentRunsAdoptsRemoves(t *testing.T) {
	e := setup(t)
	ref, _ := e.pushImage(t, "web-"+randHex(3))
	app := "agentweb-" + randHex(3)
	web := []DesiredInstance{webInstance(t, app, app+"-0", ref), webInstance(t, app, app+"-1", ref)}
	web[1].Canary = true
	sched := newFakeScheduler()
	sched.Set(web...)
	stopA := runAgent(t, e.agent(t, sched, nil))
	parent := t
	var b *Agent // the agent restarted, running from the second subtest on

	var ids map[string][]string
	t.Run("run", func(t *testing.T) {
		waitStates(t, sched, model.Healthy, web[0].ID, web[1].ID)
		for _, d := range web {
			hp := d.Ports[0].HostPort
			body, err := get(t, fmt.Sprintf("http://127.0.0.1:%d/", hp))
			if want := fmt.Sprintf("%s %d %s 127.0.0.1", d.ID, hp, app); err != nil || body != want {
				t.Errorf("GET 127.0.0.1:%d: %q, %v; want %q", hp, body, err, want)
			}
			c, err := e.docker.ContainerInspect(t.Context(), ContainerName(d.ID))
			if err != nil {
				t.Fatal(err)
			}
			env := strings.Join(c.Config.Env, "\n")
			for _, kv := range []string{"GAIA_APP=" + app, "GAIA_INSTANCE=" + d.ID, "GAIA_HOST_IP=127.0.0.1",
				"GAIA_PORT_HTTP=" + strconv.Itoa(hp), "GREETING=hello"} {
				if !strings.Contains(env, kv) {
					t.Errorf("%s: env lacks %s:\n%s", d.ID, kv, env)
				}
			}
			for k, v := range map[string]string{LabelNode: e.node, LabelApp: app, LabelInstance: d.ID, LabelVersion: "1", "team": "search"} {
				if c.Config.Labels[k] != v {
					t.Errorf("%s: label %s=%q, want %q", d.ID, k, c.Config.Labels[k], v)
				}
			}
			r := c.HostConfig.Resources
			if r.CPUShares != 256 || r.CPUQuota != 50000 || r.CPUPeriod != 100000 || r.MemoryReservation != 64<<20 || r.Memory != 128<<20 || r.CpusetCpus != "0" {
				t.Errorf("%s: resources shares %d quota %d/%d reservation %d limit %d cpuset %q; want 256, 50000/100000, 64Mi, 128Mi, 0",
					d.ID, r.CPUShares, r.CPUQuota, r.CPUPeriod, r.MemoryReservation, r.Memory, r.CpusetCpus)
			}
			if c.HostConfig.NetworkMode != "bridge" || c.NetworkSettings.Networks["bridge"] == nil {
				t.Errorf("%s: network mode %q, networks %v; want bridge", d.ID, c.HostConfig.NetworkMode, keys(c.NetworkSettings.Networks))
			}
		}
		waitFor(t, "both instances passing in Consul", func() (bool, string) {
			got := e.consulEntries(t, app, true)
			return len(got) == 2, fmt.Sprintf("passing: %v", keys(got))
		})
		got := e.consulEntries(t, app, true)
		for _, d := range web {
			s := got[d.ID]
			hp := strconv.Itoa(d.Ports[0].HostPort)
			if s.Service != app || s.Address != "127.0.0.1" || s.Port != d.Ports[0].HostPort ||
				s.Meta["port_http"] != hp || s.Meta["containerport_http"] != "8080/tcp" || s.Meta["version"] != "1" {
				t.Errorf("Consul entry of %s: %+v", d.ID, s)
			}
			canary := false
			for _, tag := range s.Tags {
				canary = canary || tag == "canary"
			}
			if canary != d.Canary {
				t.Errorf("%s: tags %v, canary %v", d.ID, s.Tags, d.Canary)
			}
		}
		waitFor(t, "the instances' memory usage reported", func() (bool, string) {
			reps := sched.Reports()
			sched.mu.Lock()
			node := sched.nodeUsage
			sched.mu.Unlock()
			a, b := reps[web[0].ID].Usage[resource.Memory], reps[web[1].ID].Usage[resource.Memory]
			return a > 0 && b > 0 && node[resource.Memory] >= a+b,
				fmt.Sprintf("memory %d and %d, node %d", a, b, node[resource.Memory])
		})
		ids = e.containers(t)
		if len(ids) != 2 || len(ids[web[0].ID]) != 1 || len(ids[web[1].ID]) != 1 {
			t.Fatalf("containers of the node: %v", ids)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("restarted agent adopts", func(t *testing.T) {
		stopA() // a graceful shutdown leaves the instances running
		for _, d := range web {
			c, err := e.docker.ContainerInspect(t.Context(), ContainerName(d.ID))
			if err != nil {
				t.Fatalf("%s after the agent stopped: %v", d.ID, err)
			}
			if !c.State.Running {
				t.Fatalf("%s after the agent stopped: %+v", d.ID, c.State)
			}
		}
		sched.ForgetReports()
		metrics := NewMetrics(nil)
		b = e.agent(t, sched, metrics)
		runAgent(parent, b) // runs on in the following subtests
		waitStates(t, sched, model.Healthy, web[0].ID, web[1].ID)
		if now := e.containers(t); fmt.Sprint(now) != fmt.Sprint(ids) {
			t.Fatalf("containers after the restart %v, before %v", now, ids)
		}
		if n := testutil.ToFloat64(metrics.containerOp.WithLabelValues("adopt")); n != 2 {
			t.Errorf("%v adoptions, want 2", n)
		}
		if n := testutil.ToFloat64(metrics.containerOp.WithLabelValues("create")); n != 0 {
			t.Errorf("%v containers created, want 0", n)
		}
		if n := startCount(t, metrics, "pulled") + startCount(t, metrics, "present"); n != 0 {
			t.Errorf("%d adopted instances counted as starts, want 0", n)
		}
		// Nothing is being removed either (a removal starts within the
		// reconcile that adopts).
		b.mu.Lock()
		removing := len(b.orphans)
		b.mu.Unlock()
		if n := testutil.ToFloat64(metrics.containerOp.WithLabelValues("remove")); n != 0 || removing != 0 {
			t.Errorf("%v containers removed and %d being removed after adoption, want none", n, removing)
		}
	})

	t.Run("a registration Consul lost is put back", func(t *testing.T) {
		if err := e.consul.Agent().ServiceDeregister(web[0].ID); err != nil {
			t.Fatal(err)
		}
		waitFor(t, web[0].ID+" registered again", func() (bool, string) {
			got := e.consulEntries(t, app, false)
			return got[web[0].ID] != nil, fmt.Sprint(keys(got))
		})
	})

	t.Run("unwanted and stray containers removed", func(t *testing.T) {
		// A stray of this node (an instance the scheduler forgot) and a
		// container of another node, which the agent must leave alone.
		harness.Docker(t, e.h, "create", "--label", LabelNode+"="+e.node, "--label", LabelInstance+"=ghost",
			"--name", "gaia-ghost-"+e.node, ref, "/bin/busybox", "sleep", "600")
		other := harness.Docker(t, e.h, "create", "--label", LabelNode+"="+e.node+"-other", "--label", LabelInstance+"=x",
			ref, "/bin/busybox", "sleep", "600")
		t.Cleanup(func() { harness.DockerErr(e.h, "rm", "-f", other) })
		sched.Set(web[0])
		waitFor(t, "only "+web[0].ID+" left", func() (bool, string) {
			now := e.containers(t)
			return len(now) == 1 && len(now[web[0].ID]) == 1, fmt.Sprint(now)
		})
		if now := e.containers(t); now[web[0].ID][0] != ids[web[0].ID][0] {
			t.Errorf("%s's container changed: %v, was %v", web[0].ID, now[web[0].ID], ids[web[0].ID])
		}
		if got := e.consulEntries(t, app, false); len(got) != 1 || got[web[0].ID] == nil {
			t.Errorf("Consul lists %v under %s, want only %s", keys(got), app, web[0].ID)
		}
		if _, err := harness.DockerErr(e.h, "inspect", other); err != nil {
			t.Errorf("the other node's container was touched: %v", err)
		}
		if _, err := get(t, fmt.Sprintf("http://127.0.0.1:%d/", web[1].Ports[0].HostPort)); err == nil {
			t.Errorf("%s still answers after its removal", web[1].ID)
		}
		waitStates(t, sched, model.Stopped, web[1].ID)
	})

	t.Run("an instance to stop that a predecessor ran is removed and reported stopped", func(t *testing.T) {
		ghost := DesiredInstance{ID: app + "-ghost2", App: app, Version: 1, Image: ref, Desired: model.DesiredStop}
		harness.Docker(t, e.h, "run", "-d", "--label", LabelNode+"="+e.node, "--label", LabelInstance+"="+ghost.ID,
			"--name", ContainerName(ghost.ID), ref, "/bin/busybox", "sleep", "600")
		sched.Set(web[0], ghost)
		waitStates(t, sched, model.Stopped, ghost.ID)
		if now := e.containers(t); len(now[ghost.ID]) != 0 {
			t.Errorf("reported stopped while its container is there: %v", now)
		}
	})

	t.Run("a container of the instance's name not of this node is left alone", func(t *testing.T) {
		squat := DesiredInstance{ID: app + "-squat", App: app + "-squat", Version: 1, Image: ref,
			Command: []string{"/bin/busybox", "sleep", "600"}, Desired: model.DesiredRun}
		other := harness.Docker(t, e.h, "create", "--label", LabelNode+"=someone-else", "--name", ContainerName(squat.ID),
			ref, "/bin/busybox", "sleep", "600")
		t.Cleanup(func() { harness.DockerErr(e.h, "rm", "-f", other) })
		sched.Set(web[0], squat)
		r := waitStates(t, sched, model.Failed, squat.ID)[squat.ID]
		if !strings.Contains(r.Reason, "is taken by a container not of node") {
			t.Errorf("reason %q", r.Reason)
		}
		sched.Set(web[0])
		waitFor(t, "the agent done with "+squat.ID, func() (bool, string) {
			b.mu.Lock()
			defer b.mu.Unlock()
			_, running := b.insts[squat.ID]
			_, stopping := b.stopping[squat.ID]
			return !running && !stopping, fmt.Sprintf("supervised %v, stopping %v", running, stopping)
		})
		if _, err := harness.DockerErr(e.h, "inspect", other); err != nil {
			t.Errorf("the other container was removed: %v", err)
		}
	})

	t.Run("twenty instances of a new image, one pull", func(t *testing.T) {
		ref2, blobs := e.pushImage(t, "batch-"+randHex(3))
		// The registry's own request metrics (registry/server/metrics.go):
		// one pull is one manifest GET by digest and one GET per blob.
		before := e.registry.Metric(t, "gaia_registry_http_requests_total", `route="blob"`, `method="GET"`)
		manifestsBefore := e.registry.Metric(t, "gaia_registry_http_requests_total", `route="manifest"`, `method="GET"`)
		pullsBefore := testutil.ToFloat64(b.o.Metrics.pulls.WithLabelValues("ok"))
		pulledBefore, presentBefore := startCount(t, b.o.Metrics, "pulled"), startCount(t, b.o.Metrics, "present")
		set := []DesiredInstance{web[0]}
		var batch []string
		for i := 0; i < 20; i++ {
			id := fmt.Sprintf("%s-batch-%d", app, i)
			batch = append(batch, id)
			set = append(set, DesiredInstance{ID: id, App: app + "-batch", Version: 1, Image: ref2,
				Command: []string{"/bin/busybox", "sleep", "600"}, Desired: model.DesiredRun})
		}
		sched.Set(set...)
		waitStates(t, sched, model.Healthy, batch...)
		blobGets := e.registry.Metric(t, "gaia_registry_http_requests_total", `route="blob"`, `method="GET"`) - before
		manifestGets := e.registry.Metric(t, "gaia_registry_http_requests_total", `route="manifest"`, `method="GET"`) - manifestsBefore
		if blobGets != float64(blobs) || manifestGets != 1 {
			t.Errorf("the registry served %v blob GETs and %v manifest GETs for 20 instances; want one pull: %d and 1",
				blobGets, manifestGets, blobs)
		}
		if n := testutil.ToFloat64(b.o.Metrics.pulls.WithLabelValues("ok")) - pullsBefore; n != 1 {
			t.Errorf("the agent pulled %v times for 20 instances, want 1", n)
		}
		// Every start observed once, as one that waited for the pull.
		if n := startCount(t, b.o.Metrics, "pulled") - pulledBefore; n != 20 {
			t.Errorf("gaia_nodeagent_start_seconds{image=pulled} counted %d starts, want 20", n)
		}
		// One more of the image, now on the node: a start without a pull.
		sched.Set(append(set, DesiredInstance{ID: app + "-batch-more", App: app + "-batch", Version: 1, Image: ref2,
			Command: []string{"/bin/busybox", "sleep", "600"}, Desired: model.DesiredRun})...)
		waitStates(t, sched, model.Healthy, app+"-batch-more")
		if n := startCount(t, b.o.Metrics, "present") - presentBefore; n != 1 {
			t.Errorf("gaia_nodeagent_start_seconds{image=present} counted %d starts, want 1", n)
		}
		if n := startCount(t, b.o.Metrics, "pulled") - pulledBefore; n != 20 {
			t.Errorf("gaia_nodeagent_start_seconds{image=pulled} counted %d starts after one more, want 20", n)
		}
	})

	t.Run("crash loop then failed with the exit code", func(t *testing.T) {
		crash := DesiredInstance{ID: app + "-crash", App: app + "-crash", Version: 1, Image: ref,
			Command: []string{"/bin/busybox", "sh", "-c", "exit 3"},
			Restart: model.Restart{Attempts: 2, Interval: model.Duration(time.Minute), Delay: model.Duration(50 * time.Millisecond), Backoff: 2},
			Desired: model.DesiredRun}
		sched.Set(web[0], crash)
		r := waitStates(t, sched, model.Failed, crash.ID)[crash.ID]
		if r.ExitCode != 3 || r.Restarts != 2 || !strings.Contains(r.Reason, "exited with code 3") {
			t.Errorf("crash report %+v; want exit code 3 after 2 restarts", r)
		}
		if got := e.consulEntries(t, crash.App, false); len(got) != 0 {
			t.Errorf("a failed instance is in Consul: %v", keys(got))
		}
		sched.Set(web[0])
		waitFor(t, "the failed instance's container removed", func() (bool, string) {
			now := e.containers(t)
			return len(now[crash.ID]) == 0, fmt.Sprint(now)
		})
	})

	t.Run("tcp and exec health checks, in the agent and in Consul", func(t *testing.T) {
		tcp := webInstance(t, app+"-tcp", app+"-tcp-0", ref)
		tcp.Health = &model.Health{Type: model.HealthTCP, Port: "http", Interval: model.Duration(time.Second)}
		execOK := webInstance(t, app+"-exec", app+"-exec-0", ref)
		execOK.Health = &model.Health{Type: model.HealthExec, Command: []string{"/bin/busybox", "test", "-f", "/www/index.html"},
			Interval: model.Duration(time.Second)}
		execBad := webInstance(t, app+"-exec", app+"-exec-1", ref)
		execBad.Health = &model.Health{Type: model.HealthExec, Command: []string{"/bin/busybox", "test", "-f", "/nonexistent"},
			Interval: model.Duration(time.Second)}
		sched.Set(web[0], tcp, execOK, execBad)
		waitStates(t, sched, model.Healthy, tcp.ID, execOK.ID)
		var r InstanceReport
		waitFor(t, "the failing exec check reported", func() (bool, string) {
			r = sched.Reports()[execBad.ID]
			return r.State == model.Running && strings.Contains(r.Reason, "health check failed"), fmt.Sprintf("%s %q", r.State, r.Reason)
		})
		if !strings.Contains(r.Reason, "exited with code 1") {
			t.Errorf("failing exec check reported as %q", r.Reason)
		}
		waitFor(t, "Consul passing exactly the healthy instances", func() (bool, string) {
			passTCP, passExec := e.consulEntries(t, tcp.App, true), e.consulEntries(t, execOK.App, true)
			all := e.consulEntries(t, execOK.App, false)
			return len(passTCP) == 1 && len(passExec) == 1 && passExec[execOK.ID] != nil && len(all) == 2,
				fmt.Sprintf("tcp passing %v, exec passing %v, exec all %v", keys(passTCP), keys(passExec), keys(all))
		})
		sched.Set(web[0])
		waitFor(t, "the checked instances removed", func() (bool, string) {
			now := e.containers(t)
			return len(now) == 1, fmt.Sprint(now)
		})
	})

	t.Run("pulls use the robot credential", func(t *testing.T) {
		// The same image on a node whose agent has no credential: refused.
		ref3, _ := e.pushImage(t, "private-"+randHex(3))
		other := newFakeScheduler()
		noAuth := e.agent(t, other, nil)
		noAuth.o.Node = e.node + "-noauth"
		noAuth.o.Puller.Auth = ""
		t.Cleanup(func() {
			list, _ := e.docker.ContainerList(context.Background(), container.ListOptions{All: true,
				Filters: filters.NewArgs(filters.Arg("label", LabelNode+"="+noAuth.o.Node))})
			for _, c := range list {
				e.docker.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
			}
		})
		in := DesiredInstance{ID: app + "-noauth", App: app + "-noauth", Version: 1, Image: ref3,
			Command: []string{"/bin/busybox", "sleep", "600"}, Desired: model.DesiredRun}
		other.Set(in)
		stop := runAgent(t, noAuth)
		r := waitStates(t, other, model.Failed, in.ID)[in.ID]
		stop()
		if !strings.Contains(r.Reason, "no basic auth credentials") && !strings.Contains(r.Reason, "unauthorized") {
			t.Errorf("a pull without the credential failed with %q, want the registry's refusal", r.Reason)
		}
		// With it (this test's agent): runs.
		in.ID, in.App = app+"-auth", app+"-auth"
		sched.Set(web[0], in)
		waitStates(t, sched, model.Healthy, in.ID)
		sched.Set(web[0])
	})

	t.Run("graceful stop with the instance's timeout", func(t *testing.T) {
		ev := e.events(t)
		term := DesiredInstance{ID: app + "-term", App: app + "-term", Version: 1, Image: ref,
			Command:     []string{"/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; while true; do /bin/busybox sleep 0.1; done"},
			StopTimeout: model.Duration(time.Minute), Desired: model.DesiredRun}
		sched.Set(web[0], term)
		waitStates(t, sched, model.Healthy, term.ID)
		sched.Set(web[0])
		waitStates(t, sched, model.Stopped, term.ID)
		var die events.Message
		waitFor(t, "the die event", func() (bool, string) {
			var i int
			i, die = ev.find(containerEvent("die", term.ID))
			return i >= 0, "none yet"
		})
		if code := die.Actor.Attributes["exitCode"]; code != "0" {
			t.Errorf("the container died with exit code %s, want 0: SIGTERM first, then time to exit", code)
		}
	})

	t.Run("a new version's image is pulled before the old instance stops", func(t *testing.T) {
		ev := e.events(t)
		old := DesiredInstance{ID: app + "-roll-v1", App: app + "-roll", Version: 1, Image: ref,
			Command: []string{"/bin/busybox", "sleep", "600"}, Desired: model.DesiredRun}
		sched.Set(web[0], old)
		waitStates(t, sched, model.Healthy, old.ID)
		ref4, _ := e.pushImage(t, "roll-v2-"+randHex(3))
		digest := ref4[strings.Index(ref4, "@")+1:]
		next := old
		next.ID, next.Version, next.Image = app+"-roll-v2", 2, ref4
		sched.Set(web[0], next)
		waitStates(t, sched, model.Healthy, next.ID)
		waitStates(t, sched, model.Stopped, old.ID)
		pulled, _ := ev.find(func(m events.Message) bool {
			return m.Type == events.ImageEventType && m.Action == "pull" && strings.Contains(m.Actor.ID, digest)
		})
		killed, _ := ev.find(containerEvent("kill", old.ID))
		if pulled < 0 || killed < 0 || killed < pulled {
			t.Errorf("event order: pull of v2's image #%d, kill of v1's container #%d; want the pull first", pulled, killed)
		}
	})

	t.Run("unknown image fails with the registry's error", func(t *testing.T) {
		missing := strings.Split(ref, "@")[0] + "@sha256:" + strings.Repeat("0", 64)
		bad := DesiredInstance{ID: app + "-bad", App: app + "-bad", Version: 1, Image: missing, Desired: model.DesiredRun}
		sched.Set(web[0], bad)
		r := waitStates(t, sched, model.Failed, bad.ID)[bad.ID]
		if !strings.Contains(r.Reason, "manifest unknown") && !strings.Contains(r.Reason, "not found") {
			t.Errorf("reason %q does not carry the registry's error", r.Reason)
		}
		if now := e.containers(t); len(now[bad.ID]) != 0 {
			t.Errorf("a container was made for a missing image: %v", now)
		}
	})

	t.Run("unused images removed, least recently used first", func(t *testing.T) {
		if b == nil {
			t.Fatal("no restarted agent: the subtest that restarts it failed above")
		}
		refX, _ := e.pushImage(t, "gc-x-"+randHex(3))
		refY, _ := e.pushImage(t, "gc-y-"+randHex(3))
		x := DesiredInstance{ID: app + "-gc-x", App: app + "-gc", Version: 1, Image: refX,
			Command: []string{"/bin/busybox", "sleep", "600"}, Desired: model.DesiredRun}
		y := x
		y.ID, y.Version, y.Image = app+"-gc-y", 2, refY
		sched.Set(web[0], x)
		waitStates(t, sched, model.Healthy, x.ID)
		sched.Set(web[0], y)
		waitStates(t, sched, model.Healthy, y.ID)
		waitStates(t, sched, model.Stopped, x.ID)
		sched.Set(web[0])
		waitStates(t, sched, model.Stopped, y.ID)
		id := func(ref string) string {
			img, err := e.docker.ImageInspect(t.Context(), ref)
			if err != nil {
				t.Fatalf("%s: %v", ref, err)
			}
			return img.ID
		}
		idX, idY, idWeb := id(refX), id(refY), id(ref)
		// Any fullness is too full: every unused image of the agent goes.
		removed, err := b.gcImages(t.Context(), 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		pos := map[string]int{}
		for i, r := range removed {
			pos[r] = i + 1
		}
		if pos[idX] == 0 || pos[idY] == 0 || pos[idX] > pos[idY] {
			t.Errorf("removed %v; want %s (used longer ago) before %s", removed, short(idX), short(idY))
		}
		if pos[idWeb] != 0 {
			t.Errorf("the image of a running instance was removed")
		}
		if _, err := e.docker.ImageInspect(t.Context(), ref); err != nil {
			t.Errorf("the running instance's image is gone: %v", err)
		}
	})
}
