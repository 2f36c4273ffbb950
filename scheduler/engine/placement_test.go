package engine

import (
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
)

func nodesOf(p *Plan, app string) []string {
	var out []string
	for _, pl := range p.Place {
		if pl.Instance.App == app {
			out = append(out, pl.Instance.Node)
		}
	}
	sort.Strings(out)
	return out
}

func TestScoring(t *testing.T) {
	for _, tc := range []struct {
		scoring Scoring
		want    []string
	}{
		{Binpack, []string{"n1", "n1", "n1"}},
		{Spread, []string{"n1", "n2", "n3"}},
	} {
		c := New(Config{Scoring: tc.scoring})
		for _, n := range []string{"n1", "n2", "n3"} {
			addNode(c, n, vec("cpu=4", "memory=4Gi"))
		}
		addApp(c, "a", "root.p", 3, vec("cpu=1", "memory=1Gi"))
		if got := nodesOf(step(t, c, t0), "a"); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("scoring %d: nodes %v, want %v", tc.scoring, got, tc.want)
		}
	}
}

// Every dimension counts: a node with cpu and memory but no disk, or no
// netout, is not a candidate.
func TestAllSixDimensions(t *testing.T) {
	c := New(Config{})
	addNode(c, "nodisk", vec("cpu=8", "memory=8Gi", "disk=1Gi", "diskio=100MiB/s", "netin=1Gbit", "netout=1Gbit"))
	addNode(c, "nonet", vec("cpu=8", "memory=8Gi", "disk=100Gi", "diskio=100MiB/s", "netin=1Gbit", "netout=10Mbit"))
	addNode(c, "ok", vec("cpu=8", "memory=8Gi", "disk=100Gi", "diskio=100MiB/s", "netin=1Gbit", "netout=1Gbit"))
	req := vec("cpu=1", "memory=1Gi", "disk=10Gi", "diskio=20MiB/s", "netin=100Mbit", "netout=100Mbit")
	addApp(c, "a", "root.p", 10, req)
	p := step(t, c, t0)
	// diskio binds: 5 × 20MiB/s on the only feasible node
	if got := nodesOf(p, "a"); len(got) != 5 || got[0] != "ok" || got[4] != "ok" {
		t.Fatalf("nodes %v, want 5 on ok", got)
	}
	// reserved capacity is not allocatable
	c2 := New(Config{})
	c2.UpsertNode(model.Node{Name: "n", Capacity: vec("cpu=4", "memory=4Gi"), Reserved: vec("cpu=1"), State: model.NodeReady})
	addApp(c2, "a", "root.p", 10, vec("cpu=1", "memory=100Mi"))
	if got := len(step(t, c2, t0).Place); got != 3 {
		t.Fatalf("placed %d with 1 of 4 cpus reserved, want 3", got)
	}
}

func TestSpreadAndConstraints(t *testing.T) {
	c := New(Config{})
	addNode(c, "a1", vec("cpu=8", "memory=8Gi"), "idc=a", "disk=ssd")
	addNode(c, "a2", vec("cpu=8", "memory=8Gi"), "idc=a")
	addNode(c, "b1", vec("cpu=8", "memory=8Gi"), "idc=b", "disk=ssd")
	addApp(c, "spread", "root.p", 5, vec("cpu=1", "memory=1Gi"), func(a *model.App) { a.Spec.Spread = 1 })
	addApp(c, "ssd", "root.q", 2, vec("cpu=1", "memory=1Gi"), func(a *model.App) {
		a.Spec.Constraints = model.Constraints{Labels: map[string]string{"disk": "ssd"}, IDC: "b"}
	})
	addApp(c, "nowhere", "root.r", 1, vec("cpu=1", "memory=1Gi"), func(a *model.App) {
		a.Spec.Constraints = model.Constraints{Labels: map[string]string{"gpu": "yes"}}
	})
	p := step(t, c, t0)
	if got := nodesOf(p, "spread"); !reflect.DeepEqual(got, []string{"a1", "a2", "b1"}) {
		t.Fatalf("spread: %v", got)
	}
	if got := nodesOf(p, "ssd"); !reflect.DeepEqual(got, []string{"b1", "b1"}) {
		t.Fatalf("ssd: %v", got)
	}
	un := map[string]Unplaceable{}
	for _, u := range p.Unplaceable {
		un[u.App] = u
	}
	if un["spread"].Count != 2 || un["nowhere"].Count != 1 || un["nowhere"].Reason != "no node has room for cpu=1 memory=1Gi matching its constraints" {
		t.Fatalf("unplaceable %+v", p.Unplaceable)
	}
}

