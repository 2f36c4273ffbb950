// Package nodeagent is gaia-nodeagent's benchmark (make bench-nodeagent,
// issue 12 §5), on the real PostgreSQL, Consul and dockerd: a
// gaia-registry in a cluster with a gaia-gateway in front, a
// gaia-scheduler, and three gaia-nodeagent processes, each with a dockerd
// of its own as on three machines (the harness's, and two more started
// through tests/services/svc.sh), all on loopback.
//
//   - Start latency: 30 instances of an app (busybox httpd, an http health
//     check) on one node whose image is already there, from the agent
//     receiving the desired set to each instance healthy and registered in
//     Consul (the agent's gaia_nodeagent_start_seconds, read exactly from
//     its "instance started" log lines), p50 and p99; beside it, the floor
//     dockerd sets: 30 containers of the same image created and started at
//     once through the Docker API, each timed until it answers HTTP on its
//     published port.
//   - Deploy: three apps, one per agent, each a different 200 MiB image of
//     5 layers, submitted at once, pulled through the gateway into each
//     agent's dockerd, against three `docker pull` processes of three other
//     such images through the same gateway, one into each dockerd. Every
//     image is pulled once and is new to its dockerd. Wall time from the
//     first submit (or process start) to the last image in a dockerd (its
//     "pull" event), and for the agents also to the last instance running.
//     A third side, three clients that each pull and then `docker run` their
//     image, does by hand what the agents do in that window. Each round
//     pushes fresh images and puts a different side first.
package nodeagent

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/docker/go-connections/nat"
	consul "github.com/hashicorp/consul/api"

	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/tests/harness"
)

const adminToken, nodeToken = "bench-admin", "bench-node"

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func pct(d []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// platform is the cluster under test.
type platform struct {
	b       *testing.B
	docker  *client.Client // node 0's dockerd (the harness's)
	dockerH string
	// dockers and dockerHs are each node's dockerd (node 0's first).
	dockers  []*client.Client
	dockerHs []string
	consul   string
	reg      string // registry host:port
	gw       string // gateway host:port
	sched    string // scheduler base URL
	agents   []*harness.Registry
	nodes    []string
}

// extraDockerds starts n dockerds beside the harness's (tests/services/
// svc.sh with a state directory, bridge, subnet and cgroup parent of
// their own), stopped at the end; their DOCKER_HOSTs.
func extraDockerds(b *testing.B, n int) []string {
	var hosts []string
	for i := 1; i <= n; i++ {
		state := filepath.Join(os.TempDir(), fmt.Sprintf("gaia-bench-dockerd-%d", i))
		env := append(os.Environ(), "GAIA_STATE_DIR="+state, fmt.Sprintf("GAIA_DOCKER_BRIDGE=gaia-bn%d", i),
			fmt.Sprintf("GAIA_DOCKER_BRIDGE_CIDR=172.29.%d.1/24", 20+i), fmt.Sprintf("GAIA_DOCKER_CGROUP_PARENT=gaia-bench-dockerd-%d", i))
		svc := func(cmd string) ([]byte, error) {
			c := exec.Command("bash", filepath.Join(harness.RepoRoot(), "tests/services/svc.sh"), cmd, "dockerd")
			c.Env = env
			return c.CombinedOutput()
		}
		if out, err := svc("start"); err != nil {
			b.Fatalf("starting dockerd %d: %v\n%s", i, err, out)
		}
		b.Cleanup(func() {
			if out, err := svc("stop"); err != nil {
				b.Logf("stopping dockerd %d: %v\n%s", i, err, out)
			}
		})
		hosts = append(hosts, "unix://"+filepath.Join(state, "dockerd", "docker.sock"))
	}
	return hosts
}

func call(b *testing.B, base, method, path string, body, out any) int {
	b.Helper()
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, base+path, rd)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			b.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode
}

