package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/errdefs"
	consul "github.com/hashicorp/consul/api"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// instance supervises one desired instance: pull, create (or adopt),
// start, health checks, Consul registration, the restart policy, and at
// the end a graceful stop and removal. Its goroutine returns leaving the
// container running when the agent's context ends (shutdown), and stops
// and removes it when requestStop is called.
type instance struct {
	a        *Agent
	d        DesiredInstance
	hash     string
	adopt    string // container to adopt, "" to create one
	stop     chan struct{}
	stopOnce sync.Once
	finished chan struct{}
	// assigned is when the desired set that asked for the instance
	// arrived (zero for an adopted container): gaia_nodeagent_start_seconds
	// is observed from it when the instance is first healthy.
	assigned time.Time
	pulled   bool // its start waited for a pull (the image was not on the node)

	mu          sync.Mutex
	state       model.InstanceState
	reason      string
	exitCode    int
	restarts    int
	pull        *Pull
	containerID string
	registered  bool
	canary      bool // tagged canary in Consul (d.Canary as last sent)
	usage       resource.Vector
	net         model.NetCounters // from enforcement's traffic classes
	lastSample  *usageSample
	reclaimed   string // EMC's reason, when it picked this instance
}

func (in *instance) requestStop() { in.stopOnce.Do(func() { close(in.stop) }) }

func (in *instance) stopped() bool {
	select {
	case <-in.stop:
		return true
	default:
		return false
	}
}

func (in *instance) set(state model.InstanceState, reason string) {
	in.mu.Lock()
	changed := in.state != state || in.reason != reason
	in.state, in.reason = state, reason
	in.mu.Unlock()
	if changed {
		in.a.o.Log.Debug("instance state", "instance", in.d.ID, "state", state, "reason", reason)
		in.a.changed()
	}
}

