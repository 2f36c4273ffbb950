package engine

import (
	"sort"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
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
			// victims that never report stopped do not hold a node forever
			if pl.now.Sub(r.made) < ReservationTTL {
				pl.plan.reservations = append(pl.plan.reservations, r)
			}
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

// ReservationTTL bounds how long a node emptied by preemption waits for
// its victims to stop before the reservation is dropped (and preemption
// may choose again).
const ReservationTTL = 10 * time.Minute

// MaxPreemptionsPerPlan bounds the victim searches of one plan (each looks
// at every instance of the pools that could give); a deficit larger than
// that is worked off over the next plans, the reservations already made
// counting as in flight.
const MaxPreemptionsPerPlan = 64

// victimRule says whose instances may make room.
type victimRule int

const (
	// fromOtherPools: for a starved pool, instances of pools above their
	// fair share that stay at or above it.
	fromOtherPools victimRule = iota
	// lowerPriority: instances of lower priority in the app's own pool.
	lowerPriority
	// aboveAppShare: for an app starved for its fair share inside its
	// pool, instances of the pool's apps of no higher priority that are
	// above their own fair share and stay at or above it, first; then, on
	// the same node, other pools' as for fromOtherPools, so long as the
	// pool's dominant share does not grow past both what it is and its
	// fair share (the swap changes the pool's mix towards its share; it
	// does not take the pool above it).
	aboveAppShare
)

// preempt runs after placement. Pools starved past their timeouts take
// instances from pools above their fair share; inside a pool, apps
// starved past its fair-share timeout take instances from its apps above
// their share, and apps that could not be placed take instances of lower
// priority.
func (pl *planner) preempt() {
	c := pl.c
	timeouts := false
	for _, p := range c.pools {
		if p.m.MinSharePreemptionTimeout > 0 || p.m.FairSharePreemptionTimeout > 0 {
			timeouts = true
			break
		}
	}
	// Victims of earlier plans still stopping still count in their
	// givers' usage: a giver is judged on what it keeps.
	pl.removed = newRemoval()
	for _, r := range pl.plan.reservations {
		for _, id := range r.victims {
			if v := c.insts[id]; v != nil && v.counted && v.app.pool != nil {
				pl.removed.add(v)
			}
		}
	}
	pending := false
	for _, a := range c.sortedApps() {
		if a.missing > 0 && !a.stub {
			pending = true
			break
		}
	}
	if !timeouts || !pending {
		// nothing waits, or nothing may preempt: every clock stops
		for _, p := range c.pools {
			p.minSince, p.fsSince = time.Time{}, time.Time{}
		}
		for _, a := range c.apps {
			a.fsSince = time.Time{}
		}
	}
	if timeouts && pending {
		c.fairShares()
		for _, p := range c.poolsByDepth() {
			if p.parent == nil {
				continue
			}
			pl.starvation(p)
		}
		for _, a := range c.sortedApps() {
			pl.appStarvation(a)
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
			if !pl.preemptFor(a, a.pool, lowerPriority) {
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
func (pl *planner) starvation(p *pool) {
	c := pl.c
	m := allDims
	minStarved := needy(p.sk.usage, p.sk.minT, c.total, &m)
	// YARN's rule: starved for fair share while below threshold × fair
	// share with instances waiting. Victims must stay at or above their
	// own fair share, so a pool just below its share takes an instance
	// only from one that is more than an instance above its own.
	apps := p.pendingApps()
	fairT := p.m.EffectiveThreshold() * share(p.fair, c.total, &m)
	fairStarved := len(apps) > 0 && share(p.sk.usage, c.total, &m) < fairT-eps
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
		if fairDue && share(u, c.total, &m) < fairS-eps {
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
			if !pl.preemptFor(a, p, fromOtherPools) {
				break
			}
			need--
		}
	}
}

// appStarvation is YARN's fair-share starvation of an app inside its pool
// (drf and fair policies): below threshold × its fair share, with room in
// that share for a whole instance more, for longer than the pool's
// fair-share timeout. Past it the app takes instances from its pool's
// apps above their own share. Without it a pool whose large instances
// fit no node's leftover fills its share with its small ones instead,
// and is then above its share in their dimension while siblings wait.
func (pl *planner) appStarvation(a *app) {
	p := a.pool
	if a.stub || p == nil || a.missing <= 0 || p.m.Policy == model.PolicyFIFO || p.m.FairSharePreemptionTimeout <= 0 {
		a.fsSince = time.Time{}
		return
	}
	c := pl.c
	m := maskOf(p.m.Policy)
	fairS := share(a.fair, c.total, &m)
	req := a.m.Spec.Resources
	starved := share(a.sk.usage, c.total, &m) < p.m.EffectiveThreshold()*fairS-eps &&
		share(a.sk.usage.Add(req), c.total, &m) <= fairS+eps
	if !starved {
		a.fsSince = time.Time{}
		return
	}
	if a.fsSince.IsZero() {
		a.fsSince = pl.now
	}
	if pl.now.Sub(a.fsSince) < p.m.FairSharePreemptionTimeout.D() {
		return
	}
	if _, reason := pl.limit(a, req); reason != "" {
		return
	}
	// as many of its missing as fit in its share, less those whose room
	// is being made
	k := 0
	for u := a.sk.usage.Add(req); k < a.missing && share(u, c.total, &m) <= fairS+eps; u = u.Add(req) {
		k++
	}
	for need := k - pl.reservedFor(a); need > 0; need-- {
		if !pl.preemptFor(a, p, aboveAppShare) {
			return
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
func (pl *planner) preemptFor(a *app, starved *pool, rule victimRule) bool {
	c := pl.c
	if pl.preemptions >= MaxPreemptionsPerPlan {
		return false
	}
	pl.preemptions++
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
	// itself inside a pool).
	byNode := map[*node][]*inst{}
	givers := []*pool{starved}
	if rule != lowerPriority {
		if pl.pools == nil {
			pl.pools = c.poolsByDepth()
		}
		givers = pl.pools
	}
	for _, vp := range givers {
		if len(vp.apps) == 0 {
			continue
		}
		if vp == starved {
			if rule == fromOtherPools {
				continue
			}
		} else if share(vp.sk.usage.Sub(pl.removed.pool[vp]), c.total, &m) <= share(vp.fair, c.total, &m)+eps {
			continue
		}
		for _, va := range sortedAppsOf(vp) {
			for _, v := range va.insts {
				if v.node != nil && pl.eligible(v, a, starved, rule, nil) {
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
	taken := newRemoval()
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
			if ix, iy := vx.app.pool == starved, vy.app.pool == starved; ix != iy {
				return ix // only aboveAppShare has both
			}
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
		// what the victims chosen so far on this node take, so that
		// several from one pool leave it where the rule allows
		clear(taken.pool)
		clear(taken.app)
		isForced := func(v *inst) bool {
			for _, x := range forced {
				if x == v {
					return true
				}
			}
			return false
		}
		forcedOK := true
		for _, v := range forced {
			// eligible alone when gathered; together with the others too?
			if !pl.eligible(v, a, starved, rule, &taken) {
				forcedOK = false
				break
			}
			chosen = append(chosen, v)
			taken.add(v)
			f = f.Add(v.res)
			if len(chosen) == 1 || v.app.sk.priority > prio {
				prio = v.app.sk.priority
			}
		}
		if !forcedOK {
			continue
		}
		for _, v := range cands {
			if req.Fits(f) {
				break
			}
			if isForced(v) || !pl.eligible(v, a, starved, rule, &taken) {
				continue
			}
			chosen = append(chosen, v)
			taken.add(v)
			f = f.Add(v.res)
			if len(chosen) == 1 || v.app.sk.priority > prio {
				prio = v.app.sk.priority
			}
		}
		if !req.Fits(f) || len(chosen) == 0 {
			continue
		}
		if rule == aboveAppShare && !pl.swapKeepsShare(starved, req, chosen) {
			continue
		}
		if best == nil || prio < bestPrio || (prio == bestPrio && len(chosen) < bestCnt) {
			best, bestVictims, bestPrio, bestCnt = n, chosen, prio, len(chosen)
		}
	}
	if best == nil {
		return false
	}
	r := &reservation{app: a.sk.name, pool: starved.sk.name, node: best.m.Name, made: pl.now}
	for _, v := range bestVictims {
		pl.stop(v, ReasonPreempted, starved.sk.name)
		pl.removed.add(v)
		r.victims = append(r.victims, v.id)
	}
	pl.plan.reservations = append(pl.plan.reservations, r)
	if a.blocked == "" || a.blocked[0] != 'w' {
		a.blocked = "waiting for preempted instances to stop"
	}
	return true
}

// swapKeepsShare: pool p, placing req after losing those of victims that
// are its own, is at or below the larger of its dominant share now and
// its fair share. Swaps already under way are not added in: what one
// app's swaps can add to its pool is bounded by that app's way to its
// own share (appStarvation asks for no more), every giver stays at or
// above its share, and a pool that ends above its share is a giver to
// the pools that then starve. Counting them in (and p's ancestors) was
// tried: it stopped swaps that made pools fairer (BenchmarkFairnessSweep:
// 6 of 40 spread clusters off by more than one instance at 600 nodes,
// against 2).
func (pl *planner) swapKeepsShare(p *pool, req resource.Vector, victims []*inst) bool {
	c := pl.c
	m := allDims
	now := p.sk.usage.Sub(pl.removed.pool[p])
	after := now.Add(req)
	for _, v := range victims {
		if v.app.pool == p {
			after = after.Sub(v.res)
		}
	}
	limit := max(share(now, c.total, &m), share(p.fair, c.total, &m))
	return share(after, c.total, &m) <= limit+eps
}

// removal is what victims take from pools (each up to the root) and apps.
type removal struct {
	pool map[*pool]resource.Vector
	app  map[*app]resource.Vector
}

func newRemoval() removal {
	return removal{pool: map[*pool]resource.Vector{}, app: map[*app]resource.Vector{}}
}

func (r removal) add(v *inst) {
	for x := v.app.pool; x != nil; x = x.parent {
		r.pool[x] = r.pool[x].Add(v.res)
	}
	r.app[v.app] = r.app[v.app].Add(v.res)
}

// eligible: may v be stopped to make room for one instance of a, by the
// rule, after this plan's victims so far and those in also (nil: none)?
func (pl *planner) eligible(v *inst, a *app, starved *pool, rule victimRule, also *removal) bool {
	if !v.k.live || v.fresh || v.app == a || v.app.stub || v.app.pool == nil {
		return false
	}
	c := pl.c
	gone := func(x *pool) resource.Vector {
		r := pl.removed.pool[x].Add(v.res)
		if also != nil {
			r = r.Add(also.pool[x])
		}
		return r
	}
	switch rule {
	case lowerPriority:
		return v.app.pool == starved && v.app.sk.priority < a.sk.priority
	case aboveAppShare:
		if v.app.pool == starved {
			if v.app.sk.priority > a.sk.priority {
				return false
			}
			m := maskOf(starved.m.Policy)
			after := v.app.sk.usage.Sub(pl.removed.app[v.app]).Sub(v.res)
			if also != nil {
				after = after.Sub(also.app[v.app])
			}
			return share(after, c.total, &m) >= share(v.app.fair, c.total, &m)-eps
		}
	}
	if v.app.pool == starved {
		return false
	}
	m := allDims
	top := lca(v.app.pool, starved)
	for x := v.app.pool; x != top; x = x.parent {
		if !x.m.PreemptableFrom() {
			return false
		}
		after := x.sk.usage.Sub(gone(x))
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
