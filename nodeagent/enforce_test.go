package nodeagent

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/gaia-registry/gaia/nodeagent/enforce"
	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
	"github.com/gaia-registry/gaia/tests/harness"
)

// TestAgentEnforce runs the agent with node enforcement against the
// enforcement tests' own dockerd (tests/services/enforce-node.sh: its own
// socket, bridge and cgroup parent) and a local image holding the tests'
// hog: the containers get the parent cgroup, the volume, the IO throttle
// and their HTB classes, rebuilt after an agent restart; when A bursts until the node's memory is full,
// EMC picks it and the agent stops it, reported failed as oom-reclaimed
// with the numbers, and B runs on; D, whose first act is to send,
// has every packet of it in its class, at its first start and at a
// restart (the gate holds its command until the classes exist); C, writing 40 MiB into its writable
// layer past the node's 16 MiB limit, is evicted; deleting them removes
// their volumes and classes. (EMC's, the volumes' and the trees' own tests are in
// nodeagent/enforce.)
func TestAgentEnforce(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("node enforcement needs root (cgroups, tc, loop devices)")
	}
	if out, err := exec.Command("bash", "../tests/services/enforce-node.sh", "start").CombinedOutput(); err != nil {
		t.Fatalf("enforce-node.sh start: %v\n%s", err, out)
	}
	host := "unix:///tmp/gaia-enforce/docker.sock"
	image := "gaia-agent-enforce-test:1"
	buildHogImage(t, host, image)
	dc, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()

	parent := "gaia-agent-enforce-" + randHex(3)
	volumes, gates := t.TempDir(), t.TempDir()
	gate := harness.BuildStatic(t, "./cmd/gaia-gate")
	newEnforcer := func() *enforce.Node {
		enf, err := enforce.New(enforce.Config{CgroupParent: parent, AllocatableMemory: 200 << 20, CheckInterval: 200 * time.Millisecond,
			VolumeDir: volumes, Gate: gate, GateDir: gates, LinkOut: 100_000_000, LinkIn: 100_000_000, IFBOut: "gxag-out", IFBIn: "gxag-in", Log: testLogger()})
		if err != nil {
			t.Fatal(err)
		}
		if err := enf.Init(); err != nil {
			t.Fatal(err)
		}
		return enf
	}
	enf := newEnforcer()
	t.Cleanup(func() {
		enf.Close()
		exec.Command("ip", "link", "del", "gxag-out").Run()
		exec.Command("ip", "link", "del", "gxag-in").Run()
		for _, c := range []string{"memory", "cpu", "cpuacct", "cpuset", "blkio", "pids"} {
			os.Remove(filepath.Join("/sys/fs/cgroup", c, parent))
		}
	})
	node := "enforce-test-" + randHex(3)
	inst := func(id, prio string, mem int64, cmd ...string) DesiredInstance {
		var r resource.Vector
		r[resource.CPU], r[resource.Memory], r[resource.Disk], r[resource.DiskIO] = 100, 64<<20, 16<<20, 10<<20
		r[resource.NetOut], r[resource.NetIn] = 30_000_000, 20_000_000
		return DesiredInstance{ID: id, App: "enf", Version: 1, Image: image, Command: append([]string{"/hog"}, cmd...),
			Resources: r, MemoryLimit: resource.Bytes(mem), Desired: model.DesiredRun,
			Restart: model.Restart{Attempts: 0}}
	}
	a := inst("enf-a-"+randHex(2), "", 400<<20, "mem", "300")
	b := inst("enf-b-"+randHex(2), "", 400<<20, "mem", "30")
	b.VolumePath, b.CPUSet = "/srv/data", "0" // the app's own mount point and pinning
	cw := inst("enf-c-"+randHex(2), "", 400<<20, "write", "/tmp/x", "40")
	// D sends 300 datagrams to the bridge's host side the moment its
	// command runs.
	const sent = 300
	d := inst("enf-d-"+randHex(2), "", 400<<20, "udp", "10.213.0.1:9", fmt.Sprint(sent))
	d.Restart = model.Restart{Attempts: 1, Interval: model.Duration(time.Hour), Delay: model.Duration(100 * time.Millisecond)}
	sched := newFakeScheduler()
	sched.Set(b)
	agent := func() *Agent {
		return New(Options{Node: node, Address: "127.0.0.1", Capacity: resource.Vector{2000, 1 << 30},
			Docker: dc, Scheduler: sched, Puller: &Puller{Docker: dc, Attempts: 1},
			PollWait: 5 * time.Second, ReportInterval: 200 * time.Millisecond, RetryInterval: 200 * time.Millisecond,
			UsageInterval: 300 * time.Millisecond, StopTimeout: time.Second, Enforcer: enf, WritableLayerLimit: 16 << 20, Log: testLogger()})
	}
	stop := runAgent(t, agent())
	t.Cleanup(func() {
		stop()
		for _, id := range []string{a.ID, b.ID, cw.ID, d.ID} {
			exec.Command("docker", "-H", host, "rm", "-f", ContainerName(id)).Run()
			enf.Stopped(id)
		}
	})
	waitStates(t, sched, model.Healthy, b.ID) // no health check: healthy once running
	c, err := dc.ContainerInspect(t.Context(), ContainerName(b.ID))
	if err != nil {
		t.Fatal(err)
	}
	r := c.HostConfig.Resources
	var mounts []string
	for _, m := range c.HostConfig.Mounts {
		mounts = append(mounts, fmt.Sprintf("%s ro=%v", m.Target, m.ReadOnly))
	}
	if r.CgroupParent != "/"+parent || r.MemoryReservation != 64<<20 || r.Memory != 400<<20 || len(r.BlkioDeviceWriteBps) != 1 || r.CpusetCpus != "0" ||
		!slices.Equal(mounts, []string{"/srv/data ro=false", enforce.GateEntrypoint + " ro=true", "/.gaia-gate.d ro=true"}) {
		t.Fatalf("B's HostConfig: parent %q reservation %d memory %d blkio %v cpuset %q mounts %q", r.CgroupParent, r.MemoryReservation, r.Memory, r.BlkioDeviceWriteBps, r.CpusetCpus, mounts)
	}
	if want := append([]string{enforce.GateEntrypoint}, b.Command...); !slices.Equal(append(c.Config.Entrypoint, c.Config.Cmd...), want) {
		t.Fatalf("B runs %q %q, want %q", c.Config.Entrypoint, c.Config.Cmd, want)
	}
	waitFor(t, "B's HTB classes", func() (bool, string) {
		out, _ := exec.Command("tc", "class", "show", "dev", "gxag-out").CombinedOutput()
		return strings.Contains(string(out), "rate 30Mbit ceil 100Mbit"), string(out)
	})
	// Every datagram D sent went through its class: none left before the
	// class existed. Again after a restart (a new veth, a new class).
	sched.Set(b, d)
	waitStates(t, sched, model.Healthy, d.ID)
	classBytes := func(what string) {
		t.Helper()
		waitFor(t, what, func() (bool, string) {
			// a datagram is 1042 bytes in the class: 1000 + UDP, IPv4 and Ethernet headers
			u := enf.Usage()[d.ID]
			return u.NetOutBytes >= sent*1042, fmt.Sprintf("D's egress class counted %d bytes, want ≥ %d (%d datagrams)", u.NetOutBytes, sent*1042, sent)
		})
	}
	classBytes("D's first datagrams in its class")
	if err := dc.ContainerKill(t.Context(), ContainerName(d.ID), "KILL"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "D restarted", func() (bool, string) {
		r := sched.Reports()[d.ID]
		return r.Restarts == 1 && r.State == model.Healthy, fmt.Sprintf("%s %q, %d restarts", r.State, r.Reason, r.Restarts)
	})
	classBytes("D's datagrams after its restart in its new class")
	sched.Set(b)
	waitFor(t, "D gone", func() (bool, string) {
		_, err := dc.ContainerInspect(t.Context(), ContainerName(d.ID))
		return client.IsErrNotFound(err), fmt.Sprint(err)
	})

	waitFor(t, "B's disk usage reported", func() (bool, string) {
		u := sched.Reports()[b.ID].Usage
		return u[resource.Disk] > 0, fmt.Sprintf("usage %v", u)
	})

	// An agent restart: the new Enforcer's Init empties the trees, the new
	// agent adopts B and gives it its classes back; its volume stays.
	stop()
	enf.Close()
	enf = newEnforcer()
	if out, _ := exec.Command("tc", "class", "show", "dev", "gxag-out").CombinedOutput(); strings.Contains(string(out), "rate 30Mbit") {
		t.Fatalf("classes after Init:\n%s", out)
	}
	stop = runAgent(t, agent())
	waitFor(t, "B's HTB classes rebuilt after the agent's restart", func() (bool, string) {
		out, _ := exec.Command("tc", "class", "show", "dev", "gxag-in").CombinedOutput()
		return strings.Contains(string(out), "rate 20Mbit ceil 100Mbit"), string(out)
	})
	if c2, err := dc.ContainerInspect(t.Context(), ContainerName(b.ID)); err != nil || c2.ID != c.ID {
		t.Fatalf("B not adopted: %v", err)
	}
	waitFor(t, "B's disk usage reported by the new agent", func() (bool, string) {
		u := enf.Usage()[b.ID]
		return u.DiskUsedBytes > 0, fmt.Sprintf("usage %+v", u)
	})

	sched.Set(a, b)
	rep := waitStates(t, sched, model.Failed, a.ID)[a.ID]
	t.Logf("A: %s %q", rep.State, rep.Reason)
	if !strings.HasPrefix(rep.Reason, "oom-reclaimed") {
		t.Fatalf("A failed with %q, want oom-reclaimed", rep.Reason)
	}
	if c, err := dc.ContainerInspect(t.Context(), ContainerName(b.ID)); err != nil || !c.State.Running || c.State.OOMKilled {
		t.Fatalf("B after A was reclaimed: %+v %v", c.State, err)
	}

	// A container writing past the node's writable-layer limit is evicted.
	sched.Set(a, b, cw)
	rep = waitStates(t, sched, model.Failed, cw.ID)[cw.ID]
	t.Logf("C: %s %q", rep.State, rep.Reason)
	if !strings.HasPrefix(rep.Reason, "evicted: the container's writable layer holds") {
		t.Fatalf("C failed with %q, want evicted", rep.Reason)
	}

	sched.Set()
	waitFor(t, "B's volume, gate and classes gone", func() (bool, string) {
		ents, _ := os.ReadDir(volumes)
		gs, _ := os.ReadDir(gates)
		out, _ := exec.Command("tc", "class", "show", "dev", "gxag-out").CombinedOutput()
		return len(ents) == 0 && len(gs) == 0 && strings.Count(string(out), "class htb") == 1,
			fmt.Sprintf("%d volumes, %d gate directories, classes:\n%s", len(ents), len(gs), out)
	})
}

