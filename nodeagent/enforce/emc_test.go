package enforce

import (
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/resource"
)

const mib = 1 << 20

func memInstance(id string, prio int, request, ceiling int64) Instance {
	var r resource.Vector
	r[resource.Memory] = request
	r[resource.CPU] = 100
	return Instance{ID: id, Priority: prio, Request: r, MemoryLimit: ceiling}
}

// §7 EMC: on a node with 224 MiB allocatable, A (request 64 MiB) bursts
// to 150 MiB while B (request 64 MiB) holds 50 MiB: A is not killed while
// the node has room. Then A grows until the parent is full: the OOM killer
// is off on the parent, so nothing dies; EMC names A (furthest above its
// request) and the agent (here the test) stops it; B is untouched. The
// same workload with a hard limit at the request kills A at 64 MiB.
func TestEMC(t *testing.T) {
	needNode(t)
	n := testNode(t, Config{AllocatableMemory: 224 * mib, CheckInterval: 200 * time.Millisecond})

	a, b := memInstance("emc-a", 0, 64*mib, 400*mib), memInstance("emc-b", 0, 64*mib, 400*mib)
	ca, err := n.Prepare(a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := n.Prepare(b)
	if err != nil {
		t.Fatal(err)
	}
	if ca.MemoryReservation != 64*mib || ca.Memory != 400*mib {
		t.Fatalf("Prepare: soft limit %d (want the request), hard %d (want the ceiling)", ca.MemoryReservation, ca.Memory)
	}
	idB := startContainer(t, "gaia-emc-b", cb, "mem", "50")
	if err := n.Started(b, idB, ""); err != nil {
		t.Fatal(err)
	}
	waitLog(t, "gaia-emc-b", "held 50", 30*time.Second)
	idA := startContainer(t, "gaia-emc-a", ca, "mem", "150")
	if err := n.Started(a, idA, ""); err != nil {
		t.Fatal(err)
	}
	waitLog(t, "gaia-emc-a", "held 150", 30*time.Second)
	time.Sleep(time.Second) // a few EMC checks
	u := n.Usage()
	t.Logf("bursting: A uses %d MiB (request 64), B %d MiB (request 64), node %d MiB of 224",
		u["emc-a"].MemoryBytes/mib, u["emc-b"].MemoryBytes/mib, n.NodeUsage().MemoryBytes/mib)
	select {
	case v := <-n.Victims():
		t.Fatalf("EMC picked %s while the node had room: %s", v.ID, v.Reason)
	default:
	}
	if s := inspect(t, "gaia-emc-a", "{{.State.Status}} {{.State.OOMKilled}}"); s != "running false" {
		t.Fatalf("A (bursting to 150 MiB over its 64 MiB request, node not full): %s, want running", s)
	}
	if u["emc-a"].MemoryBytes < 140*mib {
		t.Fatalf("A uses %d bytes, want ≥ 140 MiB (the burst)", u["emc-a"].MemoryBytes)
	}

	// A grows until the parent is full.
	if _, err := dockerTry("exec", "-d", "gaia-emc-a", "/hog", "mem", "200"); err != nil {
		t.Fatal(err)
	}
	var v Victim
	select {
	case v = <-n.Victims():
	case <-time.After(60 * time.Second):
		t.Fatalf("no EMC victim 60 s after A started filling the node (parent: %v)", func() string { _, w := n.cg.pressure(); return w }())
	}
	t.Logf("EMC victim: %s", v.Reason)
	if v.ID != "emc-a" || !strings.HasPrefix(v.Reason, "oom-reclaimed") {
		t.Fatalf("victim %s (%s), want emc-a", v.ID, v.Reason)
	}
	if s := inspect(t, "gaia-emc-a", "{{.State.OOMKilled}}"); s != "false" {
		t.Fatalf("A was OOM-killed by the kernel (OOMKilled=%s): the agent should have decided", s)
	}
	docker(t, "kill", "gaia-emc-a") // the agent stops the victim
	if err := n.Stopped("emc-a"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if s := inspect(t, "gaia-emc-b", "{{.State.Status}} {{.State.OOMKilled}} {{.State.Restarting}}"); s != "running false false" {
		t.Fatalf("B after A was reclaimed: %s, want running", s)
	}
	if ub := n.Usage()["emc-b"]; ub.MemoryBytes < 45*mib {
		t.Fatalf("B lost memory: %d bytes", ub.MemoryBytes)
	}
	select {
	case v := <-n.Victims():
		t.Fatalf("a second victim %s after A was stopped: %s", v.ID, v.Reason)
	case <-time.After(600 * time.Millisecond):
	}

	// The comparison: a hard limit at the request kills A at 64 MiB.
	hard := Container{Memory: 64 * mib, MemorySwap: 64 * mib}
	startContainer(t, "gaia-emc-hard", hard, "mem", "150")
	deadline := time.Now().Add(30 * time.Second)
	for inspect(t, "gaia-emc-hard", "{{.State.Status}}") == "running" && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	st := inspect(t, "gaia-emc-hard", "{{.State.Status}} oom={{.State.OOMKilled}}")
	logs, _ := dockerTry("logs", "gaia-emc-hard")
	lines := strings.Split(strings.TrimSpace(logs), "\n")
	t.Logf("hard limit at the request: %s, last progress %q", st, lines[len(lines)-1])
	if st != "exited oom=true" {
		t.Fatalf("hard limit 64 MiB, bursting to 150: %s, want exited oom=true", st)
	}
}

func TestPickVictim(t *testing.T) {
	mk := func(id string, prio int, req, use int64) candidate {
		return candidate{st: &instState{in: memInstance(id, prio, req, 0)}, usage: use}
	}
	cases := []struct {
		name string
		cs   []candidate
		want string
	}{
		{"furthest above request", []candidate{mk("a", 0, 64, 150), mk("b", 0, 64, 100), mk("c", 0, 10, 9)}, "a"},
		{"lowest priority first", []candidate{mk("a", 5, 64, 500), mk("b", 1, 64, 70)}, "b"},
		{"within request never", []candidate{mk("a", 0, 64, 64), mk("b", 0, 100, 90)}, ""},
		{"low priority within request is spared", []candidate{mk("a", 0, 64, 60), mk("b", 9, 64, 65)}, "b"},
	}
	for _, c := range cases {
		v, ok := pickVictim(c.cs)
		got := ""
		if ok {
			got = v.st.in.ID
		}
		if got != c.want {
			t.Errorf("%s: victim %q, want %q", c.name, got, c.want)
		}
	}
}
