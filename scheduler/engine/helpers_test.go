package engine

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func vec(pairs ...string) resource.Vector { return resource.MustVector(pairs...) }

func addNode(c *Cluster, name string, capacity resource.Vector, labels ...string) {
	n := model.Node{Name: name, Capacity: capacity, State: model.NodeReady, Labels: map[string]string{}}
	for _, l := range labels {
		var k, v string
		fmt.Sscanf(l, "%s", &k)
		for j := 0; j < len(l); j++ {
			if l[j] == '=' {
				k, v = l[:j], l[j+1:]
			}
		}
		if k == "idc" {
			n.IDC = v
		} else {
			n.Labels[k] = v
		}
	}
	c.UpsertNode(n)
}

func addApp(c *Cluster, name, pool string, instances int, req resource.Vector, mod ...func(*model.App)) {
	a := model.App{Spec: model.AppSpec{Name: name, Pool: pool, Image: "img", Instances: instances, Resources: req},
		Version: 1, State: model.AppRunning, CreatedAt: t0}
	for _, f := range mod {
		f(&a)
	}
	c.UpsertApp(a)
}

// step plans at now and applies the plan.
func step(t *testing.T, c *Cluster, now time.Time) *Plan {
	t.Helper()
	p := c.Plan(now)
	c.Apply(p)
	checkInvariants(t, c)
	checkFairCache(t, c)
	return p
}

// settled: the plan at at changes nothing (what says when, for the
// message).
func settled(t *testing.T, c *Cluster, at time.Time, what string) {
	t.Helper()
	if p := step(t, c, at); len(p.Stop) != 0 || len(p.Place) != 0 {
		t.Fatalf("%s: %+v", what, p)
	}
}

// checkFairCache: the fair shares the engine reuses equal a fresh
// computation.
func checkFairCache(t testing.TB, c *Cluster) {
	t.Helper()
	cached := c.FairShares()
	c.fairValid = false
	fresh := c.FairShares()
	for name, v := range fresh {
		if cached[name] != v {
			t.Fatalf("pool %s: reused fair share %v, fresh %v", name, cached[name], v)
		}
	}
}

// agent plays the node agents: stopping instances become stopped and are
// removed; assigned ones become running.
func agent(c *Cluster) {
	var ids []string
	for id := range c.insts {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		m, _ := c.Instance(id)
		switch {
		case m.Desired == model.DesiredStop || m.State.Terminal():
			c.RemoveInstance(id)
		case m.State == model.Assigned:
			m.State = model.Running
			c.UpsertInstance(m)
		}
	}
}

func counts(c *Cluster) map[string]int {
	out := map[string]int{}
	for _, i := range c.insts {
		if i.k.live {
			out[i.app.sk.name]++
		}
	}
	return out
}

func placedPer(p *Plan) map[string]int {
	out := map[string]int{}
	for _, pl := range p.Place {
		out[pl.Instance.App]++
	}
	return out
}

func stopsBy(p *Plan, reason string) []string {
	var out []string
	for _, s := range p.Stop {
		if s.Reason == reason {
			out = append(out, s.ID)
		}
	}
	sort.Strings(out)
	return out
}

// checkInvariants: no node over capacity in any dimension, no host port
// twice on a node, the index agrees with the nodes, usage sums agree.
func checkInvariants(t testing.TB, c *Cluster) {
	t.Helper()
	byNode := map[*node][]*inst{}
	for _, i := range c.insts {
		if i.node != nil && !i.state.Terminal() {
			byNode[i.node] = append(byNode[i.node], i)
		}
	}
	for _, n := range c.nodeList {
		var used resource.Vector
		ports := map[int]string{}
		for _, i := range byNode[n] {
			used = used.Add(i.res)
			for _, hp := range i.ports {
				if other, dup := ports[hp.port]; dup {
					t.Fatalf("node %s: host port %d used by %s and %s", n.m.Name, hp.port, other, i.id)
				}
				ports[hp.port] = i.id
			}
		}
		if used != n.used {
			t.Fatalf("node %s: used %v, instances sum to %v", n.m.Name, n.used, used)
		}
		if !used.Fits(n.alloc) {
			t.Fatalf("node %s over capacity: used %v of %v", n.m.Name, used, n.alloc)
		}
		if got := c.tree.max[c.tree.size+n.idx]; got != c.treeValue(n) {
			t.Fatalf("node %s: index holds %v, want %v", n.m.Name, got, c.treeValue(n))
		}
	}
}