// Many nodes, few match: the constrained list path is used, and still
// exact.
func TestConstraintsManyNodes(t *testing.T) {
	c := New(Config{})
	for j := 0; j < 200; j++ {
		idc := "a"
		if j%50 == 7 {
			idc = "b"
		}
		addNode(c, nodeName(j), vec("cpu=2", "memory=2Gi"), "idc="+idc)
	}
	addApp(c, "b", "root.p", 10, vec("cpu=1", "memory=1Gi"), func(a *model.App) { a.Spec.Constraints.IDC = "b" })
	p := step(t, c, t0)
	got := nodesOf(p, "b")
	want := []string{"n007", "n007", "n057", "n057", "n107", "n107", "n157", "n157"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("nodes %v, want %v", got, want)
	}
}

func nodeName(j int) string {
	return "n" + string(rune('0'+j/100)) + string(rune('0'+j/10%10)) + string(rune('0'+j%10))
}

func TestHostPorts(t *testing.T) {
	c := New(Config{PortMin: 20000, PortMax: 20002})
	addNode(c, "n1", vec("cpu=16", "memory=16Gi"))
	addNode(c, "n2", vec("cpu=16", "memory=16Gi"))
	addApp(c, "fixed", "root.p", 3, vec("cpu=1", "memory=1Gi"), func(a *model.App) {
		a.Spec.Ports = []model.Port{{Name: "http", ContainerPort: 80, HostPort: 8080}}
	})
	addApp(c, "dyn", "root.q", 10, vec("cpu=1", "memory=1Gi"), func(a *model.App) {
		a.Spec.Ports = []model.Port{{Name: "http", ContainerPort: 80}}
	})
	p := step(t, c, t0)
	if got := nodesOf(p, "fixed"); !reflect.DeepEqual(got, []string{"n1", "n2"}) {
		t.Fatalf("fixed host port: %v, want one per node", got)
	}
	// three dynamic ports per node in the range 20000-20002
	perNode := map[string][]int{}
	for _, pl := range p.Place {
		if pl.Instance.App == "dyn" {
			perNode[pl.Instance.Node] = append(perNode[pl.Instance.Node], pl.Instance.HostPorts["http"])
		}
	}
	for n, ports := range perNode {
		sort.Ints(ports)
		if !reflect.DeepEqual(ports, []int{20000, 20001, 20002}) {
			t.Fatalf("node %s dynamic ports %v", n, ports)
		}
	}
	if len(nodesOf(p, "dyn")) != 6 {
		t.Fatalf("dyn placed %d, want 6 (3 ports × 2 nodes)", len(nodesOf(p, "dyn")))
	}
	// a stopped instance frees its port for the next one
	agent(c)
	var victim string
	for _, i := range c.Instances("dyn") {
		if i.Node == "n1" && i.HostPorts["http"] == 20001 {
			victim = i.ID
		}
	}
	c.RemoveInstance(victim)
	p2 := step(t, c, t0.Add(time.Second))
	if len(p2.Place) != 1 || p2.Place[0].Instance.Node != "n1" || p2.Place[0].Instance.HostPorts["http"] != 20001 {
		t.Fatalf("replacement %+v", p2.Place)
	}
}

func TestScaleStopAndRemove(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=16", "memory=16Gi"))
	addApp(c, "a", "root.p", 4, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0)
	agent(c)
	addApp(c, "a", "root.p", 1, vec("cpu=1", "memory=1Gi"))
	p := step(t, c, t0.Add(time.Second))
	if len(stopsBy(p, ReasonScaledDown)) != 3 || len(p.Place) != 0 {
		t.Fatalf("scale down: %+v", p)
	}
	// stopping instances still hold their resources
	if used := c.NodeUsed("n1"); used[0] != 4000 {
		t.Fatalf("used %v while stopping", used)
	}
	// asked once: the next plan does not stop them again
	if p := c.Plan(t0.Add(2 * time.Second)); !p.Empty() {
		t.Fatalf("repeat plan %+v", p)
	}
	agent(c)
	if used := c.NodeUsed("n1"); used[0] != 1000 {
		t.Fatalf("used %v after stop", used)
	}
	addApp(c, "a", "root.p", 1, vec("cpu=1", "memory=1Gi"), func(a *model.App) { a.State = model.AppStopped })
	if p := step(t, c, t0.Add(3*time.Second)); len(stopsBy(p, ReasonAppStopped)) != 1 {
		t.Fatalf("stop app: %+v", p)
	}
	agent(c)
	addApp(c, "a", "root.p", 2, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0.Add(4*time.Second))
	c.RemoveApp("a")
	if p := step(t, c, t0.Add(5*time.Second)); len(stopsBy(p, ReasonAppRemoved)) != 2 {
		t.Fatalf("remove app: %+v", p)
	}
	agent(c)
	if _, ok := c.apps["a"]; ok {
		t.Fatal("removed app still known after its instances went")
	}
}

