package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/engine"
	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/store"
)

// leaderState is everything the leader keeps in memory, rebuilt from
// PostgreSQL when it starts leading: the engine's cluster, the instances
// owed to each node, and each node's desired-set feed.
type leaderState struct {
	s    *Server
	term int64
	ctx  context.Context

	// mu guards the engine and the maps below. The loop holds it for a
	// pass; API writes hold it for theirs.
	mu     sync.Mutex
	eng    *engine.Cluster
	nodes  map[string]*model.Node
	pools  map[string]*model.Pool
	apps   map[string]*model.App
	inst   map[string]*model.Instance     // live instances (store.Live)
	byNode map[string]map[string]struct{} // node → live instance ids
	specs  map[versionKey]versionSpec     // app versions instances run
	// pending are changes made in memory and not yet written (a failed
	// write is retried by the next pass).
	pendingNodes map[string]bool
	pendingInst  map[string]bool
	pendingApps  map[string]bool         // apps whose status changed (backoff.go)
	unplaced     map[string]bool         // apps whose status says instances wait
	healthy      map[string]healthyWatch // apps under back-off: the reset clock
	dirty        map[string]bool         // nodes whose desired set changed
	// usage that changed since the last flush (written with heartbeats)
	usageInst  map[string]bool
	usageNodes map[string]bool
	lastFlush  time.Time
	started    time.Time // when this term's state was loaded
	// rollouts are the new versions watched for auto-rollback, since when.
	rollouts map[string]time.Time
	// ripening are instances healthy for less than their app's
	// update.minHealthyTime (the engine sees them starting), and when
	// they will have been healthy that long.
	ripening map[string]time.Time

	// feeds: per node, read by polls without mu.
	fmu   sync.RWMutex
	feeds map[string]*feed

	rmu     sync.Mutex
	reports map[string]*api.Report

	kick    chan struct{}
	counter atomic.Uint64
	// deposed is closed when an API write found the term over.
	deposed    chan struct{}
	deposeOnce sync.Once
}

type versionKey struct {
	app     string
	version int64
}

type versionSpec struct {
	spec   model.AppSpec
	digest string
}

// feed is one node's desired set as served to its polls.
type feed struct {
	lastSeen atomic.Int64 // unix nanoseconds of its last request
	waiting  atomic.Int32 // polls open now (a node waiting is alive)

	mu      sync.Mutex
	version string
	body    []byte
	changed chan struct{} // closed when version changes
}

func newFeed(now time.Time) *feed {
	f := &feed{changed: make(chan struct{})}
	f.lastSeen.Store(now.UnixNano())
	return f
}

func (ls *leaderState) poke() {
	select {
	case ls.kick <- struct{}{}:
	default:
	}
}

