package enforce

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/resource"
)

// The cgroup v2 driver cannot run on the project's machines (cgroup v1
// hybrid; the unified mount has no memory controller there), so it is
// tested against a fake unified hierarchy in a temporary directory: the
// parent's files as containerd/cgroups writes them, EMC's decision from
// memory.current against memory.high, and the statistics.
func fakeV2(t *testing.T) string {
	root := t.TempDir()
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
	write("cgroup.subtree_control", "")
	for _, f := range []string{"cgroup.subtree_control", "memory.max", "memory.high", "memory.current", "memory.events", "cgroup.events"} {
		write("gaia/"+f, "")
	}
	write("gaia/memory.current", "1000\n")
	write("gaia/cgroup.events", "populated 1\nfrozen 0\n")
	write("gaia/memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
	for _, c := range []string{"gaia/c-a", "gaia/c-b"} {
		write(c+"/memory.current", "0\n")
		write(c+"/memory.stat", "anon 0\nfile 0\ninactive_file 0\n")
		write(c+"/memory.max", "max\n")
		write(c+"/cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
		write(c+"/io.stat", "7:0 rbytes=100 wbytes=2000 rios=1 wios=2 dbytes=0 dios=0\n")
	}
	return root
}

func TestCgroupV2Parent(t *testing.T) {
	root := fakeV2(t)
	n := newNode(Config{CgroupParent: "gaia", AllocatableMemory: 1000 * mib, PressureThreshold: 0.9, CheckInterval: 20 * time.Millisecond}, &cgroupV2{root: root})
	n.cfg.defaults()
	if err := n.Init(); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	read := func(p string) string {
		b, _ := os.ReadFile(filepath.Join(root, p))
		return strings.TrimSpace(string(b))
	}
	if read("gaia/memory.max") != "1048576000" || read("gaia/memory.high") != "943718400" {
		t.Fatalf("parent memory.max %q memory.high %q", read("gaia/memory.max"), read("gaia/memory.high"))
	}
	if sc := read("cgroup.subtree_control"); !strings.Contains(sc, "memory") || !strings.Contains(sc, "cpu") || !strings.Contains(sc, "io") {
		t.Fatalf("root cgroup.subtree_control %q: the parent's controllers not enabled", sc)
	}
	var ra, rb resource.Vector
	ra[resource.Memory], rb[resource.Memory] = 100*mib, 100*mib
	_ = n.Started(Instance{ID: "a", Request: ra, Priority: 1}, "c-a", "")
	_ = n.Started(Instance{ID: "b", Request: rb, Priority: 1}, "c-b", "")
	_ = os.WriteFile(filepath.Join(root, "gaia/c-a/memory.current"), []byte("104857600\n"), 0o644) // at its request
	_ = os.WriteFile(filepath.Join(root, "gaia/c-b/memory.current"), []byte("838860800\n"), 0o644) // 800 MiB

	u := n.Usage()["a"]
	if u.MemoryBytes != 100*mib || u.CPUNanos != 1500_000 || u.IOReadBytes != 100 || u.IOWriteBytes != 2000 {
		t.Fatalf("v2 usage %+v", u)
	}
	select {
	case v := <-n.Victims():
		t.Fatalf("victim %s below memory.high", v.ID)
	case <-time.After(100 * time.Millisecond):
	}
	_ = os.WriteFile(filepath.Join(root, "gaia/memory.current"), []byte("943718400\n"), 0o644)
	select {
	case v := <-n.Victims():
		if v.ID != "b" {
			t.Fatalf("victim %s (%s), want b (800 MiB over a 100 MiB request)", v.ID, v.Reason)
		}
		t.Logf("v2 victim: %s", v.Reason)
	case <-time.After(5 * time.Second):
		t.Fatal("no victim at memory.high")
	}
}

func TestV2ParentResources(t *testing.T) {
	r := v2ParentResources(1000, 0.9)
	if *r.Memory.Max != 1000 || *r.Memory.High != 900 {
		t.Fatalf("%+v", r.Memory)
	}
	if r := v2ParentResources(0, 0.9); r.Memory.Max != nil {
		t.Fatal("no allocatable memory: no memory.max")
	}
}

// Usage, EMC's check and Started/Stopped run on different goroutines in
// the agent (the race detector watches this).
func TestConcurrentUse(t *testing.T) {
	root := fakeV2(t)
	n := newNode(Config{CgroupParent: "gaia", AllocatableMemory: 1000 * mib, CheckInterval: time.Millisecond, VolumeDir: t.TempDir()}, &cgroupV2{root: root})
	n.cfg.defaults()
	if err := n.Init(); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			n.Usage()
			n.NodeUsage()
		}
	}()
	for i := 0; i < 200; i++ {
		var r resource.Vector
		r[resource.Memory] = int64(i) * mib
		_ = n.Started(Instance{ID: "a", Request: r}, "c-a", "")
		_ = n.Started(Instance{ID: "b", Request: r}, "c-b", "")
		if i%10 == 0 {
			_ = n.Stopped("b")
		}
	}
	<-done
}
