package engine

import (
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
)

// b fills a 10-cpu cluster (two nodes of 5) before a arrives.
func fullCluster(t *testing.T, a, b model.Pool) *Cluster {
	t.Helper()
	c := New(Config{})
	addNode(c, "n1", vec("cpu=5", "memory=50Gi"))
	addNode(c, "n2", vec("cpu=5", "memory=50Gi"))
	c.UpsertPool(a)
	c.UpsertPool(b)
	addApp(c, "b", b.Name, 10, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0.Add(-time.Hour))
	agent(c)
	addApp(c, "a", a.Name, 10, vec("cpu=1", "memory=1Gi"))
	return c
}

func preemptedFor(p *Plan, pool string) int {
	k := 0
	for _, s := range p.Stop {
		if s.Reason == ReasonPreempted && s.Pool == pool {
			k++
		}
	}
	return k
}

func TestMinSharePreemption(t *testing.T) {
	c := fullCluster(t,
		model.Pool{Name: "root.a", Min: vec("cpu=4"), MinSharePreemptionTimeout: model.Duration(30 * time.Second)},
		model.Pool{Name: "root.b"})
	// starved from t0; nothing before the timeout
	for _, d := range []time.Duration{0, 29 * time.Second} {
		if p := step(t, c, t0.Add(d)); len(p.Stop) != 0 || len(p.Place) != 0 {
			t.Fatalf("at +%v: %+v", d, p)
		}
	}
	p := step(t, c, t0.Add(30*time.Second))
	if got := preemptedFor(p, "root.a"); got != 4 || len(p.Place) != 0 {
		t.Fatalf("at timeout: %d preempted for root.a (want 4), %d placed", got, len(p.Place))
	}
	// the victims are still stopping: no more preemption, nothing placed
	if p := step(t, c, t0.Add(31*time.Second)); len(p.Stop) != 0 || len(p.Place) != 0 {
		t.Fatalf("while stopping: %+v", p)
	}
	agent(c) // the victims stop
	p = step(t, c, t0.Add(32*time.Second))
	if got := placedPer(p)["a"]; got != 4 {
		t.Fatalf("after the victims stopped: placed %v, want a:4", placedPer(p))
	}
	if n := counts(c); n["a"] != 4 || n["b"] != 6 {
		t.Fatalf("live %v, want a:4 b:6", n)
	}
	// at its min, a is not starved for its min any more (no fair-share timeout)
	agent(c)
	if p := step(t, c, t0.Add(time.Hour)); len(p.Stop) != 0 {
		t.Fatalf("after min met: %+v", p.Stop)
	}
}

func TestFairSharePreemption(t *testing.T) {
	c := fullCluster(t,
		model.Pool{Name: "root.a", FairSharePreemptionTimeout: model.Duration(time.Minute), FairSharePreemptionThreshold: 0.5},
		model.Pool{Name: "root.b"})
	if p := step(t, c, t0); len(p.Stop) != 0 {
		t.Fatalf("at once: %+v", p.Stop)
	}
	if fs := c.FairShares(); fs["root.a"][0] != 5000 || fs["root.b"][0] != 5000 {
		t.Fatalf("fair shares %v %v", fs["root.a"], fs["root.b"])
	}
	p := step(t, c, t0.Add(time.Minute))
	// below half its fair share for a minute: taken up to its fair share, 5
	if got := preemptedFor(p, "root.a"); got != 5 {
		t.Fatalf("preempted %d for root.a, want 5", got)
	}
	agent(c)
	step(t, c, t0.Add(time.Minute+time.Second))
	agent(c)
	if n := counts(c); n["a"] != 5 || n["b"] != 5 {
		t.Fatalf("live %v, want a:5 b:5", n)
	}
	// at fair share nobody preempts any more
	if p := step(t, c, t0.Add(time.Hour)); len(p.Stop) != 0 {
		t.Fatalf("at fair share: %+v", p.Stop)
	}
}

// Above the threshold (here 4 of a fair share of 5 with threshold 0.5) a
// pool is not starved for its fair share.
func TestFairShareThreshold(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=10", "memory=50Gi"))
	c.UpsertPool(model.Pool{Name: "root.a", FairSharePreemptionTimeout: model.Duration(time.Minute), FairSharePreemptionThreshold: 0.5})
	addApp(c, "a", "root.a", 3, vec("cpu=1", "memory=1Gi"))
	addApp(c, "b", "root.b", 7, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0)
	agent(c)
	addApp(c, "a", "root.a", 10, vec("cpu=1", "memory=1Gi"))
	addApp(c, "b", "root.b", 10, vec("cpu=1", "memory=1Gi"))
	for _, d := range []time.Duration{time.Second, time.Hour} {
		if p := step(t, c, t0.Add(d)); len(p.Stop) != 0 {
			t.Fatalf("a at 3 of fair share 5 (threshold 2.5) preempted: %+v", p.Stop)
		}
	}
}

