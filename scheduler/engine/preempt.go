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

// GiveBackAfter: a pool whose instances were preempted for another's
// fair share does not take instances of that pool for its own fair share
// for this long. The fair shares move a little with the cluster's
// fragments (usable: a node's leftover counts only while some waiting
// instance fits in it), so the instance that brought one pool up to its
// share can leave the other below its own; without this the two would
// trade that room back and forth for ever. Preemption for a min share
// is not held back.
const GiveBackAfter = 10 * time.Minute

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
	apps := c.pendingApps(p)
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
	// Room is made for the instances the pool's policy would place next,
	// up to its min or fair share, less those whose room is being made.
	inflight := c.inflight(p.sk.name, pl.plan.reservations)
	seq := pl.starvedFor(p, apps, minDue, fairDue, inflight+MaxPreemptionsPerPlan)
	need := len(seq) - inflight
	made := map[*app]int{}
	failed := map[*app]bool{}
	defer func() { pl.fairShare = false }()
	for _, e := range seq {
		a := e.app
		if need <= 0 {
			break
		}
		// an app's first entries are those its reservations serve
		if made[a]++; failed[a] || made[a] <= pl.reservedFor(a) {
			continue
		}
		pl.fairShare = !e.forMin
		if !pl.preemptFor(a, p, fromOtherPools) {
			failed[a] = true
			continue
		}
		need--
	}
}

// starvedEntry is one instance a starved pool's preemptions make room
// for, and whether it is for the pool's min (else for its fair share).
type starvedEntry struct {
	app    *app
	forMin bool
}

// starvedFor lists the apps a starved pool's preemptions are for, one
// entry per instance, in the order the pool's policy would place them
// (for drf and fair: each next instance to the app of smallest dominant
// share over weight), until the pool is no longer below its min (when
// that is due) or its fair share (when that is due), at most limit.
// Served in creation order instead, an app above its share inside the
// pool could take the room its sibling below then swaps for
// (appStarvation), and the two preemptions together take the pool past
// its share: the pool it took from then takes the room back, and so on
// for ever (seen in the simulation under spread scoring).
func (pl *planner) starvedFor(p *pool, apps []*app, minDue, fairDue bool, limit int) []starvedEntry {
	c := pl.c
	m := allDims
	pol := p.m.EffectivePolicy()
	fairS := share(p.fair, c.total, &m)
	u := p.sk.usage
	// the apps' keys as the entries so far would leave them, compared as
	// the pool's policy compares them (Cluster.less)
	keys := make([]schedKey, len(apps))
	left := make([]int, len(apps))
	for j, a := range apps {
		keys[j], left[j] = a.sk, a.missing
	}
	var out []starvedEntry
	for len(out) < limit {
		forMin := minDue && needy(u, p.sk.minT, c.total, &m)
		if !forMin && !(fairDue && share(u, c.total, &m) < fairS-eps) {
			return out
		}
		best := -1
		for j := range apps {
			if left[j] > 0 && (best < 0 || c.less(pol, &keys[j], &keys[best])) {
				best = j
			}
		}
		if best < 0 {
			return out
		}
		req := apps[best].m.Spec.Resources
		u = u.Add(req)
		keys[best].usage = keys[best].usage.Add(req)
		c.refresh(pol, &keys[best])
		left[best]--
		out = append(out, starvedEntry{apps[best], forMin})
	}
	return out
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
	pl.fairShare = true
	defer func() { pl.fairShare = false }()
	for need := k - pl.reservedFor(a); need > 0; need-- {
		if !pl.preemptFor(a, p, aboveAppShare) {
			return
		}
	}
}

