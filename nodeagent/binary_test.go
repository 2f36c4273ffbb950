package nodeagent

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
	"github.com/gaia-registry/gaia/tests/harness"
)

// TestAgentBinaryKill9Adopts: gaia-nodeagent, speaking the node protocol
// over HTTP, runs two instances; kill -9 of the agent leaves them running
// and the restarted agent adopts the same containers (none created, no
// duplicate); SIGTERM stops the agent cleanly and leaves them running.
func TestAgentBinaryKill9Adopts(t *testing.T) {
	e := setup(t)
	ref, _ := e.pushImage(t, "web-"+randHex(3))
	sched := newFakeScheduler()
	srv := httptest.NewServer(sched)
	t.Cleanup(srv.Close)
	app := "agentbin-" + randHex(3)
	web := []DesiredInstance{webInstance(t, app, app+"-0", ref), webInstance(t, app, app+"-1", ref)}
	sched.Set(web...)

	bin := harness.Binary(t, "./nodeagent/cmd/gaia-nodeagent")
	start := func() *harness.Registry {
		addr := harness.FreeAddr(t)
		cfg := fmt.Sprintf(`log: {level: info, formatter: json}
http: {addr: %q}
node: {name: %q, address: 127.0.0.1, datadir: %q, capacity: {diskio: 100MiB/s, netin: 1Gbit, netout: 1Gbit}}
scheduler: {urls: [%q], token: node-secret}
docker: {host: %q}
registry: {gateway: %q, username: robot, password: r0bot-secret}
consul: {addr: %q}
pull: {attempts: 2, backoff: 100ms}
instances: {publiship: 127.0.0.1, stoptimeout: 2s}
agent: {pollwait: 5s, reportinterval: 1s, retryinterval: 200ms}
`, addr, e.node, t.TempDir(), srv.URL, e.h.Get(t, "GAIA_TEST_DOCKER_HOST"), e.registry.Addr, e.h.Get(t, "GAIA_TEST_CONSUL_ADDR"))
		path := filepath.Join(t.TempDir(), "agent.yml")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		return harness.StartProcess(t, bin, []string{"--config", path}, nil, addr, "/readyz",
			func(code int) bool { return code == http.StatusOK })
	}
	a := start()
	waitStates(t, sched, model.Healthy, web[0].ID, web[1].ID)
	sched.mu.Lock()
	r := sched.registered[0]
	sched.mu.Unlock()
	if r.Name != e.node || r.Capacity[resource.CPU] <= 0 || r.Capacity[resource.Memory] <= 0 ||
		r.Capacity[resource.Disk] <= 0 || r.Capacity[resource.NetIn] != 1e9 {
		t.Errorf("registration %+v: want the node's name and detected cpu, memory, disk, configured netin", r)
	}
	before := e.containers(t)

	a.Kill()
	for _, d := range web {
		if body, err := get(t, fmt.Sprintf("http://127.0.0.1:%d/", d.Ports[0].HostPort)); err != nil {
			t.Fatalf("%s stopped answering when its agent was killed: %v", d.ID, err)
		} else if body == "" {
			t.Fatalf("%s answered nothing", d.ID)
		}
	}
	sched.ForgetReports()
	b := start()
	waitStates(t, sched, model.Healthy, web[0].ID, web[1].ID)
	if after := e.containers(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("containers after kill -9 and restart %v, before %v", after, before)
	}
	if n := b.Metric(t, "gaia_nodeagent_container_operations_total", `op="adopt"`); n != 2 {
		t.Errorf("the restarted agent adopted %v containers, want 2\n%s", n, b.Log())
	}
	if n := b.Metric(t, "gaia_nodeagent_container_operations_total", `op="create"`); n != 0 {
		t.Errorf("the restarted agent created %v containers, want 0", n)
	}
	if err := b.Stop(); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, b.Log())
	}
	if after := e.containers(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("containers after a graceful stop %v, before %v", after, before)
	}
	for _, d := range web {
		if _, err := get(t, fmt.Sprintf("http://127.0.0.1:%d/", d.Ports[0].HostPort)); err != nil {
			t.Errorf("%s stopped answering when its agent stopped gracefully: %v", d.ID, err)
		}
	}
}