// load rebuilds the state from the store.
func (s *Server) newLeaderState(ctx context.Context, term int64) (*leaderState, error) {
	st, err := s.store.Load(ctx)
	if err != nil {
		return nil, err
	}
	if st.Term != term {
		return nil, fmt.Errorf("%w (loaded term %d, ours %d)", store.ErrDeposed, st.Term, term)
	}
	scoring := engine.Binpack
	if s.cfg.Scheduler.Scoring == "spread" {
		scoring = engine.Spread
	}
	ls := &leaderState{
		s: s, term: term, ctx: ctx,
		eng:   engine.New(engine.Config{Scoring: scoring, Candidates: s.cfg.Scheduler.Candidates}),
		nodes: map[string]*model.Node{}, pools: map[string]*model.Pool{}, apps: map[string]*model.App{},
		inst: map[string]*model.Instance{}, byNode: map[string]map[string]struct{}{}, specs: map[versionKey]versionSpec{},
		pendingNodes: map[string]bool{}, pendingInst: map[string]bool{}, dirty: map[string]bool{},
		pendingApps: map[string]bool{}, unplaced: map[string]bool{}, healthy: map[string]healthyWatch{},
		usageInst: map[string]bool{}, usageNodes: map[string]bool{}, rollouts: map[string]time.Time{}, ripening: map[string]time.Time{},
		feeds: map[string]*feed{}, reports: map[string]*api.Report{}, kick: make(chan struct{}, 1), deposed: make(chan struct{}),
		lastFlush: time.Now(),
	}
	now := time.Now()
	ls.started = now
	hasRoot := false
	for i := range st.Pools {
		p := st.Pools[i]
		ls.pools[p.Name] = &p
		hasRoot = hasRoot || p.Name == model.RootPool
	}
	if !hasRoot {
		root := model.Pool{Name: model.RootPool}
		if err := s.write(ctx, term, "pool", &store.Batch{Pools: []model.Pool{root}}); err != nil {
			return nil, err
		}
		ls.pools[root.Name] = &root
	}
	for _, name := range sortedKeys(ls.pools) {
		ls.eng.UpsertPool(*ls.pools[name])
	}
	for i := range st.Nodes {
		n := st.Nodes[i]
		ls.nodes[n.Name] = &n
		ls.eng.UpsertNode(n)
		// Every node gets a full timeout from now to be heard from.
		ls.feeds[n.Name] = newFeed(now)
		ls.dirty[n.Name] = true
	}
	for i := range st.Apps {
		a := st.Apps[i]
		ls.apps[a.Name()] = &a
		ls.specs[versionKey{a.Name(), a.Version}] = versionSpec{a.Spec, a.Digest}
		ls.eng.UpsertApp(a) // with its hold, if a back-off was under way
		if a.Status.Unplaced != "" {
			ls.unplaced[a.Name()] = true
		}
		if now.Sub(a.VersionAt) < a.Spec.Update.EffectiveHealthyDeadline() {
			ls.watchRollout(&a) // a rollout a previous leader watched; done ones are dropped by the first pass
		}
	}
	for i := range st.Instances {
		in := st.Instances[i]
		ls.addInstance(&in)
		// an app under back-off: its reset clock runs from when an
		// instance became healthy after the last failure
		if a := ls.apps[in.App]; a != nil && a.Status.Failures > 0 && healthy(&in, a) && len(in.Transitions) > 0 {
			if since := in.Transitions[len(in.Transitions)-1].At; since.After(a.Status.FailedAt) {
				ls.noteHealthy(ls.inst[in.ID], since)
			}
		}
	}
	return ls, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// addInstance records a live instance in the maps and, unless it holds
// nothing (lost, awaiting its node's word), in the engine.
func (ls *leaderState) addInstance(in *model.Instance) {
	ls.inst[in.ID] = in
	if in.Node != "" {
		set := ls.byNode[in.Node]
		if set == nil {
			set = map[string]struct{}{}
			ls.byNode[in.Node] = set
		}
		set[in.ID] = struct{}{}
		ls.dirty[in.Node] = true
	}
	if !in.State.Terminal() {
		ls.eng.UpsertInstance(ls.engineView(in, time.Now()))
	}
}

// dropInstance forgets a finished instance (its row stays, not live).
func (ls *leaderState) dropInstance(in *model.Instance) {
	delete(ls.inst, in.ID)
	if set := ls.byNode[in.Node]; set != nil {
		delete(set, in.ID)
		ls.dirty[in.Node] = true
	}
	ls.eng.RemoveInstance(in.ID)
}

// setState changes an instance's state and records the transition.
func setState(in *model.Instance, state model.InstanceState, reason string, now time.Time) bool {
	if in.State == state && in.Reason == reason {
		return false
	}
	in.State, in.Reason = state, reason
	in.Transitions = append(in.Transitions, model.Transition{State: state, At: now, Reason: reason})
	return true
}

// write is a fenced store write, counted.
func (s *Server) write(ctx context.Context, term int64, kind string, b *store.Batch) error {
	err := s.store.Write(ctx, term, b)
	s.countWrite(kind, err)
	return err
}

func (s *Server) countWrite(kind string, err error) {
	result := "ok"
	switch {
	case errors.Is(err, store.ErrDeposed):
		result = "deposed"
	case err != nil:
		result = "error"
	}
	s.metrics.writes.WithLabelValues(kind, result).Inc()
}

// run is the leader's loop: a pass when woken (API writes, reports) or
// every interval, until the term ends (ErrDeposed) or ctx does.
func (ls *leaderState) run() error {
	t := time.NewTicker(ls.s.cfg.Scheduler.Interval)
	defer t.Stop()
	for {
		start := time.Now()
		if err := ls.pass(start); err != nil {
			return err
		}
		ls.s.metrics.loop.Observe(time.Since(start).Seconds())
		select {
		case <-ls.ctx.Done():
			return nil
		case <-ls.kick:
		case <-t.C:
		}
	}
}

// pass: apply node reports, judge node liveness, write what changed, plan,
// write the plan, apply it, publish the desired sets that changed.
func (ls *leaderState) pass(now time.Time) error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	// Writes of the loop are not cancelled when the Consul lock is lost:
	// the term check decides, and a refused write ends the term here.
	ctx := context.WithoutCancel(ls.ctx)
	ls.applyReports(now)
	ls.checkBackoffResets(now)
	ls.judgeNodes(now)
	ls.ripen(now)
	if err := ls.checkRollouts(ctx, now); err != nil {
		return err
	}
	if err := ls.flushPending(ctx); err != nil {
		return err
	}
	plan := ls.eng.Plan(now)
	if len(plan.Place)+len(plan.Stop) > 0 {
		if err := ls.commitPlan(ctx, plan, now); err != nil {
			return err
		}
	}
	ls.noteUnplaced(plan)
	if err := ls.flushPending(ctx); err != nil { // the apps whose status changed
		return err
	}
	ls.publish()
	if now.Sub(ls.lastFlush) >= ls.s.cfg.Scheduler.HeartbeatFlush {
		if err := ls.flushHeartbeats(ctx); err != nil {
			return err
		}
		ls.lastFlush = now
	}
	ls.countNodes()
	return nil
}

