package engine

import (
	"math"
	"sort"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// dimMask selects the dimensions a policy compares: all six for drf,
// memory only for fair.
type dimMask [resource.NumDims]bool

var (
	allDims    = dimMask{true, true, true, true, true, true}
	memoryOnly = dimMask{resource.Memory: true}
)

func maskOf(p model.Policy) dimMask {
	if p == model.PolicyFair {
		return memoryOnly
	}
	return allDims
}

// share is v's dominant share of total over the masked dimensions.
func share(v, total resource.Vector, m *dimMask) float64 {
	s := 0.0
	for d := range v {
		if m[d] && total[d] > 0 {
			if f := float64(v[d]) / float64(total[d]); f > s {
				s = f
			}
		}
	}
	return s
}

// dominantDim is the masked dimension in which v's share of total is
// largest; -1 when v is zero there.
func dominantDim(v, total resource.Vector, m *dimMask) int {
	best, s := -1, 0.0
	for d := range v {
		if m[d] && total[d] > 0 {
			if f := float64(v[d]) / float64(total[d]); f > s {
				best, s = d, f
			}
		}
	}
	return best
}

// needy is YARN's rule for DRF: below the min target in the dimension
// that dominates the usage (with no usage yet: any min at all). A pool
// whose apps are cpu-heavy meets a {cpu, memory} min once its cpu does.
func needy(usage, minT resource.Vector, total resource.Vector, m *dimMask) bool {
	d := dominantDim(usage, total, m)
	if d < 0 {
		for e := range minT {
			if m[e] && minT[e] > 0 {
				return true
			}
		}
		return false
	}
	return usage[d] < minT[d]
}

// minRatio is usage/min in the usage's dominant dimension (0 with no
// usage, +Inf with no min there).
func minRatio(usage, minT resource.Vector, total resource.Vector, m *dimMask) float64 {
	d := dominantDim(usage, total, m)
	if d < 0 {
		return 0
	}
	if minT[d] <= 0 {
		return math.Inf(1)
	}
	return float64(usage[d]) / float64(minT[d])
}

// less orders the children of a pool with policy pol: higher priority
// first (apps); then, for drf and fair, pools below their min (YARN's
// "needy") before the rest, needy ones by smallest usage/min, the rest by
// smallest dominant share over weight; for fifo, apps by creation time and
// pools by name. Ties go by name.
func (c *Cluster) less(pol model.Policy, x, y *schedKey) bool {
	if x.priority != y.priority {
		return x.priority > y.priority
	}
	if pol == model.PolicyFIFO {
		if !x.created.Equal(y.created) {
			return x.created.Before(y.created)
		}
		return x.name < y.name
	}
	if x.needy != y.needy {
		return x.needy
	}
	if x.rank != y.rank {
		return x.rank < y.rank
	}
	return x.name < y.name
}

// refresh recomputes a schedulable's cached ordering key (needy, and
// usage/min or dominant share over weight) after its usage changed, under
// the policy of the pool it sits in.
func (c *Cluster) refresh(pol model.Policy, sk *schedKey) {
	if pol == model.PolicyFIFO {
		return
	}
	m := maskOf(pol)
	sk.needy = needy(sk.usage, sk.minT, c.total, &m)
	if sk.needy {
		sk.rank = minRatio(sk.usage, sk.minT, c.total, &m)
	} else {
		sk.rank = share(sk.usage, c.total, &m) / sk.weight
	}
}

// ---- demand

// prepareDemand sets every app's and pool's demand (usage plus the
// missing instances' requests, capped by the pool's max) and min target
// (min capped by demand). missing must be set on the apps.
func (c *Cluster) prepareDemand() {
	for _, p := range c.pools {
		p.sk.demand = resource.Vector{}
	}
	for _, a := range c.sortedApps() {
		a.sk.demand = a.sk.usage
		if a.missing > 0 {
			a.sk.demand = a.sk.demand.Add(a.m.Spec.Resources.Scale(int64(a.missing)))
		}
		a.pool.sk.demand = a.pool.sk.demand.Add(a.sk.demand)
	}
	// children before parents: deepest first. A parent's min target is
	// at least what its children's add up to, so a leaf's min is served
	// first at every level, not only among its siblings.
	ps := c.poolsByDepth()
	kidsMin := make(map[*pool]resource.Vector, len(ps))
	for j := len(ps) - 1; j >= 0; j-- {
		p := ps[j]
		for d := range p.sk.demand {
			if p.m.Max[d] > 0 && p.sk.demand[d] > p.m.Max[d] {
				p.sk.demand[d] = p.m.Max[d]
			}
		}
		p.sk.minT = p.m.Min.Max(kidsMin[p]).Min(p.sk.demand)
		if p.parent != nil {
			p.parent.sk.demand = p.parent.sk.demand.Add(p.sk.demand)
			kidsMin[p.parent] = kidsMin[p.parent].Add(p.sk.minT)
		}
	}
}

func (c *Cluster) poolsByDepth() []*pool {
	ps := make([]*pool, 0, len(c.pools))
	for _, p := range c.pools {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].depth != ps[j].depth {
			return ps[i].depth < ps[j].depth
		}
		return ps[i].sk.name < ps[j].sk.name
	})
	return ps
}

// ---- fair shares