func (in *instance) report() InstanceReport {
	in.mu.Lock()
	defer in.mu.Unlock()
	r := InstanceReport{ID: in.d.ID, State: in.state, Reason: in.reason, ExitCode: in.exitCode, Restarts: in.restarts}
	if in.state == model.Running || in.state == model.Healthy {
		r.Usage, r.Net = in.usage, in.net
	}
	if in.state == model.Pulling && in.pull != nil {
		done, total, attempt, lastErr := in.pull.Progress()
		// Nothing to count before dockerd has the manifest (or while the
		// registry is unreachable).
		r.Reason = "pulling"
		if total > 0 {
			r.Reason = fmt.Sprintf("pulling %d%% (%s of %s)", done*100/total, human(done), human(total))
		}
		if attempt > 1 && lastErr != nil {
			r.Reason += fmt.Sprintf(", attempt %d after: %v", attempt, lastErr)
		}
	}
	return r
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// run is the instance's supervisor.
func (in *instance) run(ctx context.Context) {
	defer close(in.finished)
	id := in.adopt
	if id == "" {
		var ok bool
		if id, ok = in.create(ctx); !ok {
			in.end(ctx, "")
			return
		}
	}
	in.mu.Lock()
	in.containerID = id
	in.mu.Unlock()
	in.supervise(ctx, id)
}

// end waits, after a failure, for the stop request (or the agent's
// shutdown), then removes the container if there is one.
func (in *instance) end(ctx context.Context, id string) {
	select {
	case <-in.stop:
		in.teardown(ctx, id)
	case <-ctx.Done():
	}
}

// teardown deregisters, stops and removes the container, and reports the
// instance stopped.
func (in *instance) teardown(ctx context.Context, id string) {
	in.mu.Lock()
	st := in.state
	in.mu.Unlock()
	if st != model.Failed {
		in.set(model.Stopping, "")
	}
	timeout := in.a.o.StopTimeout
	if in.d.StopTimeout > 0 {
		timeout = in.d.StopTimeout.D()
	}
	ctx = context.WithoutCancel(ctx)
	if id == "" {
		// A create may have got as far as dockerd: the container of the
		// instance's name, if it is this node's.
		if c, err := in.a.o.Docker.ContainerInspect(ctx, ContainerName(in.d.ID)); err == nil && c.Config != nil &&
			c.Config.Labels[LabelNode] == in.a.o.Node {
			id = c.ID
		}
	}
	var err error
	if id != "" {
		in.unregistered()
		err = in.a.removeContainer(ctx, id, in.d.ID, timeout)
	} else if in.a.o.Consul != nil {
		in.deregister()
	}
	if e := in.a.o.Enforcer; e != nil {
		if eerr := e.Stopped(in.d.ID); eerr != nil {
			in.a.o.Log.Warn("enforcement: releasing the instance failed", "instance", in.d.ID, "err", eerr)
		}
	}
	if st != model.Failed {
		reason := "stopped"
		if err != nil {
			reason = "stopping: " + err.Error()
		}
		in.set(model.Stopped, reason)
	}
	in.a.instanceDone(in)
}

// create pulls the image and creates the container. false: it failed
// (the instance is failed with the reason) or the instance was stopped or
// the agent is shutting down.
func (in *instance) create(ctx context.Context) (string, bool) {
	o := in.a.o
	ref := PullRef(in.d.Image, o.Gateway)
	p := o.Puller.Start(ctx, ref)
	in.mu.Lock()
	in.pull = p
	in.mu.Unlock()
	in.set(model.Pulling, "")
	// Progress is read from the pull when reported; refresh it now and then.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
wait:
	for {
		select {
		case <-p.Done():
			break wait
		case <-in.stop:
			return "", false
		case <-ctx.Done():
			return "", false
		case <-tick.C:
			in.a.changed()
		}
	}
	in.mu.Lock()
	in.pull = nil
	in.mu.Unlock()
	in.pulled = !p.fromDisk
	if err := p.Err(); errors.Is(err, errUnwanted) {
		return "", false // the reconcile that cancelled it stops the instance
	} else if err != nil {
		in.set(model.Failed, fmt.Sprintf("pulling %s: %v", ref, err))
		return "", false
	}
	cfg, hc, err := containerSpec(&in.d, ref, o.Node, o.Address, o.PublishIP)
	if err != nil {
		in.set(model.Failed, err.Error())
		return "", false
	}
	if o.Enforcer != nil {
		c, err := o.Enforcer.Prepare(enforceInstance(&in.d))
		if err != nil {
			in.set(model.Failed, fmt.Sprintf("enforcement: %v", err))
			return "", false
		}
		applyEnforce(hc, c)
		if c.Gate {
			img, err := o.Docker.ImageInspect(ctx, ref)
			if err != nil {
				in.set(model.Failed, fmt.Sprintf("reading the image's command: %v", err))
				return "", false
			}
			var ep, cmd []string
			if img.Config != nil { // nil for an imported rootfs
				ep, cmd = img.Config.Entrypoint, img.Config.Cmd
			}
			gateCommand(cfg, ep, cmd)
			if len(cfg.Cmd) == 0 { // as dockerd refuses it without the gate
				in.set(model.Failed, "no command specified: the image has neither an entrypoint nor a cmd, and the app sets no command")
				return "", false
			}
		}
	}
	in.set(model.Starting, "")
	name := ContainerName(in.d.ID)
	for attempt := 0; ; attempt++ {
		resp, err := o.Docker.ContainerCreate(ctx, cfg, hc, nil, nil, name)
		if err == nil {
			o.Metrics.containerOp.WithLabelValues("create").Inc()
			o.Log.Info("created container", "instance", in.d.ID, "container", short(resp.ID), "image", ref)
			return resp.ID, true
		}
		if ctx.Err() != nil {
			return "", false
		}
		if errdefs.IsConflict(err) && attempt < 3 {
			// A container of that name exists. This node's and of this
			// spec (made by an agent that died before the listing saw
			// it): adopted; this node's of another spec: replaced;
			// another's: left alone, and the instance fails.
			c, ierr := o.Docker.ContainerInspect(ctx, name)
			switch {
			case ierr != nil || c.Config == nil:
				continue // gone meanwhile: create again
			case c.Config.Labels[LabelNode] != o.Node:
				// Not this node's: never touched.
				in.set(model.Failed, fmt.Sprintf("container name %s is taken by a container not of node %s (gaia.node=%q)",
					name, o.Node, c.Config.Labels[LabelNode]))
				return "", false
			case c.Config.Labels[LabelSpec] == in.hash:
				o.Metrics.containerOp.WithLabelValues("adopt").Inc()
				return c.ID, true
			}
			in.a.removeContainer(ctx, c.ID, in.d.ID, in.a.o.StopTimeout) // an older spec of it
			continue
		}
		in.set(model.Failed, fmt.Sprintf("creating the container: %v", err))
		return "", false
	}
}

// supervise keeps the container running under the restart policy until
// the instance is stopped (then it is removed) or the agent shuts down
// (then it is left running).
func (in *instance) supervise(ctx context.Context, id string) {
	o := in.a.o
	var restartsAt []time.Time
	for {
		c, err := o.Docker.ContainerInspect(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errdefs.IsNotFound(err) {
				in.set(model.Failed, "the container disappeared")
			} else {
				in.set(model.Failed, fmt.Sprintf("inspecting the container: %v", err))
			}
			in.end(ctx, id)
			return
		}
		gate := gateDir(c)
		if c.State == nil || !c.State.Running {
			in.set(model.Starting, "")
			err := closeGate(gate)
			if err == nil {
				err = o.Docker.ContainerStart(ctx, id, container.StartOptions{})
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				in.set(model.Failed, fmt.Sprintf("starting the container: %v", err))
				in.end(ctx, id)
				return
			}
			o.Metrics.containerOp.WithLabelValues("start").Inc()
		}
		in.afterStart(ctx, id, gate) // also for an adopted container an agent left in its gate
		in.set(model.Running, "")
		in.register()
		code, how := in.watch(ctx, id)
		switch how {
		case watchShutdown:
			return
		case watchStop:
			in.teardown(ctx, id)
			return
		}
		// The container exited.
		in.deregister()
		reason := fmt.Sprintf("exited with code %d", code)
		if c, err := o.Docker.ContainerInspect(ctx, id); err == nil && c.State != nil {
			if c.State.OOMKilled {
				reason += " (killed: out of memory)"
			} else if c.State.Error != "" {
				reason += ": " + c.State.Error
			}
		}
		in.mu.Lock()
		in.exitCode = code
		reclaimed := in.reclaimed
		in.reclaimed = ""
		in.mu.Unlock()
		if reclaimed != "" { // EMC stopped it: not restarted here
			in.set(model.Failed, reclaimed)
			in.end(ctx, id)
			return
		}
		pol := in.d.Restart
		now := time.Now()
		if pol.Interval > 0 {
			kept := restartsAt[:0]
			for _, t := range restartsAt {
				if now.Sub(t) < pol.Interval.D() {
					kept = append(kept, t)
				}
			}
			restartsAt = kept
		}
		if len(restartsAt) >= pol.Attempts {
			in.set(model.Failed, fmt.Sprintf("%s; %d restarts within %s: giving up", reason, len(restartsAt), pol.Interval))
			o.Log.Warn("instance failed", "instance", in.d.ID, "exitCode", code, "restarts", len(restartsAt))
			in.end(ctx, id)
			return
		}
		backoff := pol.Backoff
		if backoff < 1 {
			backoff = 1
		}
		delay := time.Duration(float64(pol.Delay.D()) * math.Pow(backoff, float64(len(restartsAt))))
		in.set(model.Starting, fmt.Sprintf("%s; restart %d of %d in %s", reason, len(restartsAt)+1, pol.Attempts, delay))
		select {
		case <-time.After(delay):
		case <-in.stop:
			in.teardown(ctx, id)
			return
		case <-ctx.Done():
			return
		}
		restartsAt = append(restartsAt, time.Now())
		in.mu.Lock()
		in.restarts++
		in.mu.Unlock()
		o.Metrics.containerOp.WithLabelValues("restart").Inc()
	}
}

type watchEnd int

const (
	watchExit watchEnd = iota
	watchStop
	watchShutdown
)

// watch waits for the running container to exit, running the health
// checks meanwhile; it answers the exit code.
func (in *instance) watch(ctx context.Context, id string) (int, watchEnd) {
	o := in.a.o
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	waitC, errC := o.Docker.ContainerWait(wctx, id, container.WaitConditionNotRunning)
	h := in.d.Health
	var tick <-chan time.Time
	var grace time.Time
	healthy := false
	if h == nil {
		in.set(model.Healthy, "")
		in.started()
	} else {
		grace = time.Now().Add(h.Grace.D())
		// Until it first passes, check often: the instance is healthy as
		// soon as it answers.
		t := time.NewTimer(0)
		defer t.Stop()
		tick = t.C
		checkNext := func() {
			if healthy {
				t.Reset(healthInterval(h))
			} else {
				t.Reset(min(healthInterval(h), 250*time.Millisecond))
			}
		}
		for {
			select {
			case w := <-waitC:
				return int(w.StatusCode), watchExit
			case err := <-errC:
				if code, end, done := in.waitFailed(ctx, id, err); done {
					return code, end
				}
				waitC, errC = o.Docker.ContainerWait(wctx, id, container.WaitConditionNotRunning)
			case <-in.stop:
				return 0, watchStop
			case <-ctx.Done():
				return 0, watchShutdown
			case <-tick:
				err := checkHealth(ctx, o.Docker, id, &in.d, o.HealthHost)
				switch {
				case err == nil:
					healthy = true
					in.set(model.Healthy, "")
					in.ttl(true, "")
					in.started()
				case !healthy && time.Now().Before(grace):
				default:
					healthy = false
					in.set(model.Running, "health check failed: "+err.Error())
					in.ttl(false, err.Error())
				}
				checkNext()
			}
		}
	}
	for {
		select {
		case w := <-waitC:
			return int(w.StatusCode), watchExit
		case err := <-errC:
			if code, end, done := in.waitFailed(ctx, id, err); done {
				return code, end
			}
			waitC, errC = o.Docker.ContainerWait(wctx, id, container.WaitConditionNotRunning)
		case <-in.stop:
			return 0, watchStop
		case <-ctx.Done():
			return 0, watchShutdown
		}
	}
}

// started observes the instance's start latency the first time it is
// healthy (registered in Consul already: supervise registers it before
// watching), never again after a restart or for an adopted container.
func (in *instance) started() {
	if in.assigned.IsZero() {
		return
	}
	took := time.Since(in.assigned)
	in.assigned = time.Time{}
	image := "present"
	if in.pulled {
		image = "pulled"
	}
	in.a.o.Metrics.startSecs.WithLabelValues(image).Observe(took.Seconds())
	in.a.o.Log.Info("instance started", "instance", in.d.ID, "image", image, "seconds", took.Seconds())
}

// waitFailed handles a ContainerWait that broke off (dockerd restarted,
// a connection dropped): done with the exit code when the container is
// not running, else the wait is to be made again.
func (in *instance) waitFailed(ctx context.Context, id string, err error) (int, watchEnd, bool) {
	if ctx.Err() != nil {
		return 0, watchShutdown, true
	}
	if in.stopped() {
		return 0, watchStop, true
	}
	in.a.o.Log.Warn("waiting for the container broke off", "instance", in.d.ID, "err", err)
	select {
	case <-time.After(in.a.o.RetryInterval):
	case <-ctx.Done():
		return 0, watchShutdown, true
	case <-in.stop:
		return 0, watchStop, true
	}
	c, ierr := in.a.o.Docker.ContainerInspect(ctx, id)
	if ierr != nil {
		if errdefs.IsNotFound(ierr) {
			return -1, watchExit, true
		}
		return 0, 0, false
	}
	if c.State != nil && !c.State.Running {
		return c.State.ExitCode, watchExit, true
	}
	return 0, 0, false
}

func (in *instance) register() {
	o := in.a.o
	if o.Consul == nil {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if err := in.registerLocked(); err != nil {
		o.Log.Warn("registering in Consul failed", "instance", in.d.ID, "err", err)
		return
	}
	in.registered = true
}

// registerLocked registers the instance in Consul as it is now (canary
// or not); in.mu is held, so that an unregister (which clears registered
// first) is never overtaken by it.
func (in *instance) registerLocked() error {
	d := in.d
	d.Canary = in.canary
	return in.a.o.Consul.Agent().ServiceRegister(serviceRegistration(&d, in.a.o.Node, in.a.o.Address))
}

// registerAgain registers the instance again (Consul lost its entry)
// unless it was deregistered since it was found registered.
func (in *instance) registerAgain() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.registered || in.stopped() {
		return
	}
	in.a.o.Log.Info("registering again in Consul", "instance", in.d.ID)
	if err := in.registerLocked(); err != nil {
		in.a.o.Log.Warn("registering in Consul failed", "instance", in.d.ID, "err", err)
	}
}

// setCanary records whether the scheduler calls the instance a canary and,
// when that changed while it is registered, registers it again with its
// new tags (same service ID: Consul updates the entry in place).
func (in *instance) setCanary(canary bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.canary == canary {
		return
	}
	in.canary = canary
	if !in.registered || in.stopped() || in.a.o.Consul == nil {
		return
	}
	if err := in.registerLocked(); err != nil {
		in.a.o.Log.Warn("re-tagging in Consul failed", "instance", in.d.ID, "canary", canary, "err", err)
		return
	}
	in.a.o.Log.Info("re-tagged in Consul", "instance", in.d.ID, "canary", canary)
}

// unregistered clears registered before the Consul entry goes, so that a
// re-tag (setCanary) does not register it again.
func (in *instance) unregistered() {
	in.mu.Lock()
	in.registered = false
	in.mu.Unlock()
}

func (in *instance) deregister() {
	o := in.a.o
	if o.Consul == nil {
		return
	}
	in.unregistered()
	if err := o.Consul.Agent().ServiceDeregister(in.d.ID); err != nil && !notRegistered(err) {
		o.Log.Warn("deregistering from Consul failed", "instance", in.d.ID, "err", err)
	}
}

// ttl passes or fails an exec-checked instance's TTL check in Consul.
func (in *instance) ttl(pass bool, output string) {
	o := in.a.o
	if o.Consul == nil || in.d.Health == nil || in.d.Health.Type != model.HealthExec {
		return
	}
	status := consul.HealthPassing
	if !pass {
		status = consul.HealthCritical
	}
	if err := o.Consul.Agent().UpdateTTL(ttlCheckID(in.d.ID), output, status); err != nil {
		o.Log.Warn("updating the TTL check failed", "instance", in.d.ID, "err", err)
	}
}
