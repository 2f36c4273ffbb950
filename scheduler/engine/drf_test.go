package engine

import (
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
)

// The DRF paper's worked example: <9 CPU, 18 GB>, user A's tasks <1 CPU,
// 4 GB>, user B's <3 CPU, 1 GB> → A runs 3 tasks, B 2, both at a dominant
// share of 2/3.
func TestDRFPaperExample(t *testing.T) {
	for _, layout := range []struct{ name, poolA, poolB string }{
		{"two pools", "root.a", "root.b"},
		{"two apps in one pool", "root.users", "root.users"},
	} {
		t.Run(layout.name, func(t *testing.T) {
			c := New(Config{})
			addNode(c, "n1", vec("cpu=9", "memory=18G"))
			addApp(c, "a", layout.poolA, 100, vec("cpu=1", "memory=4G"))
			addApp(c, "b", layout.poolB, 100, vec("cpu=3", "memory=1G"))
			p := step(t, c, t0)
			if got := placedPer(p); got["a"] != 3 || got["b"] != 2 {
				t.Fatalf("placed %v, want a:3 b:2", got)
			}
			if len(p.Unplaceable) != 2 || p.Unplaceable[0].Count != 97 || p.Unplaceable[1].Count != 98 {
				t.Fatalf("unplaceable %+v", p.Unplaceable)
			}
			if layout.poolA != layout.poolB {
				fs := c.FairShares()
				// both at 2/3 dominant share: A 6 CPU-equivalents of memory (12 GB), B 6 CPU
				if fs["root.a"] != vec("cpu=3", "memory=12G") || fs["root.b"] != vec("cpu=6", "memory=2G") {
					t.Fatalf("fair shares a=%v b=%v", fs["root.a"], fs["root.b"])
				}
			}
			// nothing more fits: a second plan places nothing
			if p2 := c.Plan(t0.Add(time.Second)); len(p2.Place) != 0 {
				t.Fatalf("second plan placed %d", len(p2.Place))
			}
		})
	}
}

func TestWeights(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=9", "memory=90Gi"))
	c.UpsertPool(model.Pool{Name: "root.a", Weight: 2})
	c.UpsertPool(model.Pool{Name: "root.b", Weight: 1})
	addApp(c, "a", "root.a", 100, vec("cpu=1", "memory=1Gi"))
	addApp(c, "b", "root.b", 100, vec("cpu=1", "memory=1Gi"))
	p := step(t, c, t0)
	if got := placedPer(p); got["a"] != 6 || got["b"] != 3 {
		t.Fatalf("placed %v, want a:6 b:3", got)
	}
	fs := c.FairShares()
	if fs["root.a"][0] != 6000 || fs["root.b"][0] != 3000 {
		t.Fatalf("fair shares %v %v", fs["root.a"], fs["root.b"])
	}
}

func TestHierarchy(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=12", "memory=120Gi"))
	// root.x has two leaves, root.y one: y gets half, x's leaves a quarter each
	addApp(c, "x1", "root.x.one", 100, vec("cpu=1", "memory=1Gi"))
	addApp(c, "x2", "root.x.two", 100, vec("cpu=1", "memory=1Gi"))
	addApp(c, "y", "root.y", 100, vec("cpu=1", "memory=1Gi"))
	p := step(t, c, t0)
	if got := placedPer(p); got["x1"] != 3 || got["x2"] != 3 || got["y"] != 6 {
		t.Fatalf("placed %v, want x1:3 x2:3 y:6", got)
	}
	fs := c.FairShares()
	if fs["root.x"][0] != 6000 || fs["root.x.one"][0] != 3000 || fs["root.y"][0] != 6000 {
		t.Fatalf("fair shares %v", fs)
	}
	// a weight deeper down changes only the split inside root.x
	c2 := New(Config{})
	addNode(c2, "n1", vec("cpu=12", "memory=120Gi"))
	c2.UpsertPool(model.Pool{Name: "root.x.one", Weight: 2})
	addApp(c2, "x1", "root.x.one", 100, vec("cpu=1", "memory=1Gi"))
	addApp(c2, "x2", "root.x.two", 100, vec("cpu=1", "memory=1Gi"))
	addApp(c2, "y", "root.y", 100, vec("cpu=1", "memory=1Gi"))
	if got := placedPer(step(t, c2, t0)); got["x1"] != 4 || got["x2"] != 2 || got["y"] != 6 {
		t.Fatalf("placed %v, want x1:4 x2:2 y:6", got)
	}
}

