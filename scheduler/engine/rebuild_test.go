package engine

import (
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
)

// A new leader rebuilds the engine from what the store holds, in any
// order (instances before their nodes here); the rebuilt cluster plans
// nothing new and accounts the same usage.
func TestRebuildFromStore(t *testing.T) {
	build := func(c *Cluster) {
		for _, n := range []string{"n1", "n2", "n3"} {
			addNode(c, n, vec("cpu=4", "memory=8Gi"))
		}
		c.UpsertPool(model.Pool{Name: "root.a", Weight: 2})
	}
	apps := func(c *Cluster) {
		addApp(c, "a", "root.a", 5, vec("cpu=1", "memory=1Gi"), func(a *model.App) {
			a.Spec.Ports = []model.Port{{Name: "http", ContainerPort: 80}}
		})
		addApp(c, "b", "root.b", 5, vec("cpu=1", "memory=1Gi"))
	}
	c := New(Config{})
	build(c)
	apps(c)
	step(t, c, t0)
	agent(c)
	var saved []model.Instance
	for _, app := range []string{"a", "b"} {
		saved = append(saved, c.Instances(app)...)
	}

	r := New(Config{})
	apps(r)
	for _, i := range saved {
		r.UpsertInstance(i)
	}
	build(r)
	checkInvariants(t, r)
	if p := r.Plan(t0.Add(time.Minute)); !p.Empty() {
		t.Fatalf("rebuilt cluster plans %+v", p)
	}
	for _, pool := range []string{"root", "root.a", "root.b"} {
		u1, n1 := c.Usage(pool)
		u2, n2 := r.Usage(pool)
		if u1 != u2 || n1 != n2 {
			t.Fatalf("%s: usage %v/%d, rebuilt %v/%d", pool, u1, n1, u2, n2)
		}
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		if c.NodeUsed(n) != r.NodeUsed(n) {
			t.Fatalf("%s used %v, rebuilt %v", n, c.NodeUsed(n), r.NodeUsed(n))
		}
	}

	// a node removed for good: its instances are replaced elsewhere
	var onN1 int
	for _, i := range r.Instances("a") {
		if i.Node == "n1" {
			onN1++
		}
	}
	for _, i := range r.Instances("b") {
		if i.Node == "n1" {
			onN1++
		}
	}
	r.RemoveNode("n1")
	checkInvariants(t, r)
	p := step(t, r, t0.Add(2*time.Minute))
	if got := len(stopsBy(p, ReasonNodeDown)); got != onN1 || onN1 == 0 {
		t.Fatalf("after removing n1 (%d instances): %d stopped", onN1, got)
	}
	for _, pl := range p.Place {
		if pl.Instance.Node == "n1" {
			t.Fatal("placed on a removed node")
		}
	}
}
