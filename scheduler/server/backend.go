package server

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
	"github.com/gaia-registry/gaia/scheduler/store"
)

// The leader's side of the API (api.Backend). Every write is fenced by
// the term; memory and the engine change only after it committed.

func (s *Server) leading() (*leaderState, error) {
	ls := s.cur.Load()
	if ls == nil {
		return nil, api.NotLeader("this scheduler does not lead (any more): retry")
	}
	return ls, nil
}

// locked runs f under the leader's lock, then wakes the loop.
func (s *Server) locked(f func(ls *leaderState) error) error {
	ls, err := s.leading()
	if err != nil {
		return err
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if s.cur.Load() != ls {
		return api.NotLeader("this scheduler stepped down: retry")
	}
	err = f(ls)
	if errors.Is(err, store.ErrDeposed) {
		s.stepDown(ls)
	}
	ls.poke()
	return err
}

// PutPool creates (create) or replaces a pool.
func (s *Server) PutPool(ctx context.Context, p model.Pool, create bool) (*model.Pool, error) {
	if err := s.fileOwns(p.Name); err != nil {
		return nil, err
	}
	err := s.locked(func(ls *leaderState) error {
		if _, ok := ls.pools[p.Name]; ok && create {
			return api.Conflict("name", "pool %q already exists", p.Name)
		}
		if parent := p.Parent(); parent != "" && ls.pools[parent] == nil {
			return api.Invalid("name", "parent pool %q does not exist: create it first", parent)
		}
		if parent := p.Parent(); parent != "" {
			for _, a := range ls.apps {
				if a.Spec.Pool == parent {
					return api.Conflict("name", "parent pool %q holds apps (%s): apps live in leaf pools", parent, a.Name())
				}
			}
		}
		if err := s.write(ctx, ls.term, "pool", &store.Batch{Pools: []model.Pool{p}}); err != nil {
			return err
		}
		ls.pools[p.Name] = &p
		ls.eng.UpsertPool(p)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// DeletePool removes an empty leaf pool.
func (s *Server) DeletePool(ctx context.Context, name string) error {
	if err := s.fileOwns(name); err != nil {
		return err
	}
	return s.locked(func(ls *leaderState) error {
		if ls.pools[name] == nil {
			return api.NotFound("no pool %q", name)
		}
		if name == model.RootPool {
			return api.Conflict("name", "root always exists")
		}
		for child := range ls.pools {
			if model.ParentPool(child) == name {
				return api.Conflict("name", "pool %q has child pool %q", name, child)
			}
		}
		for _, a := range ls.apps {
			if a.Spec.Pool == name {
				return api.Conflict("name", "pool %q holds app %q", name, a.Name())
			}
		}
		if err := s.write(ctx, ls.term, "pool", &store.Batch{DeletePools: []string{name}}); err != nil {
			return err
		}
		delete(ls.pools, name)
		ls.eng.RemovePool(name)
		return nil
	})
}

// checkPlacement refuses a spec that could never run: its pool must be an
// existing leaf, and some node must fit one instance.
func (ls *leaderState) checkPlacement(spec model.AppSpec) error {
	pool := ls.pools[spec.Pool]
	if pool == nil {
		return api.Invalid("pool", "no pool %q: create it first (gaiactl pool create)", spec.Pool)
	}
	for child := range ls.pools {
		if model.ParentPool(child) == spec.Pool {
			return api.Invalid("pool", "pool %q has child pools (%s): apps live in leaf pools", spec.Pool, child)
		}
	}
	for d := range resource.Dims {
		if max := pool.Max[d]; max > 0 && spec.Resources[d] > max {
			return api.Invalid("resources."+resource.Dim(d).String(), "%s per instance exceeds pool %s's max of %s",
				resource.Format(resource.Dim(d), spec.Resources[d]), spec.Pool, resource.Format(resource.Dim(d), max))
		}
	}
	if ok, why := ls.eng.CanFit(spec); !ok {
		field := "resources"
		if strings.Contains(why, "constraint") {
			field = "constraints"
		}
		return api.Invalid(field, "no node can ever fit one instance: %s", why)
	}
	return nil
}

// SubmitApp creates an app at version 1.
func (s *Server) SubmitApp(ctx context.Context, spec model.AppSpec) (*model.App, error) {
	if err := s.precheck(func(ls *leaderState) error {
		if a := ls.apps[spec.Name]; a != nil {
			return api.Conflict("name", "app %q already exists in pool %q", a.Name(), a.Spec.Pool)
		}
		return ls.checkPlacement(spec)
	}); err != nil {
		return nil, err
	}
	digest, err := s.images.Resolve(ctx, spec.Image)
	if err != nil {
		return nil, err
	}
	var out model.App
	err = s.locked(func(ls *leaderState) error {
		if a := ls.apps[spec.Name]; a != nil {
			return api.Conflict("name", "app %q already exists in pool %q", a.Name(), a.Spec.Pool)
		}
		if err := ls.checkPlacement(spec); err != nil {
			return err
		}
		now := time.Now().UTC()
		app := model.App{Spec: spec, Version: 1, Digest: digest, State: model.AppRunning, CreatedAt: now, UpdatedAt: now}
		err := s.store.CreateApp(ctx, ls.term, app)
		s.countWrite("app", err)
		var ee *store.ExistsError
		if errors.As(err, &ee) {
			return api.Conflict("name", "app %q already exists in pool %q", ee.Name, ee.Pool)
		}
		if err != nil {
			return err
		}
		ls.setApp(app)
		out = app
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// precheck runs the cheap checks before a slow step (image resolution)
// so that a clash or an unknown pool is reported without it.
func (s *Server) precheck(f func(ls *leaderState) error) error {
	ls, err := s.leading()
	if err != nil {
		return err
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return f(ls)
}

func (ls *leaderState) setApp(a model.App) {
	ls.apps[a.Name()] = &a
	ls.specs[versionKey{a.Name(), a.Version}] = versionSpec{a.Spec, a.Digest}
	ls.eng.UpsertApp(a)
}

// change applies f to a copy of the app and writes it (a new version in
// the history when newVersion).
func (s *Server) change(ctx context.Context, name string, newVersion bool, f func(ls *leaderState, a *model.App) error) (*model.App, error) {
	var out *model.App
	err := s.locked(func(ls *leaderState) error {
		var err error
		out, err = ls.changeApp(ctx, name, newVersion, func(a *model.App) error { return f(ls, a) })
		return err
	})
	return out, err
}

// changeApp is change with ls.mu held. A new version starts with the
// previous one's number + 1, not promoted, and no rollback marks; f sees
// it that way.
func (ls *leaderState) changeApp(ctx context.Context, name string, newVersion bool, f func(a *model.App) error) (*model.App, error) {
	cur := ls.apps[name]
	if cur == nil {
		return nil, api.NotFound("no app %q", name)
	}
	a := *cur
	if newVersion {
		a.Version, a.Promoted, a.Same, a.Rollback = cur.Version+1, false, nil, nil
	}
	if err := f(&a); err != nil {
		return nil, err
	}
	// any change by the app's users (or a rollback) ends a back-off
	resetBackoff(&a)
	delete(ls.healthy, name)
	a.UpdatedAt = time.Now().UTC()
	b := &store.Batch{Apps: []model.App{a}}
	if newVersion {
		a.VersionAt = a.UpdatedAt
		b = &store.Batch{Apps: []model.App{a}, NewVersions: []model.App{a}}
	}
	if err := ls.s.write(ctx, ls.term, "app", b); err != nil {
		return nil, err
	}
	if canaryInputs(cur) != canaryInputs(&a) {
		ls.republishApp(name)
	}
	ls.setApp(a)
	if newVersion {
		ls.watchRollout(&a)
	}
	return &a, nil
}

// rollbackTo makes an earlier version's spec and image those of a (the
// new version being made from cur), keeping the instance count. The
// instances still on that version (or one it was the same as) are not
// replaced, and no canary step holds the rollback back.
func (ls *leaderState) rollbackTo(ctx context.Context, cur, a *model.App, version int64, auto bool, reason string) error {
	name := cur.Name()
	if version < 1 || version >= cur.Version {
		return api.Invalid("version", "%d is not an earlier version of %s (1..%d)", version, name, cur.Version-1)
	}
	v, err := ls.s.store.Version(ctx, name, version)
	if errors.Is(err, store.ErrNotFound) {
		return api.Invalid("version", "app %s has no version %d", name, version)
	}
	if err != nil {
		return err
	}
	instances := a.Spec.Instances
	a.Spec, a.Digest = v.Spec, v.Digest
	a.Spec.Instances = instances
	a.Promoted = true
	a.Same = []int64{version}
	// Other versions that ran the same spec (a rollback of a rollback)
	// are found through the instances still running them.
	for _, in := range ls.inst {
		if in.App == name && in.Version != version && in.Version < cur.Version && ls.sameSpec(name, in.Version, v.Spec, v.Digest) {
			a.Same = append(a.Same, in.Version)
		}
	}
	slices.Sort(a.Same)
	a.Same = slices.Compact(a.Same)
	a.Rollback = &model.Rollback{From: cur.Version, To: version, Auto: auto, Reason: reason, At: time.Now().UTC()}
	return nil
}

// sameSpec reports whether app's version v ran spec and digest (the
// instance count aside), from the versions instances run.
func (ls *leaderState) sameSpec(app string, v int64, spec model.AppSpec, digest string) bool {
	vs, ok := ls.specs[versionKey{app, v}]
	if !ok || vs.digest != digest {
		return false
	}
	a, b := vs.spec, spec
	a.Instances, b.Instances = 0, 0
	return reflect.DeepEqual(a, b)
}

// UpdateApp makes the spec the app's next version (image resolved anew).
func (s *Server) UpdateApp(ctx context.Context, name string, spec model.AppSpec) (*model.App, error) {
	if err := s.precheck(func(ls *leaderState) error {
		a := ls.apps[name]
		if a == nil {
			return api.NotFound("no app %q", name)
		}
		if spec.Pool != a.Spec.Pool {
			return api.Invalid("pool", "an app cannot move from pool %q to %q: delete it and submit it there", a.Spec.Pool, spec.Pool)
		}
		return ls.checkPlacement(spec)
	}); err != nil {
		return nil, err
	}
	digest, err := s.images.Resolve(ctx, spec.Image)
	if err != nil {
		return nil, err
	}
	return s.change(ctx, name, true, func(ls *leaderState, a *model.App) error {
		if spec.Pool != a.Spec.Pool {
			return api.Invalid("pool", "an app cannot move from pool %q to %q", a.Spec.Pool, spec.Pool)
		}
		a.Spec, a.Digest = spec, digest
		return nil
	})
}

// ScaleApp sets the number of instances (not a new version: instances
// already running keep running).
func (s *Server) ScaleApp(ctx context.Context, name string, n int) (*model.App, error) {
	return s.change(ctx, name, false, func(ls *leaderState, a *model.App) error {
		a.Spec.Instances = n
		return nil
	})
}

// AppAction is restart (a new version of the same spec: a rolling
// replacement), promote, stop and start.
func (s *Server) AppAction(ctx context.Context, name, action string) (*model.App, error) {
	switch action {
	case "restart":
		return s.change(ctx, name, true, func(ls *leaderState, a *model.App) error { return nil })
	case "promote":
		return s.change(ctx, name, false, func(ls *leaderState, a *model.App) error {
			a.Promoted = true
			return nil
		})
	case "stop":
		return s.change(ctx, name, false, func(ls *leaderState, a *model.App) error {
			a.State = model.AppStopped
			return nil
		})
	case "start":
		return s.change(ctx, name, false, func(ls *leaderState, a *model.App) error {
			a.State = model.AppRunning
			return nil
		})
	}
	return nil, api.NotFound("no app action %q", action)
}

// RollbackApp makes an earlier version's spec (and digest) the next
// version; version 0 is the one before the current.
func (s *Server) RollbackApp(ctx context.Context, name string, version int64) (*model.App, error) {
	var out *model.App
	err := s.locked(func(ls *leaderState) error {
		cur := ls.apps[name]
		if cur == nil {
			return api.NotFound("no app %q", name)
		}
		if version == 0 {
			version = cur.Version - 1
		}
		var err error
		out, err = ls.changeApp(ctx, name, true, func(a *model.App) error {
			return ls.rollbackTo(ctx, cur, a, version, false, "rolled back by request")
		})
		return err
	})
	return out, err
}

// DeleteApp removes the app; its instances are told to stop.
func (s *Server) DeleteApp(ctx context.Context, name string) error {
	return s.locked(func(ls *leaderState) error {
		if ls.apps[name] == nil {
			return api.NotFound("no app %q", name)
		}
		b := &store.Batch{DeleteApps: []string{name}}
		var stop []*model.Instance
		for _, in := range ls.inst {
			if in.App == name && in.Desired != model.DesiredStop {
				c := *in
				c.Desired, c.Reason = model.DesiredStop, "app deleted"
				b.Instances = append(b.Instances, c)
				stop = append(stop, in)
			}
		}
		if err := s.write(ctx, ls.term, "app", b); err != nil {
			return err
		}
		for _, in := range stop {
			in.Desired, in.Reason = model.DesiredStop, "app deleted"
			ls.eng.RemoveInstance(in.ID)
			ls.dirty[in.Node] = true
		}
		delete(ls.apps, name)
		delete(ls.unplaced, name)
		delete(ls.healthy, name)
		delete(ls.pendingApps, name)
		ls.eng.RemoveApp(name)
		return nil
	})
}

// StopInstance tells one instance to stop; the app gets a replacement.
func (s *Server) StopInstance(ctx context.Context, id string) error {
	return s.locked(func(ls *leaderState) error {
		in := ls.inst[id]
		if in == nil {
			return api.NotFound("instance %q is not running", id)
		}
		c := *in
		c.Desired, c.Reason = model.DesiredStop, "stopped by user"
		if err := s.write(ctx, ls.term, "instance", &store.Batch{Instances: []model.Instance{c}}); err != nil {
			return err
		}
		*in = c
		if !in.State.Terminal() {
			ls.eng.UpsertInstance(*in)
		}
		ls.dirty[in.Node] = true
		return nil
	})
}

// DrainNode marks a node draining: the engine moves its instances off.
func (s *Server) DrainNode(ctx context.Context, name string) (*model.Node, error) {
	var out model.Node
	err := s.locked(func(ls *leaderState) error {
		n := ls.nodes[name]
		if n == nil {
			return api.NotFound("no node %q", name)
		}
		c := *n
		if c.State != model.NodeDown {
			c.State = model.NodeDraining
		}
		if err := s.write(ctx, ls.term, "node", &store.Batch{Nodes: []model.Node{c}}); err != nil {
			return err
		}
		*n = c
		ls.eng.UpsertNode(c)
		out = c
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// RegisterNode records a node (again: its state is kept when draining).
func (s *Server) RegisterNode(ctx context.Context, n model.Node) (*api.RegisterResponse, error) {
	err := s.locked(func(ls *leaderState) error {
		now := time.Now().UTC()
		n.Usage = resource.Vector{} // usage comes in reports
		if old := ls.nodes[n.Name]; old != nil {
			n.Usage = old.Usage
			if old.State == model.NodeDraining {
				n.State = model.NodeDraining
			}
		}
		n.LastHeartbeat = now
		if err := s.write(ctx, ls.term, "node", &store.Batch{Nodes: []model.Node{n}}); err != nil {
			return err
		}
		ls.nodes[n.Name] = &n
		ls.eng.UpsertNode(n)
		ls.fmu.Lock()
		f := ls.feeds[n.Name]
		if f == nil {
			f = newFeed(now)
			ls.feeds[n.Name] = f
		}
		ls.fmu.Unlock()
		f.lastSeen.Store(now.UnixNano())
		ls.dirty[n.Name] = true
		ls.publish()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &api.RegisterResponse{NodeID: n.Name, PollInterval: model.Duration(s.cfg.Scheduler.PollInterval)}, nil
}

func (ls *leaderState) feed(node string) *feed {
	ls.fmu.RLock()
	defer ls.fmu.RUnlock()
	return ls.feeds[node]
}

// Desired serves a node's long-poll from memory: no database work.
func (s *Server) Desired(ctx context.Context, node, version string, wait time.Duration) ([]byte, bool, error) {
	ls, err := s.leading()
	if err != nil {
		return nil, false, err
	}
	f := ls.feed(node)
	if f == nil {
		return nil, false, api.NotFound("node %q is not registered with this leader: register first", node)
	}
	f.lastSeen.Store(time.Now().UnixNano())
	f.mu.Lock()
	body, cur, changed := f.body, f.version, f.changed
	f.mu.Unlock()
	if cur != version && body != nil {
		s.metrics.polls.WithLabelValues("changed").Inc()
		return body, true, nil
	}
	f.waiting.Add(1)
	defer func() {
		f.waiting.Add(-1)
		f.lastSeen.Store(time.Now().UnixNano())
	}()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-changed:
		f.mu.Lock()
		body = f.body
		f.mu.Unlock()
		s.metrics.polls.WithLabelValues("changed").Inc()
		return body, true, nil
	case <-t.C:
	case <-ctx.Done():
	case <-ls.ctx.Done():
	case <-s.stopping:
	}
	s.metrics.polls.WithLabelValues("idle").Inc()
	return nil, false, nil
}

// Report queues a node's report for the loop's next pass (written only
// if something changed).
func (s *Server) Report(ctx context.Context, node string, r *api.Report) error {
	ls, err := s.leading()
	if err != nil {
		return err
	}
	f := ls.feed(node)
	if f == nil {
		return api.NotFound("node %q is not registered with this leader: register first", node)
	}
	f.lastSeen.Store(time.Now().UnixNano())
	s.metrics.reports.Inc()
	ls.rmu.Lock()
	ls.reports[node] = r
	ls.rmu.Unlock()
	ls.poke()
	return nil
}

// watchRollout starts watching a new version of a for auto-rollback
// (update.autoRollback; never a rollback's version: rolling it back would
// return to the version that was rolled back), or stops.
func (ls *leaderState) watchRollout(a *model.App) {
	if a.Spec.Update.AutoRollback && a.Version > 1 && a.Rollback == nil && !a.VersionAt.IsZero() {
		ls.rollouts[a.Name()] = a.VersionAt
	} else {
		delete(ls.rollouts, a.Name())
	}
}

// rolloutProgress is where a watched new version stands.
type rolloutProgress struct {
	failed    *model.Instance // an instance of the new version that failed
	unhealthy *model.Instance // one not (yet) healthy
	current   int             // live instances of the new version
	healthy   int             // of which healthy
	older     int             // live instances of older versions
}

// healthy: the instance passes its health check, or runs when it has
// none.
func healthy(in *model.Instance, a *model.App) bool {
	return in.State == model.Healthy || (in.State == model.Running && a.Spec.Health == nil)
}

// rolloutVerdict says why a watched version must be rolled back ("":
// not now), or that its rollout is done.
func rolloutVerdict(a *model.App, p *rolloutProgress, started, now time.Time) (reason string, done bool) {
	deadline := a.Spec.Update.EffectiveHealthyDeadline()
	switch {
	case p.failed != nil:
		return fmt.Sprintf("instance %s of version %d failed (%s)", p.failed.ID, a.Version, p.failed.Reason), false
	case p.unhealthy != nil:
		return fmt.Sprintf("instance %s of version %d was still %s %s after it was placed (healthyDeadline %s)",
			p.unhealthy.ID, a.Version, p.unhealthy.State, now.Sub(p.unhealthy.Transitions[0].At).Round(time.Second), deadline), false
	case a.Status.Unplaced != "" && now.Sub(started) > deadline:
		return fmt.Sprintf("version %d's instances not placed %s after the update (healthyDeadline %s): %s",
			a.Version, now.Sub(started).Round(time.Second), deadline, a.Status.Unplaced), false
	}
	return "", p.older == 0 && p.current >= a.Spec.Instances && p.healthy == p.current
}

// checkRollouts rolls back each watched new version one of whose
// instances failed, or whose instances are not all healthy within
// update.healthyDeadline, to the version before it; a version
// whose instances are all healthy and alone is no longer watched. It runs
// after the reports were applied and before they are written (a failed
// instance leaves the live set when written).
func (ls *leaderState) checkRollouts(ctx context.Context, now time.Time) error {
	if len(ls.rollouts) == 0 {
		return nil
	}
	prog := make(map[string]*rolloutProgress, len(ls.rollouts))
	for name := range ls.rollouts {
		prog[name] = &rolloutProgress{}
	}
	for _, in := range ls.inst {
		p := prog[in.App]
		if p == nil || in.Stopping() && in.State != model.Failed {
			continue
		}
		a := ls.apps[in.App]
		switch {
		case !a.Current(in.Version):
			if !in.State.Terminal() {
				p.older++
			}
		case in.State == model.Failed:
			p.failed = in
		case !healthy(in, a):
			// Unhealthy longer than the deadline since it was placed (each
			// instance its own: a long rolling update is not late).
			if len(in.Transitions) > 0 && now.Sub(in.Transitions[0].At) > a.Spec.Update.EffectiveHealthyDeadline() {
				p.unhealthy = in
			}
			p.current++
		default:
			p.current++
			p.healthy++
		}
	}
	for _, name := range sortedKeys(ls.rollouts) {
		started := ls.rollouts[name]
		a, p := ls.apps[name], prog[name]
		if a == nil || a.State != model.AppRunning {
			delete(ls.rollouts, name)
			continue
		}
		reason, done := rolloutVerdict(a, p, started, now)
		if done {
			delete(ls.rollouts, name) // every instance on the new version and healthy
			continue
		}
		if reason == "" {
			continue
		}
		to := a.Version - 1 // the version before (which instances still run may depend on the rollout's order)
		cur := a
		_, err := ls.changeApp(ctx, name, true, func(n *model.App) error {
			return ls.rollbackTo(ctx, cur, n, to, true, reason)
		})
		delete(ls.rollouts, name)
		if errors.Is(err, store.ErrDeposed) {
			return err
		}
		if err != nil {
			ls.s.log.Error("automatic rollback failed", "app", name, "from", cur.Version, "to", to, "reason", reason, "err", err)
			continue
		}
		ls.s.metrics.autoRollbacks.Inc()
		ls.s.log.Warn("automatic rollback", "app", name, "from", cur.Version, "to", to, "reason", reason)
	}
	return nil
}