func TestMinServedFirst(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=10", "memory=100Gi"))
	c.UpsertPool(model.Pool{Name: "root.a", Min: vec("cpu=8")})
	// b comes first by name and by share, yet a's min is served first
	addApp(c, "a", "root.a", 100, vec("cpu=1", "memory=1Gi"))
	addApp(c, "b", "root.b", 100, vec("cpu=1", "memory=1Gi"))
	if got := placedPer(step(t, c, t0)); got["a"] != 8 || got["b"] != 2 {
		t.Fatalf("placed %v, want a:8 b:2", got)
	}
	fs := c.FairShares()
	if fs["root.a"][0] != 8000 || fs["root.b"][0] != 2000 {
		t.Fatalf("fair shares %v %v", fs["root.a"], fs["root.b"])
	}
}

// Two needy pools: the one with the smaller usage/min goes first (YARN's
// rule), so both reach their mins in proportion.
func TestNeedyOrder(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=6", "memory=100Gi"))
	c.UpsertPool(model.Pool{Name: "root.a", Min: vec("cpu=8")})
	c.UpsertPool(model.Pool{Name: "root.b", Min: vec("cpu=4")})
	addApp(c, "a", "root.a", 100, vec("cpu=1", "memory=1Gi"))
	addApp(c, "b", "root.b", 100, vec("cpu=1", "memory=1Gi"))
	if got := placedPer(step(t, c, t0)); got["a"] != 4 || got["b"] != 2 {
		t.Fatalf("placed %v, want a:4 b:2 (usage/min equal)", got)
	}
}

func TestMaxAndMaxInstances(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=10", "memory=100Gi"))
	c.UpsertPool(model.Pool{Name: "root.a", Max: vec("cpu=2")})
	c.UpsertPool(model.Pool{Name: "root.m", MaxInstances: 3})
	addApp(c, "a", "root.a", 100, vec("cpu=1", "memory=1Gi"))
	addApp(c, "m", "root.m", 100, vec("cpu=500m", "memory=1Gi"))
	addApp(c, "b", "root.b", 100, vec("cpu=1", "memory=1Gi"))
	p := step(t, c, t0)
	got := placedPer(p)
	if got["a"] != 2 || got["m"] != 3 || got["b"] != 6 {
		t.Fatalf("placed %v, want a:2 m:3 b:6", got)
	}
	reasons := map[string]string{}
	for _, u := range p.Unplaceable {
		reasons[u.App] = u.Reason
	}
	if reasons["a"] != "pool root.a is at its max cpu" || reasons["m"] != "pool root.m is at maxInstances 3" {
		t.Fatalf("reasons %v", reasons)
	}
	// the parent's max binds its children too
	c2 := New(Config{})
	addNode(c2, "n1", vec("cpu=10", "memory=100Gi"))
	c2.UpsertPool(model.Pool{Name: "root.p", Max: vec("cpu=3")})
	addApp(c2, "a", "root.p.a", 100, vec("cpu=1", "memory=1Gi"))
	addApp(c2, "b", "root.p.b", 100, vec("cpu=1", "memory=1Gi"))
	if got := placedPer(step(t, c2, t0)); got["a"]+got["b"] != 3 {
		t.Fatalf("placed %v, want 3 in root.p", got)
	}
}

func TestLeafPolicies(t *testing.T) {
	run := func(pol model.Policy, mod func(*model.App)) map[string]int {
		c := New(Config{})
		addNode(c, "n1", vec("cpu=10", "memory=100Gi"))
		c.UpsertPool(model.Pool{Name: "root.p", Policy: pol})
		addApp(c, "x", "root.p", 100, vec("cpu=4", "memory=1Gi"))
		addApp(c, "y", "root.p", 100, vec("cpu=1", "memory=1Gi"), mod)
		return placedPer(step(t, c, t0))
	}
	none := func(*model.App) {}
	// drf: x's tasks dominate on cpu at 0.4, y's at 0.1 → x:1 y:6
	if got := run(model.PolicyDRF, none); got["x"] != 1 || got["y"] != 6 {
		t.Fatalf("drf %v, want x:1 y:6", got)
	}
	// fair on memory: equal memory → x:2 y:2
	if got := run(model.PolicyFair, none); got["x"] != 2 || got["y"] != 2 {
		t.Fatalf("fair %v, want x:2 y:2", got)
	}
	// fifo: the older app takes what it wants first
	older := func(a *model.App) { a.CreatedAt = t0.Add(-time.Hour) }
	if got := run(model.PolicyFIFO, older); got["y"] != 10 || got["x"] != 0 {
		t.Fatalf("fifo %v, want y:10", got)
	}
	// priority wins inside a pool under any policy
	hi := func(a *model.App) { a.Spec.Priority = 5 }
	if got := run(model.PolicyDRF, hi); got["y"] != 10 {
		t.Fatalf("priority %v, want y:10", got)
	}
}