// pendingApps is a pool's apps with instances missing, in the order its
// policy serves them now.
func (c *Cluster) pendingApps(p *pool) []*app {
	var out []*app
	pol := p.m.EffectivePolicy()
	for _, a := range p.apps {
		if a.missing > 0 && !a.stub {
			c.refresh(pol, &a.sk)
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return c.less(pol, &out[i].sk, &out[j].sk) })
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
// gone. When no node frees enough, it tries an exchange (moves).
func (pl *planner) preemptFor(a *app, starved *pool, rule victimRule) bool {
	c := pl.c
	if pl.preemptions >= MaxPreemptionsPerPlan {
		return false
	}
	pl.preemptions++
	req := a.m.Spec.Resources
	pendingFree := pl.pendingFree()
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
		pl.sortVictims(cands, starved)
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
		if rule == lowerPriority {
			return false
		}
		return pl.exchange(a, starved, rule, byNode, nodes, pendingFree)
	}
	pl.reserve(a, starved, best, bestVictims, nil)
	return true
}

// reserve stops victims for the starved pool and moved for moves (each
// of those getting its own reserved node), and reserves n for one
// instance of a.
func (pl *planner) reserve(a *app, starved *pool, n *node, victims []*inst, moves []move) {
	r := &reservation{app: a.sk.name, pool: starved.sk.name, node: n.m.Name, made: pl.now}
	for _, v := range victims {
		pl.preempt1(v, starved, r)
	}
	for _, mv := range moves {
		pl.stop(mv.v, ReasonMoved, starved.sk.name)
		pl.removed.add(mv.v)
		r.victims = append(r.victims, mv.v.id)
		ry := &reservation{app: mv.v.app.sk.name, pool: mv.v.app.pool.sk.name, node: mv.to.m.Name, made: pl.now}
		for _, w := range mv.victims {
			pl.preempt1(w, starved, ry)
		}
		pl.plan.reservations = append(pl.plan.reservations, ry)
	}
	pl.plan.reservations = append(pl.plan.reservations, r)
	if a.blocked == "" || a.blocked[0] != 'w' {
		a.blocked = "waiting for preempted instances to stop"
	}
}

// move: instance v goes to node to, where victims make room for it.
type move struct {
	v       *inst
	to      *node
	victims []*inst
}

// preempt1 stops victim v for the starved pool, as one of r's victims,
// and records who gave to whom for a fair share.
func (pl *planner) preempt1(v *inst, starved *pool, r *reservation) {
	pl.stop(v, ReasonPreempted, starved.sk.name)
	pl.removed.add(v)
	r.victims = append(r.victims, v.id)
	if pl.fairShare && v.app.pool != starved {
		if pl.plan.gave == nil {
			pl.plan.gave = map[[2]string]bool{}
		}
		pl.plan.gave[[2]string{v.app.pool.sk.name, starved.sk.name}] = true
	}
}

// pendingFree is, by node, what the reservations made so far will free
// (their victims still on it) less what they will claim.
func (pl *planner) pendingFree() map[string]resource.Vector {
	c := pl.c
	out := map[string]resource.Vector{}
	for _, r := range pl.plan.reservations {
		v := out[r.node]
		for _, id := range r.victims {
			if i := c.insts[id]; i != nil && i.onNode {
				v = v.Add(i.res)
			}
		}
		if ra := c.apps[r.app]; ra != nil {
			v = v.Sub(ra.m.Spec.Resources)
		}
		out[r.node] = v
	}
	return out
}

// sortVictims orders one node's victims for a starved pool: its own
// apps' first (only aboveAppShare has both), lowest priority first, then
// largest first.
func (pl *planner) sortVictims(vs []*inst, starved *pool) {
	c := pl.c
	m := allDims
	sort.Slice(vs, func(x, y int) bool {
		vx, vy := vs[x], vs[y]
		if ix, iy := vx.app.pool == starved, vy.app.pool == starved; ix != iy {
			return ix
		}
		if vx.app.sk.priority != vy.app.sk.priority {
			return vx.app.sk.priority < vy.app.sk.priority
		}
		if sx, sy := share(vx.res, c.total, &m), share(vy.res, c.total, &m); sx != sy {
			return sx > sy
		}
		return vx.id < vy.id
	})
}