func (ls *leaderState) countNodes() {
	counts := map[model.NodeState]int{model.NodeReady: 0, model.NodeDraining: 0, model.NodeDown: 0}
	for _, n := range ls.nodes {
		counts[n.State]++
	}
	for st, c := range counts {
		ls.s.metrics.nodes.WithLabelValues(string(st)).Set(float64(c))
	}
}

// applyReports folds the nodes' reports received since the last pass into
// the instances: changed ones are pending writes.
func (ls *leaderState) applyReports(now time.Time) {
	ls.rmu.Lock()
	reports := ls.reports
	ls.reports = map[string]*api.Report{}
	ls.rmu.Unlock()
	for node, rep := range reports {
		n := ls.nodes[node]
		if n == nil {
			continue
		}
		if rep.Usage != n.Usage {
			n.Usage = rep.Usage
			ls.usageNodes[node] = true
		}
		seen := make(map[string]bool, len(rep.Instances))
		for _, r := range rep.Instances {
			seen[r.ID] = true
			in := ls.inst[r.ID]
			if in == nil || in.Node != node {
				continue // not (or no longer) this node's: not in its set, so it stops it
			}
			changed := false
			was := in.State
			state := r.State
			if in.State == model.Lost && !state.Terminal() {
				// the scheduler gave it up: it stays lost until stopped
				state = model.Lost
			}
			if state != in.State {
				reason := r.Reason
				if state == model.Lost {
					reason = in.Reason
				}
				changed = setState(in, state, reason, now) || changed
			} else if r.Reason != in.Reason && state != model.Lost && in.Desired != model.DesiredStop {
				// The same state with news (a pull's progress, a retry's
				// error, a restart's back-off): no transition, and
				// written with the next flush like usage, not per report.
				// An instance being stopped keeps the scheduler's reason
				// ("scaled down", "app deleted") until its state changes.
				in.Reason = r.Reason
				ls.usageInst[in.ID] = true
			}
			if r.ExitCode != in.ExitCode || r.Restarts != in.Restarts {
				in.ExitCode, in.Restarts = r.ExitCode, r.Restarts
				changed = true
			}
			if in.State != was {
				if in.State == model.Failed && in.Desired != model.DesiredStop {
					ls.recordFailure(in, now)
				} else {
					ls.noteHealthy(in, now)
				}
			}
			if r.Usage != in.Usage || r.Net != in.Net {
				// Written with the next heartbeat flush (or with a state
				// change, whichever comes first), not per report.
				in.Usage, in.Net = r.Usage, r.Net
				ls.usageInst[in.ID] = true
			}
			if changed {
				ls.instanceChanged(in)
			}
		}
		// Instances told to stop that the node no longer has are stopped.
		for id := range ls.byNode[node] {
			in := ls.inst[id]
			if in != nil && !seen[id] && (in.Desired == model.DesiredStop || in.State == model.Lost) {
				setState(in, model.Stopped, "gone from its node", now)
				ls.instanceChanged(in)
			}
		}
	}
}