func TestAllowPreemptionFromFalse(t *testing.T) {
	c := fullCluster(t,
		model.Pool{Name: "root.a", Min: vec("cpu=4"), MinSharePreemptionTimeout: model.Duration(time.Second)},
		model.Pool{Name: "root.b", AllowPreemptionFrom: model.Bool(false)})
	for _, d := range []time.Duration{0, time.Minute, time.Hour} {
		if p := step(t, c, t0.Add(d)); len(p.Stop) != 0 {
			t.Fatalf("preempted from a pool that forbids it: %+v", p.Stop)
		}
	}
	// a parent that forbids it protects its children too
	c2 := fullCluster(t,
		model.Pool{Name: "root.a", Min: vec("cpu=4"), MinSharePreemptionTimeout: model.Duration(time.Second)},
		model.Pool{Name: "root.prod.b"})
	c2.UpsertPool(model.Pool{Name: "root.prod", AllowPreemptionFrom: model.Bool(false)})
	for _, d := range []time.Duration{0, time.Minute} {
		if p := step(t, c2, t0.Add(d)); len(p.Stop) != 0 {
			t.Fatalf("preempted under a parent that forbids it: %+v", p.Stop)
		}
	}
}

// Victims: lowest priority first, then the fewest instances.
func TestPreemptionVictimOrder(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=4", "memory=40Gi"))
	addNode(c, "n2", vec("cpu=4", "memory=40Gi"))
	c.UpsertPool(model.Pool{Name: "root.a", Min: vec("cpu=2"), MinSharePreemptionTimeout: model.Duration(time.Second)})
	// n1: four small low-priority instances; n2: two big ones of priority 5
	addApp(c, "low", "root.b", 4, vec("cpu=1", "memory=1Gi"), func(a *model.App) { a.Spec.Constraints.IDC = "" })
	step(t, c, t0)
	addApp(c, "high", "root.b", 2, vec("cpu=2", "memory=1Gi"), func(a *model.App) { a.Spec.Priority = 5 })
	step(t, c, t0)
	agent(c)
	if got := c.NodeUsed("n1"); got[0] != 4000 {
		t.Fatalf("setup: n1 used %v", got)
	}
	addApp(c, "a", "root.a", 1, vec("cpu=2", "memory=1Gi"))
	step(t, c, t0.Add(time.Minute))
	p := step(t, c, t0.Add(2*time.Minute))
	var victims []string
	for _, s := range p.Stop {
		m, _ := c.Instance(s.ID)
		victims = append(victims, m.App)
	}
	// two low-priority instances on n1 rather than one priority-5 one on n2
	if len(victims) != 2 || victims[0] != "low" || victims[1] != "low" {
		t.Fatalf("victims %v, want [low low]", victims)
	}
}

func TestPriorityPreemptionInPool(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=4", "memory=40Gi"))
	addApp(c, "batch", "root.p", 4, vec("cpu=1", "memory=1Gi"))
	addApp(c, "other", "root.q", 0, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0)
	agent(c)
	addApp(c, "web", "root.p", 2, vec("cpu=1", "memory=1Gi"), func(a *model.App) { a.Spec.Priority = 10 })
	p := step(t, c, t0.Add(time.Second))
	if len(p.Stop) != 2 || p.Stop[0].Reason != ReasonPreempted || len(p.Place) != 0 {
		t.Fatalf("priority preemption: %+v", p)
	}
	agent(c)
	p = step(t, c, t0.Add(2*time.Second))
	if got := placedPer(p); got["web"] != 2 {
		t.Fatalf("placed %v", got)
	}
	// equal priority never preempts
	addApp(c, "peer", "root.p", 2, vec("cpu=1", "memory=1Gi")) // priority 0, like batch
	agent(c)
	if p := step(t, c, t0.Add(3*time.Second)); len(p.Stop) != 0 {
		t.Fatalf("equal priority preempted: %+v", p.Stop)
	}
}

// A starved pool whose app needs a fixed host port takes the node whose
// port holder it may preempt.
func TestPreemptionFreesHostPort(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=8", "memory=80Gi"))
	c.UpsertPool(model.Pool{Name: "root.a", Min: vec("cpu=1"), MinSharePreemptionTimeout: model.Duration(time.Second)})
	port := func(a *model.App) { a.Spec.Ports = []model.Port{{Name: "web", ContainerPort: 80, HostPort: 8080}} }
	addApp(c, "b", "root.b", 1, vec("cpu=1", "memory=1Gi"), port)
	addApp(c, "fill", "root.b", 7, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0)
	agent(c)
	addApp(c, "a", "root.a", 1, vec("cpu=1", "memory=1Gi"), port)
	step(t, c, t0.Add(time.Second))
	p := step(t, c, t0.Add(3*time.Second))
	if len(p.Stop) != 1 {
		t.Fatalf("stops %+v", p.Stop)
	}
	if m, _ := c.Instance(p.Stop[0].ID); m.App != "b" {
		t.Fatalf("preempted %s, want the holder of port 8080", m.App)
	}
	agent(c)
	p = step(t, c, t0.Add(4*time.Second))
	if len(p.Place) != 1 || p.Place[0].Instance.App != "a" || p.Place[0].Instance.HostPorts["web"] != 8080 {
		t.Fatalf("placed %+v", p.Place)
	}
}

func TestCanFit(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=8", "memory=8Gi"), "idc=a")
	if ok, _ := c.CanFit(model.AppSpec{Resources: vec("cpu=8", "memory=8Gi")}); !ok {
		t.Fatal("a whole node's worth must fit")
	}
	if ok, why := c.CanFit(model.AppSpec{Resources: vec("cpu=9", "memory=1Gi")}); ok || why != "no node is big enough for cpu=9 memory=1Gi" {
		t.Fatalf("too big: %v %q", ok, why)
	}
	if ok, why := c.CanFit(model.AppSpec{Resources: vec("cpu=1"), Constraints: model.Constraints{IDC: "b"}}); ok || why != "no node matches the constraints" {
		t.Fatalf("constraints: %v %q", ok, why)
	}
}