// maxExchangeNodes bounds the nodes one exchange tries to empty for the
// starved app, and those it tries for each instance it moves;
// maxExchangeVisits the nodes it tries for moves in all, and
// maxExchangeScan those it looks at (at 10,000 nodes a search stays
// within milliseconds).
const (
	maxExchangeNodes  = 64
	maxExchangeVisits = 2048
	maxExchangeScan   = 16 * maxExchangeVisits
)

// exchange is preemptFor's second way, for when no node has room for a
// even after every victim the rule allows on it is gone: instances the
// rule does not allow to be taken (their pool or app at its share) may
// be moved instead. On a node x, victims and moved instances make room
// for a; each moved instance gets a node of its own where victims make
// room for it, reserved for its app. The moved instances' pools hold as
// much as before once the moves are done; the givers lose what the rule
// allows (checked over all the nodes together); a gains an instance.
// Under spread scoring a pool's large instances otherwise wait for ever:
// the givers' instances are scattered one or two to a node, and no node
// frees enough for them.
func (pl *planner) exchange(a *app, starved *pool, rule victimRule, byNode map[*node][]*inst, nodes []*node, pendingFree map[string]resource.Vector) bool {
	c := pl.c
	req := a.m.Spec.Resources
	m := allDims
	x := &exchangeSearch{pl: pl, a: a, starved: starved, rule: rule, byNode: byNode, nodes: nodes,
		pendingFree: pendingFree, room: map[*node]resource.Vector{}, failed: map[*app]bool{}}
	// at most what a node can give: free, what reservations free, and
	// every victim; victims in the order they are taken
	for _, n := range nodes {
		pl.sortVictims(byNode[n], starved)
		r := n.free().Add(pendingFree[n.m.Name])
		for _, v := range byNode[n] {
			r = r.Add(v.res)
		}
		x.room[n] = r
	}
	tries := 0
	for _, n := range nodes {
		if tries >= maxExchangeNodes || x.visits >= maxExchangeVisits || x.scanned >= maxExchangeScan {
			break
		}
		if !n.ready() || !req.Fits(n.alloc) || !c.admits(a, n) {
			continue
		}
		tries++
		taken := newRemoval()
		f := n.free().Add(pendingFree[n.m.Name])
		var victims []*inst
		chosen := map[*inst]bool{}
		for _, v := range byNode[n] {
			if req.Fits(f) {
				break
			}
			if pl.eligible(v, a, starved, rule, &taken) {
				victims = append(victims, v)
				chosen[v] = true
				taken.add(v)
				f = f.Add(v.res)
			}
		}
		// the instances to move: smallest first (they are the easiest
		// to find room for)
		var movable []*inst
		most := f
		for _, v := range n.insts {
			if !chosen[v] && pl.movable(v, a, starved) {
				movable = append(movable, v)
				most = most.Add(v.res)
			}
		}
		if !req.Fits(most) {
			continue
		}
		sort.Slice(movable, func(i, j int) bool {
			si, sj := share(movable[i].res, c.total, &m), share(movable[j].res, c.total, &m)
			if si != sj {
				return si < sj
			}
			return movable[i].id < movable[j].id
		})
		var moves []move
		used := map[*node]bool{n: true}
		for _, v := range movable {
			if req.Fits(f) {
				break
			}
			y, yv := x.rehome(v, used, &taken)
			if y == nil {
				continue
			}
			used[y] = true
			moves = append(moves, move{v, y, yv})
			f = f.Add(v.res)
		}
		if !req.Fits(f) || len(moves) == 0 {
			continue
		}
		if rule == aboveAppShare {
			all := victims
			for _, mv := range moves {
				all = append(all, mv.victims...)
			}
			if !pl.swapKeepsShare(starved, req, all) {
				continue
			}
		}
		pl.reserve(a, starved, n, victims, moves)
		return true
	}
	return false
}

