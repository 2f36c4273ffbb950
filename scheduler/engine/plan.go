package engine

import (
	"fmt"
	"sort"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// planner is one Plan's scratch state. Plan works on the cluster itself
// and undoes every change before returning.
type planner struct {
	c      *Cluster
	now    time.Time
	plan   *Plan
	placed []*inst // tentative placements, to undo
	stops  []undoStop
	cursor int
	seq    uint64
	pools  []*pool // by depth, once per plan when preemption needs it

	preemptions int // victim searches so far
	// the preemptions being made are for a fair share (not a min, not a
	// priority): they may not take back what the starved pool gave
	fairShare bool
	// what this plan's preemptions stop, by pool (and its ancestors) and
	// by app: victims must leave their givers where their rule allows
	removed removal
	gen     uint64 // the cluster's generation when the plan began
}

type undoStop struct {
	i       *inst
	desired model.Desired
	reason  string
}

// Plan decides, for the state the cluster holds at now: which instances
// to stop (scale down, app stopped or removed, lost on a down node, rolling
// update, draining, preemption) and where to place the missing ones. It
// does not change the cluster, except that it records when each pool
// started being starved (preemption timeouts count from the now of the
// plan that first saw it). Apply the plan once the store has committed it.
func (c *Cluster) Plan(now time.Time) *Plan {
	pl := &planner{c: c, now: now, plan: &Plan{at: now}, seq: c.seq, gen: c.gen}
	pl.cursor = int(mix(uint64(now.UnixNano())^c.seq) % uint64(len(c.nodeList)+1))
	defer pl.undo()

	apps := c.sortedApps()
	for _, a := range apps {
		a.missing, a.blocked, a.scanFrom, a.held = 0, "", 0, 0
		a.sk.hidx = -1
		pl.housekeep(a)
		if a.missing > 0 && now.Before(a.hold) {
			// held after failures: nothing placed, nothing preempted for it
			a.held, a.missing = a.missing, 0
		}
	}
	for _, p := range c.pools {
		p.heap = p.heap[:0]
		p.active = false
		p.sk.hidx = -1
	}
	c.prepareDemand()

	pl.reservations()
	pl.placeAll()
	pl.preempt()

	for _, a := range apps {
		if a.held > 0 {
			pl.plan.Unplaceable = append(pl.plan.Unplaceable, Unplaceable{App: a.sk.name, Count: a.held, Held: true, Reason: HeldReason(a.hold, a.holdWhy)})
		}
		if a.missing > 0 {
			reason := a.blocked
			if reason == "" {
				reason = "not placed"
			}
			pl.plan.Unplaceable = append(pl.plan.Unplaceable, Unplaceable{App: a.sk.name, Count: a.missing, Reason: reason})
		}
	}
	pl.plan.seq = pl.seq
	return pl.plan
}

// HeldReason says why an app held after failures is not placed.
func HeldReason(until time.Time, why string) string {
	s := "replacements held until " + until.UTC().Format(time.RFC3339)
	if why != "" {
		s += ": " + why
	}
	return s
}

// Apply installs a plan the store has committed: new instances (state
// assigned, desired run) and stop requests (desired stop; the instance
// keeps its resources until it is reported stopped or removed).
func (c *Cluster) Apply(p *Plan) {
	for _, pl := range p.Place {
		c.UpsertInstance(pl.Instance)
	}
	for _, s := range p.Stop {
		i := c.insts[s.ID]
		if i == nil {
			continue
		}
		c.detach(i)
		i.desired = model.DesiredStop
		i.reason = s.Reason
		i.m.Desired, i.m.Reason = model.DesiredStop, s.Reason
		c.attach(i)
	}
	c.reservations = p.reservations
	for k, at := range c.gave {
		if p.at.Sub(at) >= GiveBackAfter {
			delete(c.gave, k)
		}
	}
	for k := range p.gave {
		c.gave[k] = p.at
	}
	if p.seq > c.seq {
		c.seq = p.seq
	}
}

func (pl *planner) undo() {
	c := pl.c
	if c.gen == pl.gen {
		// the plan changed nothing: the fair shares stay valid
		return
	}
	// the state is restored below, but under a new generation: a fair
	// share computed on the plan's tentative state must not be reused
	defer func() { c.gen++; c.fairValid = false }()
	for j := len(pl.placed) - 1; j >= 0; j-- {
		i := pl.placed[j]
		c.detach(i)
		delete(c.insts, i.id)
		delete(i.app.insts, i.id)
	}
	for j := len(pl.stops) - 1; j >= 0; j-- {
		u := pl.stops[j]
		c.detach(u.i)
		u.i.desired, u.i.reason = u.desired, u.reason
		c.attach(u.i)
	}
}

func (pl *planner) stop(i *inst, reason, pool string) {
	c := pl.c
	pl.stops = append(pl.stops, undoStop{i, i.desired, i.reason})
	c.detach(i)
	i.desired, i.reason = model.DesiredStop, reason
	c.attach(i)
	pl.plan.Stop = append(pl.plan.Stop, Stop{ID: i.id, Reason: reason, Pool: pool})
}

// housekeep decides an app's stops and how many instances it misses.
func (pl *planner) housekeep(a *app) {
	want := pl.c.wanted(a)
	if want == 0 && a.cnt.live+a.cnt.lost > 0 {
		reason := ReasonAppStopped
		if a.stub {
			reason = ReasonAppRemoved
		}
		for _, i := range pl.c.heldOf(a) {
			if i.k.live {
				pl.stop(i, reason, "")
			} else if i.k.lost {
				pl.stop(i, ReasonNodeDown, "")
			}
		}
		return
	}
	if a.cnt.lost > 0 {
		for _, i := range pl.c.heldOf(a) {
			if i.k.lost {
				pl.stop(i, ReasonNodeDown, "")
			}
		}
	}
	if surplus := a.cnt.live - want; surplus > 0 {
		for _, i := range pl.ranked(a)[:surplus] {
			pl.stop(i, ReasonScaledDown, "")
		}
	}
	// rolling update and draining, update.maxParallel at a time
	if a.cnt.outdated+a.cnt.draining > 0 {
		missing := want - a.cnt.live
		if missing < 0 {
			missing = 0
		}
		u := a.m.Spec.Update
		budget := u.EffectiveMaxParallel() - a.cnt.stopping - a.cnt.starting - missing
		canaryCap := -1
		if u.Canary > 0 && !a.m.Promoted && a.cnt.outdated > 0 {
			fresh := a.cnt.live - a.cnt.outdated
			canaryCap = u.Canary - fresh - missing
		}
		for _, i := range pl.ranked(a) {
			if budget <= 0 {
				break
			}
			if !i.k.live || !(i.k.outdated || i.k.draining) {
				continue
			}
			if !i.k.draining {
				if canaryCap == 0 {
					continue
				}
				if canaryCap > 0 {
					canaryCap--
				}
			}
			reason := ReasonReplaced
			if i.k.draining {
				reason = ReasonDraining
			}
			pl.stop(i, reason, "")
			budget--
		}
	}
	a.missing = want - a.cnt.live
	if a.missing < 0 {
		a.missing = 0
	}
}

// ranked orders an app's live instances by how willingly they go: on a
// draining node, then older versions, then not yet running, then newest
// id first.
func (pl *planner) ranked(a *app) []*inst {
	var out []*inst
	for _, i := range a.insts {
		if i.k.live {
			out = append(out, i)
		}
	}
	rank := func(i *inst) int {
		r := 0
		if !i.k.draining {
			r += 4
		}
		if !i.k.outdated {
			r += 2
		}
		if !i.k.starting {
			r++
		}
		return r
	}
	sort.Slice(out, func(x, y int) bool {
		rx, ry := rank(out[x]), rank(out[y])
		if rx != ry {
			return rx < ry
		}
		return out[x].id > out[y].id
	})
	return out
}

// ---- the DRF loop

func (pl *planner) parentOf(sk *schedKey) *pool {
	if sk.a != nil {
		return sk.a.pool
	}
	return sk.p.parent
}

func (pl *planner) activate(sk *schedKey) {
	for sk.hidx < 0 {
		parent := pl.parentOf(sk)
		if parent == nil {
			return
		}
		pl.push(parent, sk)
		if parent.active {
			return
		}
		parent.active = true
		sk = &parent.sk
	}
}

// deactivate takes sk out of its parent's heap, and the parent out of its
// own when it has nothing left.
func (pl *planner) deactivate(sk *schedKey) {
	for sk.hidx >= 0 {
		parent := pl.parentOf(sk)
		pl.remove(parent, sk)
		if len(parent.heap) > 0 || parent.parent == nil {
			if len(parent.heap) == 0 {
				parent.active = false
			}
			return
		}
		parent.active = false
		sk = &parent.sk
	}
}

func (pl *planner) placeAll() {
	c := pl.c
	// instances whose room preemption is making wait for it: placed
	// elsewhere, they would leave the victims stopped for nothing
	waiting := map[*app]int{}
	for _, r := range pl.plan.reservations {
		if a := c.apps[r.app]; a != nil {
			waiting[a]++
		}
	}
	for _, a := range c.sortedApps() {
		if a.missing > waiting[a] {
			pl.activate(&a.sk)
		} else if a.missing > 0 {
			a.blocked = "waiting for preempted instances to stop"
		}
	}
	for len(c.root.heap) > 0 {
		var t0 time.Time
		if c.cfg.OnDecision != nil {
			t0 = time.Now()
		}
		sk := c.root.heap[0]
		for sk.a == nil {
			sk = sk.p.heap[0]
		}
		a := sk.a
		req := a.m.Spec.Resources
		if bp, reason := pl.limit(a, req); reason != "" {
			if bp != nil && bp.parent == nil {
				bp.blockApps(reason)
				return
			}
			if bp != nil {
				bp.blockApps(reason)
				pl.deactivate(&bp.sk)
			} else {
				a.blocked = reason
				pl.deactivate(&a.sk)
			}
			continue
		}
		n := c.pick(a, req, pl.cursor)
		if n == nil {
			a.blocked = c.unfit(a, req)
			pl.deactivate(&a.sk)
			continue
		}
		pl.place(a, n)
		if c.cfg.Scoring == Spread {
			pl.cursor = n.idx + 1
		}
		if a.missing <= waiting[a] {
			if a.missing > 0 {
				a.blocked = "waiting for preempted instances to stop"
			}
			pl.deactivate(&a.sk)
		} else {
			pl.fixUp(&a.sk)
		}
		if c.cfg.OnDecision != nil {
			c.cfg.OnDecision(time.Since(t0))
		}
	}
}

// fixUp restores heap order from sk up to the root after its usage grew.
func (pl *planner) fixUp(sk *schedKey) {
	for sk != nil && sk.hidx >= 0 {
		parent := pl.parentOf(sk)
		pl.c.refresh(parent.m.EffectivePolicy(), sk)
		pl.fix(parent, sk.hidx)
		sk = &parent.sk
		if parent.parent == nil {
			return
		}
	}
}

func (p *pool) blockApps(reason string) {
	for _, a := range p.apps {
		if a.missing > 0 && a.blocked == "" {
			a.blocked = reason
		}
	}
	for _, ch := range p.children {
		ch.blockApps(reason)
	}
}

// limit checks max and maxInstances up the pool chain. A pool at
// maxInstances blocks all its apps (returned pool); a max that this
// request would cross blocks only this app.
func (pl *planner) limit(a *app, req resource.Vector) (*pool, string) {
	for p := a.pool; p != nil; p = p.parent {
		if p.m.MaxInstances > 0 && p.sk.count >= p.m.MaxInstances {
			return p, fmt.Sprintf("pool %s is at maxInstances %d", p.sk.name, p.m.MaxInstances)
		}
		for d := range req {
			if p.m.Max[d] > 0 && p.sk.usage[d]+req[d] > p.m.Max[d] {
				return nil, fmt.Sprintf("pool %s is at its max %s", p.sk.name, resource.Dim(d))
			}
		}
	}
	return nil, ""
}

func describe(a *app) string {
	s := a.m.Spec.Resources.String()
	con := a.m.Spec.Constraints
	if con.IDC != "" || len(con.Labels) > 0 {
		s += " matching its constraints"
	}
	if a.m.Spec.Spread > 0 {
		s += fmt.Sprintf(" (spread %d per node)", a.m.Spec.Spread)
	}
	return s
}

// place puts one new instance of a on n, tentatively.
func (pl *planner) place(a *app, n *node) {
	c := pl.c
	id := pl.newID(a)
	i := &inst{id: id, app: a, version: a.m.Version, node: n, nodeNm: n.m.Name,
		state: model.Assigned, desired: model.DesiredRun, res: a.m.Spec.Resources, fresh: true}
	i.ports = c.assignPorts(a, n)
	var hp map[string]int
	if len(i.ports) > 0 {
		hp = make(map[string]int, len(i.ports))
		for _, p := range i.ports {
			hp[p.name] = p.port
		}
	}
	i.m = model.Instance{ID: id, App: a.sk.name, Version: a.m.Version, Node: n.m.Name, HostPorts: hp,
		State: model.Assigned, Desired: model.DesiredRun,
		Transitions: []model.Transition{{State: model.Assigned, At: pl.now}}}
	c.insts[id] = i
	a.insts[id] = i
	c.attach(i)
	pl.placed = append(pl.placed, i)
	a.missing--
	pl.plan.Place = append(pl.plan.Place, Placement{Instance: i.m})
}

func (pl *planner) newID(a *app) string {
	for {
		pl.seq++
		h := mix(pl.seq ^ uint64(pl.now.UnixNano())*0x9e3779b97f4a7c15 ^ strHash(a.sk.name))
		id := fmt.Sprintf("%s-%08x", a.sk.name, uint32(h))
		if _, taken := pl.c.insts[id]; !taken {
			return id
		}
	}
}

func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func strHash(s string) uint64 {
	h := uint64(14695981039346656037)
	for j := 0; j < len(s); j++ {
		h ^= uint64(s[j])
		h *= 1099511628211
	}
	return h
}

// ---- heaps of schedulables, ordered by the owning pool's policy

func (pl *planner) lessIn(p *pool, x, y *schedKey) bool {
	return pl.c.less(p.m.EffectivePolicy(), x, y)
}

func (pl *planner) push(p *pool, sk *schedKey) {
	pl.c.refresh(p.m.EffectivePolicy(), sk)
	sk.hidx = len(p.heap)
	p.heap = append(p.heap, sk)
	pl.up(p, sk.hidx)
}

func (pl *planner) remove(p *pool, sk *schedKey) {
	j := sk.hidx
	last := len(p.heap) - 1
	if j != last {
		pl.swap(p, j, last)
	}
	p.heap = p.heap[:last]
	sk.hidx = -1
	if j != last {
		if !pl.down(p, j) {
			pl.up(p, j)
		}
	}
}

func (pl *planner) fix(p *pool, j int) {
	if !pl.down(p, j) {
		pl.up(p, j)
	}
}

func (pl *planner) swap(p *pool, i, j int) {
	h := p.heap
	h[i], h[j] = h[j], h[i]
	h[i].hidx = i
	h[j].hidx = j
}

func (pl *planner) up(p *pool, j int) {
	for j > 0 {
		parent := (j - 1) / 2
		if !pl.lessIn(p, p.heap[j], p.heap[parent]) {
			break
		}
		pl.swap(p, j, parent)
		j = parent
	}
}

func (pl *planner) down(p *pool, j0 int) bool {
	j := j0
	n := len(p.heap)
	for {
		l := 2*j + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && pl.lessIn(p, p.heap[r], p.heap[l]) {
			m = r
		}
		if !pl.lessIn(p, p.heap[m], p.heap[j]) {
			break
		}
		pl.swap(p, j, m)
		j = m
	}
	return j > j0
}