// instanceChanged makes a changed instance pending and tells the engine.
func (ls *leaderState) instanceChanged(in *model.Instance) {
	ls.pendingInst[in.ID] = true
	if store.Live(*in) && !in.State.Terminal() {
		ls.eng.UpsertInstance(ls.engineView(in, time.Now()))
	} else {
		ls.eng.RemoveInstance(in.ID)
	}
	if in.State == model.Stopped || in.State == model.Failed {
		ls.dirty[in.Node] = true
	}
}

// engineView is the instance as the engine should see it. With
// update.minHealthyTime, an instance healthy (or running, without a
// health check) for less than that still counts as starting, so a rolling
// update waits for it; ripen shows it to the engine as it is once the time
// has passed.
func (ls *leaderState) engineView(in *model.Instance, now time.Time) model.Instance {
	v := *in
	a := ls.apps[in.App]
	if a == nil || a.Spec.Update.MinHealthyTime <= 0 || !healthy(in, a) || len(in.Transitions) == 0 {
		return v
	}
	if ready := in.Transitions[len(in.Transitions)-1].At.Add(a.Spec.Update.MinHealthyTime.D()); now.Before(ready) {
		v.State = model.Starting
		ls.ripening[in.ID] = ready
	}
	return v
}

// ripen shows the engine the instances whose minHealthyTime has passed.
func (ls *leaderState) ripen(now time.Time) {
	for id, ready := range ls.ripening {
		if now.Before(ready) {
			continue
		}
		delete(ls.ripening, id)
		if in := ls.inst[id]; in != nil && store.Live(*in) && !in.State.Terminal() {
			ls.eng.UpsertInstance(ls.engineView(in, now))
		}
	}
}

// judgeNodes marks nodes not heard from within the timeout down (their
// instances lost, to be replaced) and nodes heard from again ready.
func (ls *leaderState) judgeNodes(now time.Time) {
	timeout := ls.s.cfg.Scheduler.NodeTimeout
	ls.fmu.RLock()
	defer ls.fmu.RUnlock()
	for name, n := range ls.nodes {
		f := ls.feeds[name]
		alive := f != nil && (f.waiting.Load() > 0 || now.Sub(time.Unix(0, f.lastSeen.Load())) < timeout)
		switch {
		case n.State != model.NodeDown && !alive:
			n.State = model.NodeDown
			ls.pendingNodes[name] = true
			ls.eng.UpsertNode(*n)
			ls.s.metrics.nodesDown.Inc()
			lost := 0
			for id := range ls.byNode[name] {
				in := ls.inst[id]
				if in == nil || in.State.Terminal() {
					continue
				}
				in.Desired = model.DesiredStop
				setState(in, model.Lost, "node down", now)
				ls.instanceChanged(in)
				lost++
			}
			ls.dirty[name] = true
			ls.s.log.Warn("node down: not heard from", "node", name, "timeout", timeout, "instances_lost", lost)
		case n.State == model.NodeDown && alive:
			n.State = model.NodeReady
			ls.pendingNodes[name] = true
			ls.eng.UpsertNode(*n)
			ls.dirty[name] = true
			ls.s.log.Info("node back: ready", "node", name)
		}
	}
}

// flushPending writes the pending node and instance changes in one
// transaction under the term.
func (ls *leaderState) flushPending(ctx context.Context) error {
	if len(ls.pendingNodes)+len(ls.pendingInst)+len(ls.pendingApps) == 0 {
		return nil
	}
	b := &store.Batch{}
	for name := range ls.pendingApps {
		if a := ls.apps[name]; a != nil {
			b.Apps = append(b.Apps, *a)
		}
	}
	for name := range ls.pendingNodes {
		if n := ls.nodes[name]; n != nil {
			b.Nodes = append(b.Nodes, *n)
		}
	}
	var finished []*model.Instance
	for id := range ls.pendingInst {
		if in := ls.inst[id]; in != nil {
			b.Instances = append(b.Instances, *in)
			if !store.Live(*in) {
				finished = append(finished, in)
			}
		}
	}
	err := ls.s.write(ctx, ls.term, "state", b)
	if errors.Is(err, store.ErrDeposed) {
		return err
	}
	if err != nil {
		ls.s.log.Warn("writing node reports and liveness (retried next pass)", "err", err)
		return nil
	}
	for name := range ls.pendingNodes {
		delete(ls.usageNodes, name)
	}
	for id := range ls.pendingInst {
		delete(ls.usageInst, id)
	}
	clear(ls.pendingNodes)
	clear(ls.pendingInst)
	clear(ls.pendingApps)
	for _, in := range finished {
		ls.dropInstance(in)
	}
	return nil
}