// exchangeSearch is one exchange's scratch state.
type exchangeSearch struct {
	pl          *planner
	a           *app
	starved     *pool
	rule        victimRule
	byNode      map[*node][]*inst
	nodes       []*node
	pendingFree map[string]resource.Vector
	room        map[*node]resource.Vector // at most what each node can give
	failed      map[*app]bool             // apps no node was found for
	visits      int                       // nodes tried for moves
	scanned     int                       // nodes looked at for moves
}

// movable: may v be moved to another node to make room for a? It is live
// and not placed by this plan, of another app of no higher priority whose
// replacements are not held back, and every pool from its own up to the
// one it shares with the starved pool allows preemption.
func (pl *planner) movable(v *inst, a *app, starved *pool) bool {
	if !v.k.live || v.fresh || v.app == a || v.app.stub || v.app.pool == nil || v.app.sk.priority > a.sk.priority ||
		pl.now.Before(v.app.hold) {
		return false
	}
	top := lca(v.app.pool, starved)
	for x := v.app.pool; x != top; x = x.parent {
		if !x.m.PreemptableFrom() {
			return false
		}
	}
	return true
}

// rehome finds a node, other than those used, where free room and
// victims the rule allows (together with those in taken, to which it adds
// them) make room for v's app to place the instance that replaces v. An
// app no node was found for is not tried again in this exchange (for
// another node to empty it might be found: a bound on the work, not a
// certainty).
func (x *exchangeSearch) rehome(v *inst, used map[*node]bool, taken *removal) (*node, []*inst) {
	va := v.app
	if x.failed[va] {
		return nil, nil
	}
	tries := 0
	for _, y := range x.nodes {
		if tries >= maxExchangeNodes || x.visits >= maxExchangeVisits || x.scanned >= maxExchangeScan {
			break
		}
		x.scanned++
		if used[y] || !v.res.Fits(x.room[y]) || !y.ready() || !v.res.Fits(y.alloc) || !x.pl.c.admits(va, y) {
			continue
		}
		tries++
		x.visits++
		f := y.free().Add(x.pendingFree[y.m.Name])
		var yv []*inst
		for _, w := range x.byNode[y] {
			if v.res.Fits(f) {
				break
			}
			if w.app != va && x.pl.eligible(w, x.a, x.starved, x.rule, taken) {
				yv = append(yv, w)
				taken.add(w)
				f = f.Add(w.res)
			}
		}
		if v.res.Fits(f) {
			return y, yv
		}
		for _, w := range yv {
			taken.sub(w)
		}
	}
	x.failed[va] = true
	return nil, nil
}

// swapKeepsShare: pool p, placing req after losing those of victims that
// are its own, is at or below the larger of its dominant share now and
// its fair share. Now counts what p is already getting: the instances
// its reservations will place (its own starvation's, this plan's and
// earlier ones'). Without them, p's starvation could make room for one
// app's instance and the swap, in the same plan, trade that instance's
// room for a larger one: p would end above its share, the pool it took
// from below, and the two would trade the room back and forth for ever.
func (pl *planner) swapKeepsShare(p *pool, req resource.Vector, victims []*inst) bool {
	c := pl.c
	m := allDims
	now := p.sk.usage.Sub(pl.removed.pool[p])
	for _, r := range pl.plan.reservations {
		if ra := c.apps[r.app]; ra != nil && ra.pool == p {
			now = now.Add(ra.m.Spec.Resources)
		}
	}
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

func (r removal) sub(v *inst) {
	for x := v.app.pool; x != nil; x = x.parent {
		r.pool[x] = r.pool[x].Sub(v.res)
	}
	r.app[v.app] = r.app[v.app].Sub(v.res)
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
	if pl.fairShare {
		if at, ok := c.gave[[2]string{starved.sk.name, v.app.pool.sk.name}]; ok && pl.now.Sub(at) < GiveBackAfter {
			return false
		}
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
