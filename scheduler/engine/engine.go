// Package engine is gaia-scheduler's decision core: an in-memory cluster
// (nodes, pools, apps, instances), hierarchical weighted DRF across pools,
// each leaf pool's policy across its apps, placement on nodes through an
// index, preemption, node failure and draining, scaling and rolling
// updates. It does no I/O and starts no goroutines: the server feeds it
// what the store loaded, asks for a Plan at a time it passes in, and
// Applies the plan once the store has committed it.
//
// Accounting rules:
//   - An instance holds its request on its node from the moment it is
//     placed until it is terminal (stopped, failed, lost) or removed;
//     stopping instances still hold resources.
//   - A pool's usage is the sum of the requests its apps' instances hold,
//     except those on down or unknown nodes (they are lost and replaced).
//   - An app is missing spec.instances − live instances, where live means
//     held, not on a down node, not stopping and not asked to stop.
package engine

import (
	"fmt"
	"sort"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// Scoring chooses among the feasible candidate nodes.
type Scoring int

const (
	// Binpack fills nodes in index order (first fit over an exact
	// free-capacity index) and among the candidates found takes the
	// fullest one.
	Binpack Scoring = iota
	// Spread starts each search at a rotating position and takes the
	// emptiest candidate.
	Spread
)

// String is the scoring's name in the scheduler's config.
func (s Scoring) String() string {
	if s == Spread {
		return "spread"
	}
	return "binpack"
}

// Config tunes the engine; the zero value is usable.
type Config struct {
	Scoring Scoring
	// Candidates is how many feasible nodes a placement compares
	// (power of k choices); default 4.
	Candidates int
	// PortMin and PortMax bound dynamic host ports; default 20000-32767.
	PortMin, PortMax int
	// OnDecision, when set, is called with the time each placement
	// decision took (for benchmarks). The engine reads the wall clock
	// only when it is set.
	OnDecision func(time.Duration)
}

// Stop reasons.
const (
	ReasonPreempted = "preempted"
	// ReasonMoved: stopped to make room for a starved pool's instance,
	// with a node emptied for its replacement.
	ReasonMoved      = "moved"
	ReasonScaledDown = "scaled down"
	ReasonReplaced   = "replaced"
	ReasonNodeDown   = "node down"
	ReasonDraining   = "draining"
	ReasonAppStopped = "app stopped"
	ReasonAppRemoved = "app removed"
)

// Placement is a new instance, state assigned, desired run.
type Placement struct {
	Instance model.Instance
}

// Stop asks for an instance to stop. For preemption, Pool names the pool
// the resources are taken for.
type Stop struct {
	ID     string
	Reason string
	Pool   string `json:",omitempty"`
}

// Unplaceable says why Count of an app's missing instances were not
// placed by this plan. Held: the app's replacements are held back after
// failures (HoldApp), not refused by the cluster.
type Unplaceable struct {
	App    string
	Count  int
	Reason string
	Held   bool `json:",omitempty"`
}

// Plan is what one scheduling pass decided.
type Plan struct {
	Place       []Placement
	Stop        []Stop
	Unplaceable []Unplaceable

	// reservations after this plan: nodes being emptied by preemption for
	// an app, placed on once the victims are gone.
	reservations []*reservation
	// {giver, receiver} of this plan's fair-share preemptions between
	// pools (see GiveBackAfter), made at at
	gave map[[2]string]bool
	at   time.Time
	seq  uint64
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool { return len(p.Place) == 0 && len(p.Stop) == 0 }

type reservation struct {
	app     string
	pool    string
	node    string
	victims []string
	made    time.Time
}

// Cluster is the engine's state. It is not safe for concurrent use.
type Cluster struct {
	cfg Config

	nodes    map[string]*node
	nodeList []*node // by index in the tree
	tree     tree
	total    resource.Vector // allocatable of ready nodes
	nodeGen  uint64          // bumped when labels, IDC or the node set change

	pools map[string]*pool
	root  *pool

	apps    map[string]*app
	appList []*app // sorted by name; nil when stale

	insts map[string]*inst

	reservations []*reservation
	// when a pool's instances were last preempted for another's fair
	// share, by {giver, receiver}; Apply drops entries older than
	// GiveBackAfter
	gave    map[[2]string]time.Time
	seq     uint64                      // instance-id sequence
	orphans map[string]map[string]*inst // node name → instances on a node not (or no longer) known

	// gen counts changes to anything the fair shares depend on; the pools'
	// fair shares were computed at fairAt when fairValid.
	gen       uint64
	fairAt    uint64
	fairValid bool
	conCache  map[string]*conEntry
}

type node struct {
	m        model.Node
	idx      int
	alloc    resource.Vector
	used     resource.Vector
	ports    map[int]string // host port → instance id
	dynUsed  int            // ports in use inside the dynamic range
	appCount map[*app]int
	insts    map[string]*inst
}

func (n *node) ready() bool { return n.m.State == model.NodeReady || n.m.State == "" }
func (n *node) down() bool  { return n.m.State == model.NodeDown }
func (n *node) free() resource.Vector {
	return n.alloc.Sub(n.used)
}

// schedKey is what pools and apps share for ordering.
type schedKey struct {
	name     string
	weight   float64
	priority int
	created  time.Time
	usage    resource.Vector // held, not on down nodes
	count    int             // instances counted in usage
	hidx     int             // position in the parent's heap, -1 if absent
	p        *pool           // set when this key is a pool's
	a        *app            // set when this key is an app's

	// plan-time
	demand resource.Vector
	minT   resource.Vector
	needy  bool    // cached ordering key, see Cluster.refresh
	rank   float64 // usage/min when needy, else dominant share / weight
	saveU  resource.Vector
	saveN  int
}

type pool struct {
	sk       schedKey
	m        model.Pool
	explicit bool
	parent   *pool
	children map[string]*pool
	apps     map[string]*app

	// plan-time
	heap     []*schedKey
	active   bool
	fair     resource.Vector
	minSince time.Time
	fsSince  time.Time
	depth    int
}

type app struct {
	sk    schedKey
	m     model.App
	stub  bool // instances known, app not (or removed)
	pool  *pool
	insts map[string]*inst

	cnt counters

	// hold: no placement before it (the back-off after failures), why
	hold    time.Time
	holdWhy string

	// plan-time
	held     int // missing instances not placed because of the hold
	missing  int
	scanFrom int
	blocked  string
	fairLeft int
	fair     resource.Vector // its share of its pool's, by the pool's policy
	fsSince  time.Time       // since when starved for that share
}

type inst struct {
	id      string
	app     *app
	version int64
	node    *node
	nodeNm  string
	ports   []hostPort
	state   model.InstanceState
	desired model.Desired
	reason  string
	res     resource.Vector
	m       model.Instance // as last upserted (exit code, transitions...)

	onNode  bool // holds res on node
	fresh   bool // placed by the plan being made (never a victim in it)
	counted bool // counted in app/pool usage
	k       contrib
}

// contrib is what an instance adds to its app's counters.
type contrib struct {
	live, outdated, starting, draining, lost, stopping bool
}

// counters an app keeps up to date as instances come and go.
type counters struct {
	live     int // held, on an up node, not stopping
	outdated int // live, on an older version
	starting int // live, current version, not yet running (healthy, with a health check)
	draining int // live, on a draining node
	lost     int // on a down or unknown node and not yet asked to stop
	stopping int // held and stopping
}

func (k contrib) apply(c *counters, sign int) {
	b := func(x bool) int {
		if x {
			return sign
		}
		return 0
	}
	c.live += b(k.live)
	c.outdated += b(k.outdated)
	c.starting += b(k.starting)
	c.draining += b(k.draining)
	c.lost += b(k.lost)
	c.stopping += b(k.stopping)
}

func classify(i *inst) contrib {
	var k contrib
	if i.state.Terminal() {
		return k
	}
	stopping := i.stopping()
	if i.node == nil || i.node.down() {
		k.lost = i.desired != model.DesiredStop
		return k
	}
	if stopping {
		k.stopping = true
		return k
	}
	k.live = true
	if !i.app.m.Current(i.version) {
		k.outdated = true
	} else {
		switch i.state {
		case model.Pending, model.Assigned, model.Pulling, model.Starting:
			k.starting = true
		case model.Running:
			// Not yet passing its health check (or failing it): still in
			// flight, so a rolling update waits for it rather than
			// replacing the next old instance by one that does not serve.
			k.starting = i.app.m.Spec.Health != nil
		}
	}
	k.draining = i.node.m.State == model.NodeDraining
	return k
}

type hostPort struct {
	name string
	port int
}

func (i *inst) stopping() bool {
	return !i.state.Terminal() && (i.desired == model.DesiredStop || i.state == model.Stopping)
}

// New makes an empty cluster with the root pool.
func New(cfg Config) *Cluster {
	if cfg.Candidates <= 0 {
		cfg.Candidates = 4
	}
	if cfg.PortMin <= 0 {
		cfg.PortMin = 20000
	}
	if cfg.PortMax <= 0 || cfg.PortMax < cfg.PortMin {
		cfg.PortMax = 32767
	}
	c := &Cluster{
		cfg:      cfg,
		nodes:    map[string]*node{},
		pools:    map[string]*pool{},
		apps:     map[string]*app{},
		insts:    map[string]*inst{},
		conCache: map[string]*conEntry{},
		orphans:  map[string]map[string]*inst{},
		gave:     map[[2]string]time.Time{},
	}
	c.root = c.ensurePool(model.RootPool)
	return c
}

// ---- nodes

// UpsertNode adds a node or updates its labels, capacity, reserved and
// state. A node going down makes its instances lost (no longer counted,
// replaced); a node coming back keeps whatever it still holds until the
// scheduler's stops reach it.
func (c *Cluster) UpsertNode(m model.Node) {
	c.gen++
	n := c.nodes[m.Name]
	if n == nil {
		n = &node{idx: len(c.nodeList), ports: map[int]string{}, appCount: map[*app]int{}, insts: map[string]*inst{}}
		c.nodes[m.Name] = n
		c.nodeList = append(c.nodeList, n)
		c.tree.grow(len(c.nodeList))
		n.m = m
		n.alloc = m.Allocatable()
		// instances upserted before their node
		for _, i := range sortedInsts(c.orphans[m.Name]) {
			c.detach(i)
			i.node = n
			c.attach(i)
		}
		delete(c.orphans, m.Name)
		c.nodeGen++
		c.refreshNode(n)
		return
	}
	if n.m.IDC != m.IDC || !sameLabels(n.m.Labels, m.Labels) {
		c.nodeGen++
	}
	wasReady := n.ready()
	held := make([]*inst, 0, len(n.insts))
	for _, i := range n.insts {
		held = append(held, i)
	}
	sort.Slice(held, func(a, b int) bool { return held[a].id < held[b].id })
	for _, i := range held {
		c.detach(i)
	}
	if wasReady {
		c.total = c.total.Sub(n.alloc)
	}
	n.m = m
	n.alloc = m.Allocatable()
	if n.ready() {
		c.total = c.total.Add(n.alloc)
	}
	for _, i := range held {
		c.attach(i)
	}
	c.tree.set(n.idx, c.treeValue(n))
}

func (c *Cluster) refreshNode(n *node) {
	if n.ready() {
		c.total = c.total.Add(n.alloc)
	}
	c.tree.set(n.idx, c.treeValue(n))
}

func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// treeValue is what the index holds for a node: its free capacity when
// it takes placements, −1 everywhere when it does not.
func (c *Cluster) treeValue(n *node) resource.Vector {
	if !n.ready() {
		return notPlaceable
	}
	return n.free()
}

var notPlaceable = resource.Vector{-1, -1, -1, -1, -1, -1}

// RemoveNode forgets a node; its instances are lost and replaced.
func (c *Cluster) RemoveNode(name string) {
	c.gen++
	n := c.nodes[name]
	if n == nil {
		return
	}
	held := make([]*inst, 0, len(n.insts))
	for _, i := range n.insts {
		held = append(held, i)
	}
	for _, i := range held {
		c.detach(i)
		i.node = nil
		c.attach(i)
		c.orphan(i)
	}
	if n.ready() {
		c.total = c.total.Sub(n.alloc)
	}
	// keep indices dense: move the last node into the hole
	last := c.nodeList[len(c.nodeList)-1]
	c.nodeList[n.idx] = last
	last.idx = n.idx
	c.nodeList = c.nodeList[:len(c.nodeList)-1]
	c.tree.set(last.idx, c.treeValue(last))
	c.tree.set(len(c.nodeList), notPlaceable)
	delete(c.nodes, name)
	c.nodeGen++
}

// ---- pools

func (c *Cluster) ensurePool(name string) *pool {
	if p := c.pools[name]; p != nil {
		return p
	}
	p := &pool{m: model.Pool{Name: name}, children: map[string]*pool{}, apps: map[string]*app{}}
	p.sk = schedKey{name: name, weight: 1, hidx: -1, p: p}
	c.pools[name] = p
	if parent := model.ParentPool(name); parent != "" {
		p.parent = c.ensurePool(parent)
		p.parent.children[name] = p
		p.depth = p.parent.depth + 1
	}
	return p
}

// UpsertPool adds or changes a pool; missing ancestors are created with
// defaults.
func (c *Cluster) UpsertPool(m model.Pool) {
	c.gen++
	p := c.ensurePool(m.Name)
	p.m = m
	p.explicit = true
	p.sk.weight = m.EffectiveWeight()
}

// RemovePool forgets a pool's settings; a pool that still has apps or
// children stays with the defaults.
func (c *Cluster) RemovePool(name string) {
	c.gen++
	p := c.pools[name]
	if p == nil || p == c.root {
		return
	}
	if len(p.children) > 0 || len(p.apps) > 0 {
		p.m = model.Pool{Name: name}
		p.explicit = false
		p.sk.weight = 1
		return
	}
	delete(p.parent.children, name)
	delete(c.pools, name)
	if !p.parent.explicit && p.parent != c.root {
		c.RemovePool(p.parent.m.Name)
	}
}

// ---- apps

// UpsertApp adds an app or installs its new version.
func (c *Cluster) UpsertApp(m model.App) {
	c.gen++
	name := m.Spec.Name
	a := c.apps[name]
	if a == nil {
		a = &app{insts: map[string]*inst{}}
		a.sk = schedKey{name: name, weight: 1, hidx: -1, a: a}
		c.apps[name] = a
		c.appList = nil
	}
	held := c.heldOf(a)
	for _, i := range held {
		c.detach(i)
	}
	if a.pool != nil {
		delete(a.pool.apps, name)
	}
	a.m = m
	a.stub = false
	a.hold, a.holdWhy = m.Status.HeldUntil, m.Status.LastFailure
	a.sk.priority = m.Spec.Priority
	a.sk.created = m.CreatedAt
	if prev := a.pool; prev == nil || prev.sk.name != m.Spec.Pool {
		a.fsSince = time.Time{} // starved in another pool is not starved here
	}
	a.pool = c.ensurePool(m.Spec.Pool)
	a.pool.apps[name] = a
	for _, i := range held {
		if i.res.IsZero() {
			i.res = m.Spec.Resources
		}
		c.attach(i)
	}
}

// HoldApp places no instance of the app before until (zero: no hold);
// why is said in the plans' Unplaceable meanwhile. Scale-downs, stops and
// rolling-update steps go on; a rolling update waits, as its missing
// instances count as in flight. UpsertApp sets the hold from
// Status.HeldUntil and Status.LastFailure.
func (c *Cluster) HoldApp(name string, until time.Time, why string) {
	if a := c.apps[name]; a != nil {
		a.hold, a.holdWhy = until, why
		a.m.Status.HeldUntil, a.m.Status.LastFailure = until, why
	}
}

func (c *Cluster) heldOf(a *app) []*inst {
	out := make([]*inst, 0, len(a.insts))
	for _, i := range a.insts {
		out = append(out, i)
	}
	sort.Slice(out, func(x, y int) bool { return out[x].id < out[y].id })
	return out
}

// RemoveApp forgets an app; its remaining instances are stopped by the
// next plans and the app is gone once they are removed.
func (c *Cluster) RemoveApp(name string) {
	c.gen++
	a := c.apps[name]
	if a == nil {
		return
	}
	if len(a.insts) == 0 {
		c.dropApp(a)
		return
	}
	a.stub = true
}

func (c *Cluster) dropApp(a *app) {
	c.gen++
	if a.pool != nil {
		delete(a.pool.apps, a.sk.name)
	}
	delete(c.apps, a.sk.name)
	c.appList = nil
}

func (c *Cluster) stubApp(name string) *app {
	c.gen++
	a := &app{insts: map[string]*inst{}, stub: true}
	a.sk = schedKey{name: name, weight: 1, hidx: -1, a: a}
	a.m.Spec.Name = name
	a.pool = c.root
	c.root.apps[name] = a
	c.apps[name] = a
	c.appList = nil
	return a
}

func (c *Cluster) sortedApps() []*app {
	if c.appList == nil {
		c.appList = make([]*app, 0, len(c.apps))
		for _, a := range c.apps {
			c.appList = append(c.appList, a)
		}
		sort.Slice(c.appList, func(i, j int) bool { return c.appList[i].sk.name < c.appList[j].sk.name })
	}
	return c.appList
}

// ---- instances

// UpsertInstance adds an instance or records its new state. A terminal
// instance (stopped, failed, lost) stops holding resources.
func (c *Cluster) UpsertInstance(m model.Instance) {
	i := c.insts[m.ID]
	if i != nil {
		c.detach(i)
		if i.app.sk.name != m.App {
			delete(i.app.insts, i.id)
			c.maybeDropStub(i.app)
			i.app = nil
		}
	} else {
		i = &inst{id: m.ID}
		c.insts[m.ID] = i
	}
	if i.app == nil {
		a := c.apps[m.App]
		if a == nil {
			a = c.stubApp(m.App)
		}
		i.app = a
		a.insts[i.id] = i
		i.res = a.m.Spec.Resources
	}
	i.m = m
	i.version = m.Version
	c.unorphan(i)
	i.nodeNm = m.Node
	i.node = c.nodes[m.Node]
	c.orphan(i)
	i.state = m.State
	if i.state == "" {
		i.state = model.Assigned
	}
	i.desired = m.Desired
	if i.desired == "" {
		i.desired = model.DesiredRun
	}
	i.reason = m.Reason
	i.ports = i.ports[:0]
	for _, name := range sortedPortNames(m.HostPorts) {
		i.ports = append(i.ports, hostPort{name, m.HostPorts[name]})
	}
	c.attach(i)
}

func sortedPortNames(m map[string]int) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// RemoveInstance forgets an instance.
func (c *Cluster) RemoveInstance(id string) {
	i := c.insts[id]
	if i == nil {
		return
	}
	c.detach(i)
	c.unorphan(i)
	delete(c.insts, id)
	delete(i.app.insts, id)
	c.maybeDropStub(i.app)
}

func (c *Cluster) maybeDropStub(a *app) {
	if a.stub && len(a.insts) == 0 {
		c.dropApp(a)
	}
}

// attach accounts an instance on its node and in its app and pools.
func (c *Cluster) attach(i *inst) {
	c.gen++
	i.k = classify(i)
	i.k.apply(&i.app.cnt, 1)
	if i.state.Terminal() || i.node == nil {
		return
	}
	n := i.node
	n.used = n.used.Add(i.res)
	n.insts[i.id] = i
	n.appCount[i.app]++
	for _, hp := range i.ports {
		n.ports[hp.port] = i.id
		if hp.port >= c.cfg.PortMin && hp.port <= c.cfg.PortMax {
			n.dynUsed++
		}
	}
	i.onNode = true
	c.tree.set(n.idx, c.treeValue(n))
	if n.down() {
		return
	}
	i.counted = true
	i.app.sk.usage = i.app.sk.usage.Add(i.res)
	i.app.sk.count++
	for p := i.app.pool; p != nil; p = p.parent {
		p.sk.usage = p.sk.usage.Add(i.res)
		p.sk.count++
	}
}

func (c *Cluster) detach(i *inst) {
	c.gen++
	i.k.apply(&i.app.cnt, -1)
	i.k = contrib{}
	if i.onNode {
		n := i.node
		n.used = n.used.Sub(i.res)
		delete(n.insts, i.id)
		if n.appCount[i.app]--; n.appCount[i.app] <= 0 {
			delete(n.appCount, i.app)
		}
		for _, hp := range i.ports {
			if n.ports[hp.port] == i.id {
				delete(n.ports, hp.port)
				if hp.port >= c.cfg.PortMin && hp.port <= c.cfg.PortMax {
					n.dynUsed--
				}
			}
		}
		i.onNode = false
		c.tree.set(n.idx, c.treeValue(n))
	}
	if i.counted {
		i.counted = false
		i.app.sk.usage = i.app.sk.usage.Sub(i.res)
		i.app.sk.count--
		for p := i.app.pool; p != nil; p = p.parent {
			p.sk.usage = p.sk.usage.Sub(i.res)
			p.sk.count--
		}
	}
}

// ---- reads

// Usage is what a pool (with its descendants) holds, and how many
// instances.
func (c *Cluster) Usage(pool string) (resource.Vector, int) {
	p := c.pools[pool]
	if p == nil {
		return resource.Vector{}, 0
	}
	return p.sk.usage, p.sk.count
}

// AppUsage is what an app holds, and how many instances.
func (c *Cluster) AppUsage(name string) (resource.Vector, int) {
	a := c.apps[name]
	if a == nil {
		return resource.Vector{}, 0
	}
	return a.sk.usage, a.sk.count
}

// Total is the allocatable capacity of the ready nodes.
func (c *Cluster) Total() resource.Vector { return c.total }

// NodeUsed is what the instances on a node hold.
func (c *Cluster) NodeUsed(name string) resource.Vector {
	if n := c.nodes[name]; n != nil {
		return n.used
	}
	return resource.Vector{}
}

// Instance returns an instance as the engine sees it: node, host ports,
// state, desired and reason as last upserted or applied.
func (c *Cluster) Instance(id string) (model.Instance, bool) {
	i := c.insts[id]
	if i == nil {
		return model.Instance{}, false
	}
	m := i.m
	m.State, m.Desired, m.Reason = i.state, i.desired, i.reason
	return m, true
}

// Instances lists an app's instances (any state) sorted by id.
func (c *Cluster) Instances(app string) []model.Instance {
	a := c.apps[app]
	if a == nil {
		return nil
	}
	var out []model.Instance
	for _, i := range c.heldOf(a) {
		m, _ := c.Instance(i.id)
		out = append(out, m)
	}
	return out
}

func (c *Cluster) String() string {
	return fmt.Sprintf("cluster{%d nodes, %d pools, %d apps, %d instances}", len(c.nodes), len(c.pools), len(c.apps), len(c.insts))
}

func (c *Cluster) orphan(i *inst) {
	if i.node != nil || i.nodeNm == "" {
		return
	}
	m := c.orphans[i.nodeNm]
	if m == nil {
		m = map[string]*inst{}
		c.orphans[i.nodeNm] = m
	}
	m[i.id] = i
}

func (c *Cluster) unorphan(i *inst) {
	if m := c.orphans[i.nodeNm]; m != nil {
		delete(m, i.id)
		if len(m) == 0 {
			delete(c.orphans, i.nodeNm)
		}
	}
}

func sortedInsts(m map[string]*inst) []*inst {
	out := make([]*inst, 0, len(m))
	for _, i := range m {
		out = append(out, i)
	}
	sort.Slice(out, func(x, y int) bool { return out[x].id < out[y].id })
	return out
}

// CanFit reports whether one instance of spec could ever be placed on the
// current nodes: some ready or draining node's allocatable capacity (with
// nothing running) holds the request in all six dimensions and meets the
// constraints. The reason names what is missing when it cannot.
func (c *Cluster) CanFit(spec model.AppSpec) (bool, string) {
	sawConstraint := false
	for _, n := range c.nodeList {
		if n.down() {
			continue
		}
		if !matches(spec.Constraints, n) {
			continue
		}
		sawConstraint = true
		if spec.Resources.Fits(n.alloc) {
			return true, ""
		}
	}
	if !sawConstraint && (spec.Constraints.IDC != "" || len(spec.Constraints.Labels) > 0) {
		return false, "no node matches the constraints"
	}
	return false, fmt.Sprintf("no node is big enough for %s", spec.Resources)
}
