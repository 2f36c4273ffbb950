package engine

import (
	"math"
	"sort"
	"time"

	"github.com/gaia-registry/gaia/scheduler/resource"
)

// reservations places, first of all, on the nodes that preemption emptied:
// a reservation whose victims are all gone places one instance of its app
// there (if it still fits) and ends; one whose victims are still stopping
// stays.
func (pl *planner) reservations() {
	c := pl.c
	for _, r := range c.reservations {
		a := c.apps[r.app]
		if a == nil || a.stub || a.missing <= 0 {
			continue
		}
		pending := false
		for _, v := range r.victims {
			if i := c.insts[v]; i != nil && !i.state.Terminal() {
				pending = true
				break
			}
		}
		if pending {
			pl.plan.reservations = append(pl.plan.reservations, r)
			continue
		}
		n := c.nodes[r.node]
		req := a.m.Spec.Resources
		if n == nil || !c.feasible(a, n, req) {
			continue
		}
		if _, reason := pl.limit(a, req); reason != "" {
			continue
		}
		pl.place(a, n)
	}
}

func (c *Cluster) inflight(pool string, rs []*reservation) int {
	k := 0
	for _, r := range rs {
		if r.pool == pool {
			k++
		}
	}
	return k
}

const eps = 1e-9

// preempt runs after placement. Pools starved past their timeouts take
// instances from pools above their fair share; apps that could not be
// placed take instances of lower priority in their own pool.
func (pl *planner) preempt() {
	c := pl.c
	timeouts := false
	for _, p := range c.pools {
		if p.m.MinSharePreemptionTimeout > 0 || p.m.FairSharePreemptionTimeout > 0 {
			timeouts = true
			break
		}
	}
	removed := map[*pool]resource.Vector{}
	if timeouts {
		c.computeFair()
		for _, p := range c.poolsByDepth() {
			if p.parent == nil {
				continue
			}
			pl.starvation(p, removed)
		}
	}
	// priority inside a pool
	for _, a := range c.sortedApps() {
		if a.missing <= 0 || a.stub || a.pool == nil {
			continue
		}
		if _, reason := pl.limit(a, a.m.Spec.Resources); reason != "" {
			continue
		}
		lower := false
		for _, o := range a.pool.apps {
			if o.sk.priority < a.sk.priority && o.cnt.live > 0 {
				lower = true
				break
			}
		}
		if !lower {
			continue
		}
		for a.missing-pl.reservedFor(a) > 0 {
			if !pl.preemptFor(a, a.pool, false, removed) {
				break
			}
		}
	}
}

func (pl *planner) reservedFor(a *app) int {
	k := 0
	for _, r := range pl.plan.reservations {
		if r.app == a.sk.name {
			k++
		}
	}
	return k
}

// starvation updates a pool's starvation clocks and, past a timeout,
// preempts for it.
func (pl *planner) starvation(p *pool, removed map[*pool]resource.Vector) {
	c := pl.c
	m := allDims
	minStarved := needy(p.sk.usage, p.sk.minT, c.total, &m)
	// Fair-share starvation counts whole instances: a pool is starved when
	// even one more of its pending instances would leave it at or below
	// threshold × fair share (a pool within one instance of its share is
	// not starved, so the rounding of instances causes no churn).
	apps := p.pendingApps()
	var step float64
	for _, a := range apps {
		step = math.Max(step, share(a.m.Spec.Resources, c.total, &m))
	}
	fairT := p.m.EffectiveThreshold() * share(p.fair, c.total, &m)
	fairStarved := len(apps) > 0 && share(p.sk.usage, c.total, &m)+step <= fairT+eps
	if minStarved {
		if p.minSince.IsZero() {
			p.minSince = pl.now
		}
	} else {
		p.minSince = time.Time{}
	}
	if fairStarved {
		if p.fsSince.IsZero() {
			p.fsSince = pl.now
		}
	} else {
		p.fsSince = time.Time{}
	}
	minDue := minStarved && p.m.MinSharePreemptionTimeout > 0 && pl.now.Sub(p.minSince) >= p.m.MinSharePreemptionTimeout.D()
	fairDue := fairStarved && p.m.FairSharePreemptionTimeout > 0 && pl.now.Sub(p.fsSince) >= p.m.FairSharePreemptionTimeout.D()
	if !minDue && !fairDue {
		return
	}
	// how many more instances bring the pool to its min (and, when fair
	// share starvation is due, to its fair share)?
	u := p.sk.usage
	fairS := share(p.fair, c.total, &m)
	satisfied := func() bool {
		if minDue && needy(u, p.sk.minT, c.total, &m) {
			return false
		}
		if fairDue && share(u, c.total, &m)+step <= fairS+eps {
			return false
		}
		return true
	}
	need := 0
	for _, a := range apps {
		for k := 0; k < a.missing && !satisfied(); k++ {
			u = u.Add(a.m.Spec.Resources)
			need++
		}
	}
	need -= c.inflight(p.sk.name, pl.plan.reservations)
	for _, a := range apps {
		for need > 0 && a.missing-pl.reservedFor(a) > 0 {
			if !pl.preemptFor(a, p, true, removed) {
				break
			}
			need--
		}
	}
}