// FairShares is each pool's weighted fair share of the ready nodes'
// capacity under the current demand (what its apps hold that is live plus
// what they miss): the allocation DRF's progressive filling reaches on
// the cluster taken as one machine. Capacity that no missing instance
// fits into (a node's leftover cpu when its memory is full) is nobody's
// share and is left out. Instances are handed out one at a
// time by the same ordering the scheduler uses (needy pools first, then
// smallest dominant share over weight, each pool's policy among its
// children, max and maxInstances respected) until nothing more fits in
// the aggregate capacity. What the real scheduler does differs from this
// only by what nodes impose: fragmentation, constraints, spread and host
// ports; preemption (when configured) repairs the difference.
func (c *Cluster) FairShares() map[string]resource.Vector {
	for _, a := range c.apps {
		a.missing = c.wanted(a) - a.cnt.live
		if a.missing < 0 {
			a.missing = 0
		}
	}
	c.prepareDemand()
	c.fairShares()
	out := make(map[string]resource.Vector, len(c.pools))
	for name, p := range c.pools {
		out[name] = p.fair
	}
	return out
}

// wanted is how many instances an app asks for now.
func (c *Cluster) wanted(a *app) int {
	if a.stub || a.m.State == model.AppStopped {
		return 0
	}
	return a.m.Spec.Instances
}

// fairShares sets every pool's fair share, reusing the last computation
// when nothing it depends on changed since (a steady cluster with demand
// waiting plans again and again on the same state).
func (c *Cluster) fairShares() {
	if c.fairValid && c.fairAt == c.gen {
		return
	}
	c.computeFair()
	c.fairAt, c.fairValid = c.gen, true
}

// computeFair runs the fluid allocation. It borrows the schedulables'
// usage fields and heaps and restores them.
func (c *Cluster) computeFair() {
	apps := c.sortedApps()
	for _, a := range apps {
		a.sk.saveU, a.sk.saveN = a.sk.usage, a.sk.count
		a.sk.usage, a.sk.count, a.sk.hidx = resource.Vector{}, 0, -1
		a.fairLeft = 0
		if !a.stub && a.pool != nil {
			a.fairLeft = a.cnt.live + a.missing
		}
	}
	for _, p := range c.pools {
		p.sk.saveU, p.sk.saveN = p.sk.usage, p.sk.count
		p.sk.usage, p.sk.count, p.sk.hidx = resource.Vector{}, 0, -1
		p.heap, p.active = p.heap[:0], false
	}
	pl := &planner{c: c}
	for _, a := range apps {
		if a.fairLeft > 0 {
			pl.activate(&a.sk)
		}
	}
	remaining := c.usable()
	for len(c.root.heap) > 0 {
		sk := c.root.heap[0]
		for sk.a == nil {
			sk = sk.p.heap[0]
		}
		a := sk.a
		req := a.m.Spec.Resources
		if bp, reason := pl.limit(a, req); reason != "" {
			if bp != nil && bp.parent == nil {
				break
			}
			if bp != nil {
				pl.deactivate(&bp.sk)
			} else {
				pl.deactivate(&a.sk)
			}
			continue
		}
		if !req.Fits(remaining) {
			pl.deactivate(&a.sk)
			continue
		}
		remaining = remaining.Sub(req)
		a.sk.usage = a.sk.usage.Add(req)
		a.sk.count++
		for p := a.pool; p != nil; p = p.parent {
			p.sk.usage = p.sk.usage.Add(req)
			p.sk.count++
		}
		if a.fairLeft--; a.fairLeft == 0 {
			pl.deactivate(&a.sk)
		} else {
			pl.fixUp(&a.sk)
		}
	}
	for _, p := range c.pools {
		p.fair = p.sk.usage
		p.heap, p.active = p.heap[:0], false
		p.sk.usage, p.sk.count, p.sk.hidx = p.sk.saveU, p.sk.saveN, -1
	}
	for _, a := range apps {
		a.fair = a.sk.usage
		a.sk.usage, a.sk.count, a.sk.hidx = a.sk.saveU, a.sk.saveN, -1
	}
}

// usable is the ready nodes' capacity less the fragments nothing missing
// can use: a node's free vector counts only if at least one app with
// missing instances could place one there (its request fits and its
// constraints, spread and host ports allow the node). Per request shape
// the first 16 such apps are tried; past that the node counts as usable.
func (c *Cluster) usable() resource.Vector {
	type group struct {
		req  resource.Vector
		apps []*app
	}
	var groups []*group
	byShape := map[resource.Vector]*group{}
	for _, a := range c.sortedApps() {
		if a.missing <= 0 || a.stub {
			continue
		}
		r := a.m.Spec.Resources
		g := byShape[r]
		if g == nil {
			g = &group{req: r}
			byShape[r] = g
			groups = append(groups, g)
		}
		g.apps = append(g.apps, a)
	}
	total := c.total
	for _, n := range c.nodeList {
		if !n.ready() {
			continue
		}
		free := n.free()
		ok := false
		for _, g := range groups {
			if !g.req.Fits(free) {
				continue
			}
			if len(g.apps) > 16 {
				ok = true
				break
			}
			for _, a := range g.apps {
				if c.feasible(a, n, g.req) {
					ok = true
					break
				}
			}
			if ok {
				break
			}
		}
		if !ok {
			total = total.Sub(free.Max(resource.Vector{}))
		}
	}
	return total
}