func waitUntil(b *testing.B, what string, limit time.Duration, cond func() (bool, string)) {
	b.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("waiting for %s: %s", what, desc)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func startPlatform(b *testing.B, agents int) *platform {
	env := harness.Start(b, harness.Consul, harness.Postgres, harness.Dockerd)
	consulAddr := env.Get(b, "GAIA_TEST_CONSUL_ADDR")
	p := &platform{b: b, dockerH: env.Get(b, "GAIA_TEST_DOCKER_HOST"), consul: consulAddr}
	p.dockerHs = append([]string{p.dockerH}, extraDockerds(b, agents-1)...)
	for _, h := range p.dockerHs {
		dc, err := client.NewClientWithOpts(client.WithHost(h), client.WithAPIVersionNegotiation())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { dc.Close() })
		p.dockers = append(p.dockers, dc)
	}
	p.docker = p.dockers[0]
	service := fmt.Sprintf("gaia-registry-nabench-%d", time.Now().UnixNano())
	p.reg = harness.FreeAddr(b)
	harness.StartRegistry(b, p.reg, harness.RegistryConfig(p.reg, harness.NewDatabase(b), b.TempDir())+fmt.Sprintf(`cluster:
  idc: idc-a
  consul: {addr: %q, service: %q, checkinterval: 1s, deregisterafter: 30s}
`, consulAddr, service))
	p.gw = harness.FreeAddr(b)
	harness.StartGateway(b, p.gw, fmt.Sprintf(`log: {level: warn}
http: {addr: %s, draintimeout: 10s}
idc: idc-a
consul: {addr: %q, service: %q}
`, p.gw, consulAddr, service))

	addr := harness.FreeAddr(b)
	cfg := filepath.Join(b.TempDir(), "scheduler.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`log: {level: warn}
http: {addr: %s, draintimeout: 10s}
database: {url: %q, migrate: true}
cluster:
  name: nabench-%d
  consul: {addr: %q}
scheduler: {interval: 300ms, nodetimeout: 30s, pollinterval: 10s, heartbeatflush: 2s}
auth: {admintoken: %s, nodetoken: %s}
registry: {url: "http://%s"}
`, addr, harness.NewDatabase(b), time.Now().UnixNano(), consulAddr, adminToken, nodeToken, p.reg)), 0o644)
	s := harness.StartProcess(b, harness.Binary(b, "./scheduler/cmd/gaia-scheduler"), []string{"serve", "--config", cfg}, nil, addr, "/readyz",
		func(c int) bool { return c == http.StatusOK })
	p.sched = s.URL()
	waitUntil(b, "the scheduler to lead", time.Minute, func() (bool, string) {
		v, err := harness.ScrapeMetric(nil, p.sched, "gaia_scheduler_is_leader")
		return err == nil && v == 1, fmt.Sprint(v, err)
	})

	bin := harness.Binary(b, "./nodeagent/cmd/gaia-nodeagent")
	suffix := strconv.FormatInt(time.Now().UnixNano()%1_000_000, 10)
	for i := range agents {
		node := fmt.Sprintf("nabench-%d-%s", i, suffix)
		a := harness.FreeAddr(b)
		path := filepath.Join(b.TempDir(), node+".yml")
		os.WriteFile(path, []byte(fmt.Sprintf(`log: {level: info, formatter: json}
http: {addr: %q}
node: {name: %q, idc: idc-a, address: 127.0.0.1, datadir: %q, labels: {bench: n%d}, capacity: {cpu: 8, memory: 8Gi}}
scheduler: {urls: [%q], token: %s}
docker: {host: %q}
registry: {gateway: %q}
consul: {addr: %q}
instances: {publiship: 127.0.0.1, stoptimeout: 2s}
images: {gcdisabled: true}
`, a, node, b.TempDir(), i, p.sched, nodeToken, p.dockerHs[i], p.gw, consulAddr)), 0o644)
		p.agents = append(p.agents, harness.StartProcess(b, bin, []string{"--config", path}, nil, a, "/healthz",
			func(code int) bool { return code == http.StatusOK }))
		p.nodes = append(p.nodes, node)
	}
	b.Cleanup(func() {
		for i, node := range p.nodes {
			p.removeContainers(i, "gaia.node="+node)
		}
	})
	if code := call(b, p.sched, "POST", "/v1/pools", map[string]any{"name": "root.bench"}, nil); code != http.StatusCreated {
		b.Fatalf("create pool: %d", code)
	}
	return p
}

// pushImage pushes an image of a busybox base layer and the given
// random layers to the registry as repo:v1 and returns its digest.
func (p *platform) pushImage(repo string, seed uint64, layers ...int) string {
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		p.b.Fatalf("busybox-static is not installed (svc.sh start dockerd installs it): %v", err)
	}
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, d := range []string{"bin/", "tmp/", "www/"} {
		tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
	}
	tw.WriteHeader(&tar.Header{Name: "bin/busybox", Mode: 0o755, Size: int64(len(busybox))})
	tw.Write(busybox)
	tw.WriteHeader(&tar.Header{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "busybox"})
	marker := strconv.FormatUint(seed, 10) + repo
	tw.WriteHeader(&tar.Header{Name: "tmp/marker", Mode: 0o644, Size: int64(len(marker))})
	tw.Write([]byte(marker))
	tw.Close()
	var base bytes.Buffer
	gz := gzip.NewWriter(&base)
	gz.Write(raw.Bytes())
	gz.Close()
	all := [][]byte{base.Bytes()}
	for i, size := range layers {
		all = append(all, harness.Layer(seed*100+uint64(i)+rand.Uint64()%1_000_000*1000, size))
	}
	img := harness.NewTestImage("linux/amd64", all...)
	if err := img.Push(context.Background(), upstream.New(upstream.Options{URL: "http://" + p.reg}), repo, "v1"); err != nil {
		p.b.Fatalf("pushing %s: %v", repo, err)
	}
	return img.Digest.String()
}

type instance struct {
	ID    string `json:"id"`
	Node  string `json:"node"`
	State string `json:"state"`
}

func (p *platform) instances(app string) []instance {
	var page struct {
		Items []instance `json:"items"`
	}
	call(p.b, p.sched, "GET", "/v1/apps/"+app+"/instances?limit=200", nil, &page)
	return page.Items
}

func (p *platform) submit(app, image string, n, node int, extra map[string]any) {
	spec := map[string]any{"name": app, "pool": "root.bench", "image": image, "instances": n,
		"command":     []string{"/bin/busybox", "sleep", "3600"},
		"resources":   map[string]string{"cpu": "10m", "memory": "16Mi"},
		"constraints": map[string]any{"labels": map[string]string{"bench": fmt.Sprintf("n%d", node)}},
	}
	for k, v := range extra {
		spec[k] = v
	}
	var out map[string]any
	if code := call(p.b, p.sched, "POST", "/v1/apps", spec, &out); code != http.StatusCreated {
		p.b.Fatalf("submit %s: %d %v", app, code, out)
	}
}

func (p *platform) deleteApp(app string, node int) {
	if code := call(p.b, p.sched, "DELETE", "/v1/apps/"+app, nil, nil); code/100 != 2 {
		p.b.Fatalf("delete %s: %d", app, code)
	}
	waitUntil(p.b, app+"'s containers gone", 2*time.Minute, func() (bool, string) {
		list, err := p.dockers[node].ContainerList(context.Background(), container.ListOptions{All: true,
			Filters: filters.NewArgs(filters.Arg("label", "gaia.app="+app))})
		return err == nil && len(list) == 0, fmt.Sprint(len(list), err)
	})
}

// removeContainers removes node i's containers with label (key=value).
func (p *platform) removeContainers(i int, label string) {
	ctx := context.Background()
	dc := p.dockers[i]
	list, _ := dc.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", label))})
	for _, c := range list {
		if err := dc.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
			p.b.Logf("removing container %s of dockerd %d: %v", c.ID, i, err)
		}
	}
}

// rmi removes refs[i] from node i's dockerd.
func (p *platform) rmi(refs ...string) {
	for i, r := range refs {
		if _, err := p.dockers[i].ImageRemove(context.Background(), r, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil && !errdefs.IsNotFound(err) {
			p.b.Logf("removing %s: %v", r, err)
		}
	}
}

// (Image GC is off in the agents: on a shared disk past its threshold it
// would remove the start image between rounds; the bench removes what it
// pulled itself.)

// startLines are the agent's "instance started" log lines: instance → seconds, image label.
func startLines(b *testing.B, log string) map[string]startLine {
	out := map[string]startLine{}
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l startLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "instance started" {
			out[l.Instance] = l
		}
	}
	return out
}

type startLine struct {
	Msg      string  `json:"msg"`
	Instance string  `json:"instance"`
	Image    string  `json:"image"`
	Seconds  float64 `json:"seconds"`
}

const httpd = `echo ok > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www`

// startLatency: 30 instances on agent 0, image on the node already.
func (p *platform) startLatency(round int, digest string) (agent []time.Duration, e2e time.Duration) {
	b := p.b
	n := envInt("NODEAGENT_BENCH_INSTANCES", 30)
	app := fmt.Sprintf("start-%d", round)
	p.submit(app, "bench/start@"+digest, n, 0, map[string]any{
		"command": []string{"/bin/busybox", "sh", "-c", httpd},
		"ports":   []map[string]any{{"name": "http", "containerPort": 8080}},
		"health":  map[string]any{"type": "http", "port": "http", "path": "/", "interval": "1s", "timeout": "1s"},
	})
	t0 := time.Now()
	cfg := consul.DefaultConfig()
	cfg.Address = p.consul
	cc, err := consul.NewClient(cfg)
	if err != nil {
		b.Fatal(err)
	}
	waitUntil(b, fmt.Sprintf("%d instances healthy and in Consul", n), 5*time.Minute, func() (bool, string) {
		healthy := 0
		for _, in := range p.instances(app) {
			if in.State == "healthy" {
				healthy++
			}
		}
		entries, _, err := cc.Health().Service(app, "", false, nil)
		return healthy == n && err == nil && len(entries) == n, fmt.Sprintf("%d healthy, %d in Consul (%v)", healthy, len(entries), err)
	})
	e2e = time.Since(t0)
	lines := startLines(b, p.agents[0].Log())
	for _, in := range p.instances(app) {
		l, ok := lines[in.ID]
		if !ok || l.Image != "present" {
			b.Fatalf("%s: start log line %+v (found %v); want one with image=present", in.ID, l, ok)
		}
		agent = append(agent, time.Duration(l.Seconds*float64(time.Second)))
	}
	p.deleteApp(app, 0)
	return agent, e2e
}

// dockerFloor: n containers of ref created and started at once through the
// Docker API, each timed until it answers HTTP on its published port.
func (p *platform) dockerFloor(ref string, n int) []time.Duration {
	b := p.b
	ctx := context.Background()
	out := make([]time.Duration, n)
	ids := make([]string, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	t0 := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			port := nat.Port("8080/tcp")
			resp, err := p.docker.ContainerCreate(ctx, &container.Config{Image: ref, Cmd: []string{"/bin/busybox", "sh", "-c", httpd},
				ExposedPorts: nat.PortSet{port: {}}, Labels: map[string]string{"gaia.bench": "floor"}},
				&container.HostConfig{PortBindings: nat.PortMap{port: {{HostIP: "127.0.0.1", HostPort: "0"}}}}, nil, nil, "")
			if err == nil {
				ids[i] = resp.ID
				err = p.docker.ContainerStart(ctx, resp.ID, container.StartOptions{})
			}
			var hp string
			if err == nil {
				var c container.InspectResponse
				c, err = p.docker.ContainerInspect(ctx, resp.ID)
				if err == nil && len(c.NetworkSettings.Ports[port]) > 0 {
					hp = c.NetworkSettings.Ports[port][0].HostPort
				}
			}
			for err == nil {
				r, gerr := http.Get("http://" + net.JoinHostPort("127.0.0.1", hp) + "/")
				if gerr == nil {
					r.Body.Close()
					if r.StatusCode == 200 {
						break
					}
				}
				if time.Since(t0) > 2*time.Minute {
					err = fmt.Errorf("container %d never answered on %s: %v", i, hp, gerr)
				}
				time.Sleep(20 * time.Millisecond)
			}
			mu.Lock()
			out[i] = time.Since(t0)
			if err != nil && firstErr == nil {
				firstErr = err
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if id != "" {
			p.docker.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
		}
	}
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	return out
}

// pullEvents records the time of dockerd's image "pull" events by image reference.
func (p *platform) pullEvents(ctx context.Context) func() map[string]time.Time {
	var mu sync.Mutex
	seen := map[string]time.Time{}
	for _, dc := range p.dockers {
		msgs, _ := dc.Events(ctx, events.ListOptions{Filters: filters.NewArgs(filters.Arg("type", "image"), filters.Arg("event", "pull"))})
		go func() {
			for {
				select {
				case m := <-msgs:
					mu.Lock()
					seen[m.Actor.ID] = time.Unix(0, m.TimeNano)
					mu.Unlock()
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	return func() map[string]time.Time {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]time.Time{}
		for k, v := range seen {
			out[k] = v
		}
		return out
	}
}

// deployAgents submits three apps (one per agent) of the three images at
// once: wall time to the last image pulled (dockerd's pull event) and to
// the last instance running.
func (p *platform) deployAgents(round int, repos, digests []string) (pulled, running time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seen := p.pullEvents(ctx)
	var refs []string
	for i := range repos {
		refs = append(refs, p.gw+"/"+repos[i]+"@"+digests[i])
	}
	t0 := time.Now()
	var wg sync.WaitGroup
	for i := range repos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.submit(fmt.Sprintf("deploy-%d-%d", round, i), repos[i]+"@"+digests[i], 1, i, nil)
		}()
	}
	wg.Wait()
	p.b.Logf("deploy round %d: the three submits answered after %v", round, time.Since(t0).Round(time.Millisecond))
	// The pulls are awaited on dockerd's event streams, not by polling
	// the scheduler's API, which would load the machine the pulls run on
	// (the docker pull side has no such load).
	waitUntil(p.b, "dockerd's three pull events", 10*time.Minute, func() (bool, string) {
		s := seen()
		last := time.Time{}
		for _, r := range refs {
			at, ok := s[r]
			if !ok {
				return false, fmt.Sprintf("no pull event for %s yet (have %v)", r, s)
			}
			if at.After(last) {
				last = at
			}
		}
		pulled = last.Sub(t0)
		return true, ""
	})
	waitUntil(p.b, "the three instances running", 10*time.Minute, func() (bool, string) {
		var states []string
		for i := range repos {
			for _, in := range p.instances(fmt.Sprintf("deploy-%d-%d", round, i)) {
				if in.State == "running" || in.State == "healthy" {
					continue
				}
				states = append(states, in.ID+":"+in.State)
			}
		}
		return len(states) == 0, fmt.Sprint(states)
	})
	running = time.Since(t0)
	for i := range repos {
		p.deleteApp(fmt.Sprintf("deploy-%d-%d", round, i), i)
	}
	p.rmi(refs...)
	return pulled, running
}

// dockerPulls runs three `docker pull` processes at once, one per
// dockerd: wall time to the last one's exit. With thenRun, each client
// then starts a container of its image at once (`docker run -d`), as an
// agent does, while the others may still pull: the same work the agents
// do in the window, done by hand.
func (p *platform) dockerPulls(repos, digests []string, thenRun bool) time.Duration {
	var refs []string
	for i := range repos {
		refs = append(refs, p.gw+"/"+repos[i]+"@"+digests[i])
	}
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(refs))
	pulled := make([]time.Duration, len(refs))
	for i, r := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := exec.Command("docker", "-H", p.dockerHs[i], "pull", "-q", r).CombinedOutput()
			if err != nil {
				errs[i] = fmt.Errorf("docker pull %s: %v: %s", r, err, out)
				return
			}
			pulled[i] = time.Since(t0)
			if thenRun {
				if out, err := exec.Command("docker", "-H", p.dockerHs[i], "run", "-d", "--label", "gaia.bench=run", r,
					"/bin/busybox", "sleep", "3600").CombinedOutput(); err != nil {
					errs[i] = fmt.Errorf("docker run %s: %v: %s", r, err, out)
				}
			}
		}()
	}
	wg.Wait()
	took := slices.Max(pulled)
	for i := range p.dockers {
		p.removeContainers(i, "gaia.bench=run")
	}
	for _, err := range errs {
		if err != nil {
			p.b.Fatal(err)
		}
	}
	p.rmi(refs...)
	return took
}

func BenchmarkNodeAgent(b *testing.B) {
	rounds := envInt("NODEAGENT_BENCH_ROUNDS", 3)       // each deploy side first once
	layerMiB := envInt("NODEAGENT_BENCH_LAYER_MIB", 50) // 4 layers of it and busybox: 5 layers, about 200 MiB
	p := startPlatform(b, 3)
	waitUntil(b, "the three nodes registered", time.Minute, func() (bool, string) {
		var page struct {
			Items []struct {
				Name  string `json:"name"`
				State string `json:"state"`
			} `json:"items"`
		}
		call(b, p.sched, "GET", "/v1/nodes?limit=100", nil, &page)
		ready := 0
		for _, n := range page.Items {
			if n.State == "ready" {
				ready++
			}
		}
		return ready == 3, fmt.Sprint(page.Items)
	})

	// Start latency: the image on the node first.
	startDigest := p.pushImage("bench/start", 1)
	startRef := p.gw + "/bench/start@" + startDigest
	if out, err := exec.Command("docker", "-H", p.dockerH, "pull", "-q", startRef).CombinedOutput(); err != nil {
		b.Fatalf("docker pull %s: %v: %s", startRef, err, out)
	}
	b.Cleanup(func() { p.rmi(startRef) }) // node 0's
	n := envInt("NODEAGENT_BENCH_INSTANCES", 30)
	var agentAll, floorAll []time.Duration
	var e2es []time.Duration
	for r := range rounds {
		floor := p.dockerFloor(startRef, n)
		agent, e2e := p.startLatency(r, startDigest)
		b.Logf("start round %d: agent p50 %v p99 %v (submit → all %d healthy in the scheduler and Consul: %v); dockerd floor p50 %v p99 %v",
			r, pct(agent, .5), pct(agent, .99), n, e2e.Round(time.Millisecond), pct(floor, .5), pct(floor, .99))
		agentAll, floorAll, e2es = append(agentAll, agent...), append(floorAll, floor...), append(e2es, e2e)
	}

	// Deploy: fresh images every round and side. Beside the reference
	// (three docker pulls) and the agents, three clients that each pull
	// and then start their image, as the agents do: what starting
	// instances costs the pulls still under way when every "node" shares
	// this machine's cores.
	var pullsAll, agentsPulled, agentsRunning, pullRunAll []time.Duration
	for r := range rounds {
		var dRepos, dDigests, aRepos, aDigests, rRepos, rDigests []string
		for i := range 3 {
			layers := []int{layerMiB << 20, layerMiB << 20, layerMiB << 20, layerMiB << 20}
			dRepos = append(dRepos, fmt.Sprintf("bench/docker-%d-%d", r, i))
			dDigests = append(dDigests, p.pushImage(dRepos[i], uint64(10+r*10+i), layers...))
			aRepos = append(aRepos, fmt.Sprintf("bench/agent-%d-%d", r, i))
			aDigests = append(aDigests, p.pushImage(aRepos[i], uint64(1000+r*10+i), layers...))
			rRepos = append(rRepos, fmt.Sprintf("bench/docker-run-%d-%d", r, i))
			rDigests = append(rDigests, p.pushImage(rRepos[i], uint64(2000+r*10+i), layers...))
		}
		var pulls, pulled, running, pullRun time.Duration
		sides := []func(){
			func() { pulls = p.dockerPulls(dRepos, dDigests, false) },
			func() { pulled, running = p.deployAgents(r, aRepos, aDigests) },
			func() { pullRun = p.dockerPulls(rRepos, rDigests, true) },
		}
		for k := range sides { // each side first in turn
			sides[(r+k)%len(sides)]()
		}
		b.Logf("deploy round %d: 3 × docker pull %v; 3 agents: images pulled %v (%.2f×), instances running %v (%.2f×); 3 × docker pull then run: images pulled %v (%.2f×)",
			r, pulls.Round(time.Millisecond), pulled.Round(time.Millisecond), pulled.Seconds()/pulls.Seconds(),
			running.Round(time.Millisecond), running.Seconds()/pulls.Seconds(), pullRun.Round(time.Millisecond), pullRun.Seconds()/pulls.Seconds())
		pullsAll, agentsPulled, agentsRunning, pullRunAll = append(pullsAll, pulls), append(agentsPulled, pulled), append(agentsRunning, running), append(pullRunAll, pullRun)
	}

	med := func(d []time.Duration) time.Duration { return pct(d, .5) }
	fmt.Printf("\n| measure | gaia-nodeagent | dockerd alone | ratio | target |\n| --- | ---: | ---: | ---: | --- |\n")
	fmt.Printf("| start latency, %d instances on one node, image present, p50 (%d rounds pooled) | %v | %v | %.2f× | |\n",
		n, rounds, pct(agentAll, .5).Round(time.Millisecond), pct(floorAll, .5).Round(time.Millisecond), pct(agentAll, .5).Seconds()/pct(floorAll, .5).Seconds())
	fmt.Printf("| start latency p99 | %v | %v | %.2f× | p99 ≤ 2 s: %v |\n",
		pct(agentAll, .99).Round(time.Millisecond), pct(floorAll, .99).Round(time.Millisecond), pct(agentAll, .99).Seconds()/pct(floorAll, .99).Seconds(),
		pct(agentAll, .99) <= 2*time.Second)
	fmt.Printf("| submit → all %d healthy in the scheduler and Consul (upper median of rounds) | %v | | | |\n", n, med(e2es).Round(time.Millisecond))
	// The ratio is each round's (its sides ran back to back), their
	// median; the times beside it are each side's median.
	ratio := func(a, b []time.Duration) float64 {
		var rs []float64
		for i := range a {
			rs = append(rs, a[i].Seconds()/b[i].Seconds())
		}
		sort.Float64s(rs)
		return rs[len(rs)/2]
	}
	deploy := ratio(agentsPulled, pullsAll)
	fmt.Printf("| deploy 3 × %d MiB (5 layers) through the gateway, wall to images pulled (upper median of %d rounds; ratio: median of the rounds') | %v | %v (3 × docker pull) | %.2f× | ≤ 1.0×: %v |\n",
		4*layerMiB, rounds, med(agentsPulled).Round(time.Millisecond), med(pullsAll).Round(time.Millisecond), deploy, deploy <= 1)
	fmt.Printf("| ... to instances running | %v | | %.2f× | |\n", med(agentsRunning).Round(time.Millisecond), med(agentsRunning).Seconds()/med(pullsAll).Seconds())
	fmt.Printf("| deploy, wall to images pulled, against 3 × (docker pull, then docker run) | %v | %v | %.2f× | |\n\n",
		med(agentsPulled).Round(time.Millisecond), med(pullRunAll).Round(time.Millisecond), ratio(agentsPulled, pullRunAll))
	b.ReportMetric(pct(agentAll, .5).Seconds(), "start-p50-s")
	b.ReportMetric(pct(agentAll, .99).Seconds(), "start-p99-s")
	b.ReportMetric(deploy, "deploy/pull")
}