// commitPlan writes the plan under the term, then applies it.
func (ls *leaderState) commitPlan(ctx context.Context, plan *engine.Plan, now time.Time) error {
	b := &store.Batch{}
	placed := make([]model.Instance, 0, len(plan.Place))
	keep := plan.Place[:0:0]
	for _, p := range plan.Place {
		if _, taken := ls.inst[p.Instance.ID]; taken {
			// an id the engine does not hold (a lost instance awaiting its
			// node): never overwrite it; the next plan places anew
			ls.s.log.Warn("placement with an id in use: skipped", "instance", p.Instance.ID)
			continue
		}
		keep = append(keep, p)
		in := p.Instance
		in.Desired = model.DesiredRun
		if in.State == "" {
			in.State = model.Assigned
		}
		in.Transitions = []model.Transition{{State: in.State, At: now, Reason: "placed"}}
		placed = append(placed, in)
	}
	b.Instances = append(b.Instances, placed...)
	stopped := make([]model.Instance, 0, len(plan.Stop))
	for _, st := range plan.Stop {
		cur := ls.inst[st.ID]
		if cur == nil {
			continue
		}
		in := *cur
		in.Desired = model.DesiredStop
		in.Reason = st.Reason
		if st.Reason == engine.ReasonNodeDown && !in.State.Terminal() {
			setState(&in, model.Lost, st.Reason, now)
		}
		stopped = append(stopped, in)
	}
	b.Instances = append(b.Instances, stopped...)
	plan.Place = keep
	err := ls.s.write(ctx, ls.term, "plan", b)
	if err != nil {
		if errors.Is(err, store.ErrDeposed) {
			ls.s.log.Warn("plan refused: this scheduler's term is over", "term", ls.term, "placements", len(placed), "stops", len(stopped))
			return err
		}
		ls.s.log.Warn("writing the plan (replanned next pass)", "err", err)
		return nil
	}
	ls.eng.Apply(plan)
	for i := range placed {
		in := placed[i]
		ls.addInstance(&in)
	}
	for i := range stopped {
		in := stopped[i]
		cur := ls.inst[in.ID]
		*cur = in
		ls.dirty[in.Node] = true
		ls.s.metrics.stops.WithLabelValues(in.Reason).Inc()
	}
	ls.s.metrics.placements.Add(float64(len(placed)))
	return nil
}

func (ls *leaderState) flushHeartbeats(ctx context.Context) error {
	beats := map[string]time.Time{}
	ls.fmu.RLock()
	for name, f := range ls.feeds {
		// only nodes heard from in this term (not the grace given at load)
		if at := time.Unix(0, f.lastSeen.Load()); at.After(ls.started) {
			beats[name] = at
		}
	}
	ls.fmu.RUnlock()
	err := ls.s.store.FlushHeartbeats(ctx, ls.term, beats)
	ls.s.countWrite("heartbeats", err)
	if err != nil && !errors.Is(err, store.ErrDeposed) {
		ls.s.log.Warn("flushing heartbeats", "err", err)
		return nil
	}
	if err != nil {
		return err
	}
	return ls.flushUsage(ctx)
}