func (p *pool) pendingApps() []*app {
	var out []*app
	for _, a := range p.apps {
		if a.missing > 0 && !a.stub {
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].sk.priority != out[j].sk.priority {
			return out[i].sk.priority > out[j].sk.priority
		}
		if !out[i].sk.created.Equal(out[j].sk.created) {
			return out[i].sk.created.Before(out[j].sk.created)
		}
		return out[i].sk.name < out[j].sk.name
	})
	return out
}

// preemptFor finds one node where stopping some instances makes room for
// one instance of a, and stops them. Cross-pool (for a starved pool):
// victims come from other pools whose every pool up to the common
// ancestor allows preemption and stays at or above its fair share after
// losing the victim. Within a pool: victims are the pool's instances of
// lower priority. Among candidate nodes the engine takes the one whose
// victims have the lowest highest priority, then the fewest victims, then
// the lowest index; on a node it takes the lowest-priority victims first,
// largest first. The freed node is reserved for a until the victims are
// gone.
func (pl *planner) preemptFor(a *app, starved *pool, cross bool, removed map[*pool]resource.Vector) bool {
	c := pl.c
	req := a.m.Spec.Resources
	// what earlier reservations on a node will free and claim
	pendingFree := map[string]resource.Vector{}
	for _, r := range pl.plan.reservations {
		v := pendingFree[r.node]
		for _, id := range r.victims {
			if i := c.insts[id]; i != nil && i.onNode {
				v = v.Add(i.res)
			}
		}
		if ra := c.apps[r.app]; ra != nil {
			v = v.Sub(ra.m.Spec.Resources)
		}
		pendingFree[r.node] = v
	}
	s := &a.m.Spec
	var (
		best              *node
		bestVictims       []*inst
		bestPrio, bestCnt int
	)
	m := allDims
	// Gather the eligible victims by node, visiting only the pools that
	// could give anything (above their fair share, or the starved pool
	// itself for priority preemption).
	byNode := map[*node][]*inst{}
	givers := []*pool{starved}
	if cross {
		if pl.pools == nil {
			pl.pools = c.poolsByDepth()
		}
		givers = pl.pools
	}
	for _, vp := range givers {
		if len(vp.apps) == 0 {
			continue
		}
		if cross {
			if vp == starved || share(vp.sk.usage.Sub(removed[vp]), c.total, &m) <= share(vp.fair, c.total, &m)+eps {
				continue
			}
		} else if vp != starved {
			continue
		}
		for _, va := range sortedAppsOf(vp) {
			for _, v := range va.insts {
				if v.node != nil && pl.eligible(v, a, starved, cross, removed) {
					byNode[v.node] = append(byNode[v.node], v)
				}
			}
		}
	}
	nodes := make([]*node, 0, len(byNode))
	for n := range byNode {
		nodes = append(nodes, n)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].idx < nodes[j].idx })
	for _, n := range nodes {
		cands := byNode[n]
		if !n.ready() || !req.Fits(n.alloc) || !matches(s.Constraints, n) {
			continue
		}
		if s.Spread > 0 && n.appCount[a] >= s.Spread {
			continue
		}
		// a fixed host port held on this node must be freed too: its
		// holder has to be one of the victims
		var forced []*inst
		portClash := false
		for _, p := range s.Ports {
			holder, used := n.ports[p.HostPort]
			if p.HostPort == 0 || !used {
				continue
			}
			found := false
			for _, v := range cands {
				if v.id == holder {
					forced = append(forced, v)
					found = true
				}
			}
			if !found {
				portClash = true
			}
		}
		if portClash {
			continue
		}
		sort.Slice(cands, func(x, y int) bool {
			vx, vy := cands[x], cands[y]
			if vx.app.sk.priority != vy.app.sk.priority {
				return vx.app.sk.priority < vy.app.sk.priority
			}
			if sx, sy := share(vx.res, c.total, &m), share(vy.res, c.total, &m); sx != sy {
				return sx > sy
			}
			return vx.id < vy.id
		})
		f := n.free().Add(pendingFree[n.m.Name])
		var chosen []*inst
		prio := 0
		isForced := func(v *inst) bool {
			for _, x := range forced {
				if x == v {
					return true
				}
			}
			return false
		}
		for _, v := range forced {
			chosen = append(chosen, v)
			f = f.Add(v.res)
			if len(chosen) == 1 || v.app.sk.priority > prio {
				prio = v.app.sk.priority
			}
		}
		for _, v := range cands {
			if req.Fits(f) {
				break
			}
			if isForced(v) {
				continue
			}
			chosen = append(chosen, v)
			f = f.Add(v.res)
			if len(chosen) == 1 || v.app.sk.priority > prio {
				prio = v.app.sk.priority
			}
		}
		if !req.Fits(f) || len(chosen) == 0 {
			continue
		}
		if best == nil || prio < bestPrio || (prio == bestPrio && len(chosen) < bestCnt) {
			best, bestVictims, bestPrio, bestCnt = n, chosen, prio, len(chosen)
		}
	}
	if best == nil {
		return false
	}
	r := &reservation{app: a.sk.name, pool: starved.sk.name, node: best.m.Name}
	for _, v := range bestVictims {
		pl.stop(v, ReasonPreempted, starved.sk.name)
		for x := v.app.pool; x != nil; x = x.parent {
			removed[x] = removed[x].Add(v.res)
		}
		r.victims = append(r.victims, v.id)
	}
	pl.plan.reservations = append(pl.plan.reservations, r)
	if a.blocked == "" || a.blocked[0] != 'w' {
		a.blocked = "waiting for preempted instances to stop"
	}
	return true
}

func (pl *planner) eligible(v *inst, a *app, starved *pool, cross bool, removed map[*pool]resource.Vector) bool {
	if !v.k.live || v.fresh || v.app == a || v.app.stub || v.app.pool == nil {
		return false
	}
	if !cross {
		return v.app.pool == starved && v.app.sk.priority < a.sk.priority
	}
	if v.app.pool == starved {
		return false
	}
	c := pl.c
	m := allDims
	top := lca(v.app.pool, starved)
	for x := v.app.pool; x != top; x = x.parent {
		if !x.m.PreemptableFrom() {
			return false
		}
		after := x.sk.usage.Sub(removed[x]).Sub(v.res)
		if share(after, c.total, &m) < share(x.fair, c.total, &m)-eps {
			return false
		}
	}
	return true
}

func lca(x, y *pool) *pool {
	for x.depth > y.depth {
		x = x.parent
	}
	for y.depth > x.depth {
		y = y.parent
	}
	for x != y {
		x, y = x.parent, y.parent
	}
	return x
}

func sortedAppsOf(p *pool) []*app {
	out := make([]*app, 0, len(p.apps))
	for _, a := range p.apps {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].sk.name < out[j].sk.name })
	return out
}