// buildHogImage imports an image holding nodeagent/enforce's test hog.
func buildHogImage(t *testing.T, host, image string) {
	if err := harness.ImportRootfs(host, image, map[string]string{"hog": harness.BuildStatic(t, "./enforce/testdata/hog")}); err != nil {
		t.Fatal(err)
	}
}

// gateCommand runs what docker would have run: the app's command and
// args over the image's entrypoint and cmd.
func TestGateCommand(t *testing.T) {
	for _, c := range []struct {
		appEP, appCmd, imgEP, imgCmd, want []string
	}{
		{nil, nil, []string{"/ep", "-x"}, []string{"serve"}, []string{"/ep", "-x", "serve"}},
		{nil, []string{"run"}, []string{"/ep"}, []string{"serve"}, []string{"/ep", "run"}},
		{[]string{"/app"}, nil, []string{"/ep"}, []string{"serve"}, []string{"/app"}},
		{[]string{"/app"}, []string{"a"}, []string{"/ep"}, []string{"serve"}, []string{"/app", "a"}},
		{nil, nil, nil, []string{"sh", "-c", "x"}, []string{"sh", "-c", "x"}},
	} {
		cfg := &container.Config{Entrypoint: c.appEP, Cmd: c.appCmd}
		gateCommand(cfg, c.imgEP, c.imgCmd)
		if !slices.Equal(cfg.Entrypoint, []string{enforce.GateEntrypoint}) || !slices.Equal(cfg.Cmd, c.want) {
			t.Errorf("app %q %q, image %q %q: entrypoint %q cmd %q, want cmd %q", c.appEP, c.appCmd, c.imgEP, c.imgCmd, cfg.Entrypoint, cfg.Cmd, c.want)
		}
	}
}

// A gated container is found from its own entrypoint and mounts (any
// agent releases it); closing makes the directory and removes a release.
func TestGateDirFromContainer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "g")
	c := container.InspectResponse{Config: &container.Config{Entrypoint: []string{enforce.GateEntrypoint}, Cmd: []string{"/app"}}}
	c.ContainerJSONBase = &container.ContainerJSONBase{}
	c.Mounts = []container.MountPoint{{Source: "/srv/v", Destination: "/data"}, {Source: dir, Destination: enforce.GateDirTarget}}
	if got := gateDir(c); got != dir {
		t.Fatalf("gateDir %q, want %q", got, dir)
	}
	if err := closeGate(dir); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, enforce.GateReleased), nil, 0o644)
	if err := closeGate(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, enforce.GateReleased)); !os.IsNotExist(err) {
		t.Fatalf("released after closeGate: %v", err)
	}
	c.Config.Entrypoint = []string{"/app"}
	if got := gateDir(c); got != "" {
		t.Fatalf("an ungated container's gate: %q", got)
	}
}