func TestNodeDownReplaces(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=4", "memory=4Gi"))
	addNode(c, "n2", vec("cpu=4", "memory=4Gi"))
	addApp(c, "a", "root.p", 3, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0)
	agent(c)
	c.UpsertNode(model.Node{Name: "n1", Capacity: vec("cpu=4", "memory=4Gi"), State: model.NodeDown})
	p := step(t, c, t0.Add(time.Minute))
	if len(stopsBy(p, ReasonNodeDown)) != 3 || !reflect.DeepEqual(nodesOf(p, "a"), []string{"n2", "n2", "n2"}) {
		t.Fatalf("node down: stops %v places %v", p.Stop, nodesOf(p, "a"))
	}
	// the node comes back: the lost instances are told to stop, nothing more placed
	c.UpsertNode(model.Node{Name: "n1", Capacity: vec("cpu=4", "memory=4Gi"), State: model.NodeReady})
	if got := counts(c)["a"]; got != 3 {
		t.Fatalf("live after return %d, want 3", got)
	}
	for _, i := range c.Instances("a") {
		if i.Node == "n1" && i.Desired != model.DesiredStop {
			t.Fatalf("instance %s on the returned node not asked to stop", i.ID)
		}
	}
	if p := c.Plan(t0.Add(2 * time.Minute)); !p.Empty() {
		t.Fatalf("after return %+v", p)
	}
}

func TestDrainRespectsMaxParallel(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=8", "memory=8Gi"))
	addApp(c, "a", "root.p", 4, vec("cpu=1", "memory=1Gi"), func(a *model.App) { a.Spec.Update.MaxParallel = 2 })
	step(t, c, t0)
	agent(c)
	addNode(c, "n2", vec("cpu=8", "memory=8Gi"))
	c.UpsertNode(model.Node{Name: "n1", Capacity: vec("cpu=8", "memory=8Gi"), State: model.NodeDraining})
	now := t0
	for round := 1; round <= 2; round++ {
		now = now.Add(time.Second)
		p := step(t, c, now)
		if len(stopsBy(p, ReasonDraining)) != 2 || !reflect.DeepEqual(nodesOf(p, "a"), []string{"n2", "n2"}) {
			t.Fatalf("round %d: %+v", round, p)
		}
		// nothing more until those are done
		if p := c.Plan(now.Add(time.Millisecond)); !p.Empty() {
			t.Fatalf("round %d: went past maxParallel: %+v", round, p)
		}
		agent(c)
	}
	for _, i := range c.Instances("a") {
		if i.Node != "n2" {
			t.Fatalf("%s still on %s", i.ID, i.Node)
		}
	}
}

func TestRollingUpdateAndCanary(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=16", "memory=16Gi"))
	upd := func(v int64, promoted bool) func(*model.App) {
		return func(a *model.App) {
			a.Version = v
			a.Promoted = promoted
			a.Spec.Update = model.Update{MaxParallel: 2, Canary: 1}
		}
	}
	addApp(c, "a", "root.p", 5, vec("cpu=1", "memory=1Gi"), upd(1, true))
	step(t, c, t0)
	agent(c)
	addApp(c, "a", "root.p", 5, vec("cpu=1", "memory=1Gi"), upd(2, false))
	now := t0
	// canary: exactly one instance moves to version 2, then it waits
	for round := 0; round < 3; round++ {
		now = now.Add(time.Second)
		step(t, c, now)
		agent(c)
	}
	v2 := 0
	for _, i := range c.Instances("a") {
		if i.Version == 2 {
			v2++
		}
	}
	if v2 != 1 || counts(c)["a"] != 5 {
		t.Fatalf("canary: %d on v2 of %d", v2, counts(c)["a"])
	}
	// promote: the rest rolls two at a time
	addApp(c, "a", "root.p", 5, vec("cpu=1", "memory=1Gi"), upd(2, true))
	now = now.Add(time.Second)
	p := step(t, c, now)
	if len(stopsBy(p, ReasonReplaced)) != 2 || len(p.Place) != 2 || p.Place[0].Instance.Version != 2 {
		t.Fatalf("promote: %+v", p)
	}
	for round := 0; round < 3; round++ {
		agent(c)
		now = now.Add(time.Second)
		step(t, c, now)
	}
	agent(c)
	for _, i := range c.Instances("a") {
		if i.Version != 2 {
			t.Fatalf("%s still on version %d", i.ID, i.Version)
		}
	}
	if counts(c)["a"] != 5 {
		t.Fatalf("%d live, want 5", counts(c)["a"])
	}
}