// flushUsage writes the resource usage that changed since the last flush
// (instances and nodes, as reported), in one transaction for all nodes.
func (ls *leaderState) flushUsage(ctx context.Context) error {
	if len(ls.usageInst)+len(ls.usageNodes) == 0 {
		return nil
	}
	b := &store.Batch{}
	for name := range ls.usageNodes {
		if n := ls.nodes[name]; n != nil {
			b.Nodes = append(b.Nodes, *n)
		}
	}
	for id := range ls.usageInst {
		if in := ls.inst[id]; in != nil {
			b.Instances = append(b.Instances, *in)
		}
	}
	err := ls.s.write(ctx, ls.term, "usage", b)
	if errors.Is(err, store.ErrDeposed) {
		return err
	}
	if err != nil {
		ls.s.log.Warn("writing resource usage (retried at the next flush)", "err", err)
		return nil
	}
	clear(ls.usageInst)
	clear(ls.usageNodes)
	return nil
}

// publish rebuilds the desired sets of the nodes marked dirty and wakes
// their polls.
func (ls *leaderState) publish() {
	for node := range ls.dirty {
		ls.fmu.RLock()
		f := ls.feeds[node]
		ls.fmu.RUnlock()
		if f == nil {
			continue
		}
		ids := make([]string, 0, len(ls.byNode[node]))
		for id := range ls.byNode[node] {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		version := fmt.Sprintf("%d.%d", ls.term, ls.counter.Add(1))
		set := api.DesiredSet{Version: version, Instances: make([]api.DesiredInstance, 0, len(ids))}
		for _, id := range ids {
			in := ls.inst[id]
			vs, ok := ls.versionSpec(in.App, in.Version)
			if !ok {
				ls.s.log.Error("instance of an unknown app version: left out of its node's set", "instance", id, "app", in.App, "version", in.Version)
				continue
			}
			set.Instances = append(set.Instances, ls.desiredInstance(in, vs))
		}
		body, _ := json.Marshal(set)
		f.mu.Lock()
		f.version, f.body = version, body
		close(f.changed)
		f.changed = make(chan struct{})
		f.mu.Unlock()
	}
	clear(ls.dirty)
}

func (ls *leaderState) desiredInstance(in *model.Instance, vs versionSpec) api.DesiredInstance {
	sp := vs.spec
	d := api.DesiredInstance{
		ID: in.ID, App: in.App, Version: in.Version, Image: ls.s.images.Pinned(sp.Image, vs.digest),
		Command: sp.Command, Args: sp.Args, Env: sp.Env, Resources: sp.Resources, MemoryLimit: sp.MemoryLimit,
		CPULimit: int64(sp.CPULimit), DiskIOPS: sp.DiskIOPS, CPUSet: sp.CPUSet, VolumePath: sp.VolumePath,
		Health: sp.Health, Restart: sp.Restart, Priority: sp.Priority, Desired: in.Desired,
		Canary: isCanary(ls.apps[in.App], in),
	}
	if d.Desired == "" {
		d.Desired = model.DesiredRun
	}
	for _, p := range sp.Ports {
		if hp, ok := in.HostPorts[p.Name]; ok {
			p.HostPort = hp
		}
		d.Ports = append(d.Ports, p)
	}
	return d
}

// isCanary: the instance is one of its app's canaries, an instance at the
// app's current version while that version is under a canary update
// (spec.update.canary > 0, not the first version) not yet promoted.
func isCanary(a *model.App, in *model.Instance) bool {
	if a == nil {
		return false
	}
	c := canaryInputs(a)
	return c.canary > 0 && !c.promoted && c.version > 1 && in.Version == c.version
}

// canaryState is what decides which of an app's instances are canaries.
type canaryState struct {
	canary   int
	promoted bool
	version  int64
}

func canaryInputs(a *model.App) canaryState {
	return canaryState{a.Spec.Update.Canary, a.Promoted, a.Version}
}

// republishApp marks dirty the nodes of the app's live instances (their
// desired sets are sent again: which are canaries changed).
func (ls *leaderState) republishApp(app string) {
	for _, in := range ls.inst {
		if in.App == app && in.Node != "" {
			ls.dirty[in.Node] = true
		}
	}
}

// versionSpec is the spec an instance of app at version runs (from the
// store when not in memory).
func (ls *leaderState) versionSpec(app string, version int64) (versionSpec, bool) {
	k := versionKey{app, version}
	if vs, ok := ls.specs[k]; ok {
		return vs, true
	}
	v, err := ls.s.store.Version(ls.ctx, app, version)
	if err != nil {
		return versionSpec{}, false
	}
	vs := versionSpec{v.Spec, v.Digest}
	ls.specs[k] = vs
	return vs, true
}