func TestPlanDoesNotMutate(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=4", "memory=4Gi"))
	addApp(c, "a", "root.p", 10, vec("cpu=1", "memory=1Gi"))
	p1 := c.Plan(t0)
	p2 := c.Plan(t0)
	if !reflect.DeepEqual(p1.Place, p2.Place) || len(p1.Place) != 4 {
		t.Fatalf("plans differ or wrong: %d %d", len(p1.Place), len(p2.Place))
	}
	if len(c.insts) != 0 || c.NodeUsed("n1") != (vec()) {
		t.Fatal("Plan changed the cluster")
	}
	c.Apply(p1)
	checkInvariants(t, c)
	if got := len(c.Instances("a")); got != 4 {
		t.Fatalf("applied %d", got)
	}
	for _, i := range c.Instances("a") {
		if len(i.ID) != len("a-")+8 || i.State != model.Assigned || i.Desired != model.DesiredRun {
			t.Fatalf("instance %+v", i)
		}
	}
}

// Spread scoring over the constrained-list path: the matching nodes are
// used evenly and nothing else is touched.
func TestSpreadScoringWithConstraints(t *testing.T) {
	c := New(Config{Scoring: Spread})
	for j := 0; j < 100; j++ {
		idc := "a"
		if j%20 == 3 {
			idc = "b"
		}
		addNode(c, nodeName(j), vec("cpu=8", "memory=8Gi"), "idc="+idc)
	}
	addApp(c, "b", "root.p", 10, vec("cpu=1", "memory=1Gi"), func(a *model.App) { a.Spec.Constraints.IDC = "b" })
	per := map[string]int{}
	for _, n := range nodesOf(step(t, c, t0), "b") {
		per[n]++
	}
	want := map[string]int{"n003": 2, "n023": 2, "n043": 2, "n063": 2, "n083": 2}
	if !reflect.DeepEqual(per, want) {
		t.Fatalf("per node %v, want %v", per, want)
	}
}

// A rolling update of an app with a health check waits for each new
// instance to pass it: one running but not (yet) healthy is still in
// flight, so an update to a version that never passes stops no more than
// maxParallel old instances (the rest keep serving until a rollback).
func TestRollingUpdateWaitsForHealthy(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=16", "memory=16Gi"))
	upd := func(v int64) func(*model.App) {
		return func(a *model.App) {
			a.Version = v
			a.Promoted = true
			a.Spec.Update = model.Update{MaxParallel: 1}
			a.Spec.Health = &model.Health{Type: "tcp", Port: "http"}
		}
	}
	addApp(c, "a", "root.p", 3, vec("cpu=1", "memory=1Gi"), upd(1))
	step(t, c, t0)
	agent(c)
	for _, i := range c.Instances("a") {
		i.State = model.Healthy
		c.UpsertInstance(i)
	}
	addApp(c, "a", "root.p", 3, vec("cpu=1", "memory=1Gi"), upd(2))
	now := t0
	for round := 0; round < 4; round++ {
		now = now.Add(time.Second)
		step(t, c, now)
		agent(c) // version 2's instances run, never healthy
	}
	v1 := 0
	for _, i := range c.Instances("a") {
		if i.Version == 1 && i.Desired == model.DesiredRun {
			v1++
		}
	}
	if v1 != 2 {
		t.Fatalf("%d instances of version 1 left running, want 3 - maxParallel = 2: %+v", v1, c.Instances("a"))
	}
}
