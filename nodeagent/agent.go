package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	consul "github.com/hashicorp/consul/api"

	"github.com/gaia-registry/gaia/nodeagent/enforce"
	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// Options configure an Agent.
type Options struct {
	Node     string
	IDC      string
	Labels   map[string]string
	Address  string // the node's address: GAIA_HOST_IP and the Consul service address
	Capacity resource.Vector
	Reserved resource.Vector

	Docker    client.APIClient
	Scheduler Scheduler
	Consul    *consul.Client // nil: instances are not registered in Consul
	Puller    *Puller
	Gateway   string // registry host[:port] images are pulled from ("" : as named)

	PublishIP      string        // host address ports are published on (default 0.0.0.0)
	HealthHost     string        // address the agent's tcp/http checks connect to (default PublishIP, 127.0.0.1 when that is 0.0.0.0)
	StopTimeout    time.Duration // graceful stop before SIGKILL (default 10s)
	PollWait       time.Duration // long-poll wait (default 30s; the scheduler's pollInterval wins)
	ReportInterval time.Duration // a report at least this often (default 10s)
	RetryInterval  time.Duration // after a failed scheduler request (default 2s)
	Resync         time.Duration // reconcile against dockerd at least this often (default 30s)
	UsageInterval  time.Duration // sample the instances' resource usage this often (default 15s)
	DataDir        string        // the image disk: its filesystem's fullness drives image GC
	ImageGCHigh    float64       // percent full of DataDir's filesystem above which unused images are removed (0: never)
	ImageGCLow     float64       // ... until it is at most this full

	// Enforcer enforces every resource dimension on the node (EMC, CPU,
	// disk, disk IO, network; nodeagent/enforce). nil: dockerd's CPU and
	// memory limits only.
	Enforcer enforce.Enforcer
	// WritableLayerLimit evicts an instance whose container's writable
	// layer (dockerd's SizeRw) grows past it, checked with the usage
	// samples (kubelet's ephemeral-storage eviction); 0: not checked. Its
	// data belongs on its volume.
	WritableLayerLimit int64

	Log     *slog.Logger
	Metrics *Metrics
}

// Agent reconciles the node's desired set against dockerd.
type Agent struct {
	o Options

	mu       sync.Mutex
	insts    map[string]*instance      // supervised: desired run
	stopping map[string]*instance      // being stopped and removed
	final    map[string]InstanceReport // ended (stopped) instances, until reported and out of the desired set
	sent     map[string]bool           // final reports the scheduler has had
	lastUsed map[string]time.Time      // image ID → when its last instance here stopped
	gcBusy   bool
	orphans  map[string]bool // container IDs being removed
	ready    bool            // a desired set has been reconciled

	kick    chan struct{} // a report is due
	resched chan struct{} // a reconcile is due (an instance finished stopping)
	wg      sync.WaitGroup
}

// New makes an agent; Run runs it.
func New(o Options) *Agent {
	if o.PublishIP == "" {
		o.PublishIP = "0.0.0.0"
	}
	if o.HealthHost == "" {
		o.HealthHost = "127.0.0.1"
		if ip := net.ParseIP(o.PublishIP); ip != nil && !ip.IsUnspecified() {
			o.HealthHost = o.PublishIP
		}
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 10 * time.Second
	}
	if o.PollWait == 0 {
		o.PollWait = 30 * time.Second
	}
	if o.ReportInterval == 0 {
		o.ReportInterval = 10 * time.Second
	}
	if o.RetryInterval == 0 {
		o.RetryInterval = 2 * time.Second
	}
	if o.Resync == 0 {
		o.Resync = 30 * time.Second
	}
	if o.UsageInterval == 0 {
		o.UsageInterval = 15 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.Puller.Log == nil {
		o.Puller.Log = o.Log
	}
	if o.Puller.Metrics == nil {
		o.Puller.Metrics = o.Metrics
	}
	return &Agent{o: o, insts: map[string]*instance{}, stopping: map[string]*instance{},
		final: map[string]InstanceReport{}, sent: map[string]bool{}, lastUsed: map[string]time.Time{}, orphans: map[string]bool{},
		kick: make(chan struct{}, 1), resched: make(chan struct{}, 1)}
}

// Ready reports whether the agent has reconciled a desired set.
func (a *Agent) Ready() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ready
}

// Run registers the node, then long-polls its desired set and reconciles
// until ctx ends. Instances keep running when it returns: a restarted
// agent adopts them.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.register(ctx); err != nil {
		return err
	}
	sets := make(chan *DesiredSet, 1)
	a.wg.Add(3)
	go func() { defer a.wg.Done(); a.poll(ctx, sets) }()
	go func() { defer a.wg.Done(); a.reportLoop(ctx) }()
	go func() { defer a.wg.Done(); a.usageLoop(ctx, a.o.UsageInterval) }()
	if a.o.Enforcer != nil {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.victimLoop(ctx) }()
	}
	var last *DesiredSet
	resync := time.NewTicker(a.o.Resync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			a.wg.Wait()
			a.waitInstances()
			return nil
		case s := <-sets:
			last = s
		case <-a.resched:
		case <-resync.C:
		}
		if last == nil {
			continue
		}
		if err := a.Reconcile(ctx, last); err != nil && ctx.Err() == nil {
			a.o.Log.Warn("reconcile failed", "err", err)
			time.AfterFunc(a.o.RetryInterval, a.reschedule)
		}
		a.maybeGC(ctx)
		a.reregister()
	}
}

func (a *Agent) register(ctx context.Context) error {
	req := RegisterRequest{Name: a.o.Node, IDC: a.o.IDC, Labels: a.o.Labels, Address: a.o.Address,
		Capacity: a.o.Capacity, Reserved: a.o.Reserved}
	for {
		resp, err := a.o.Scheduler.Register(ctx, req)
		if err == nil {
			if resp.PollInterval > 0 {
				a.o.PollWait = resp.PollInterval.D()
			}
			a.o.Log.Info("registered with the scheduler", "node", a.o.Node, "nodeID", resp.NodeID, "pollWait", a.o.PollWait)
			return nil
		}
		a.o.Log.Warn("registering with the scheduler failed", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(a.o.RetryInterval):
		}
	}
}

// poll long-polls the desired set and hands every new one to Run.
func (a *Agent) poll(ctx context.Context, sets chan *DesiredSet) {
	version := ""
	for ctx.Err() == nil {
		set, changed, err := a.o.Scheduler.PollDesired(ctx, version, a.o.PollWait)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.o.Metrics.polls.WithLabelValues("error").Inc()
			a.o.Log.Warn("polling the desired set failed", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(a.o.RetryInterval):
			}
			continue
		}
		if !changed {
			a.o.Metrics.polls.WithLabelValues("unchanged").Inc()
			continue
		}
		a.o.Metrics.polls.WithLabelValues("changed").Inc()
		set.Received = time.Now()
		version = set.Version
		select { // only the newest set matters
		case <-sets:
		default:
		}
		sets <- set
	}
}

func (a *Agent) reschedule() {
	select {
	case a.resched <- struct{}{}:
	default:
	}
}

func (a *Agent) changed() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Reconcile makes dockerd's containers of this node match set: instances
// to run get a supervisor (adopting the container they have), supervised
// instances no longer wanted (or whose spec changed) are stopped and
// removed, and containers of this node that no instance wants are
// stopped and removed.
func (a *Agent) Reconcile(ctx context.Context, set *DesiredSet) error {
	list, err := a.o.Docker.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", LabelNode+"="+a.o.Node))})
	if err != nil {
		return fmt.Errorf("listing containers: %w", err)
	}
	a.o.Metrics.reconciles.Inc()
	byInstance := map[string][]container.Summary{}
	for _, c := range list {
		if c.Labels[LabelNode] != a.o.Node { // never another node's
			continue
		}
		byInstance[c.Labels[LabelInstance]] = append(byInstance[c.Labels[LabelInstance]], c)
	}
	want := map[string]*DesiredInstance{}
	inSet := map[string]bool{}
	for i := range set.Instances {
		d := &set.Instances[i]
		inSet[d.ID] = true
		if d.Desired != model.DesiredStop {
			want[d.ID] = d
		}
	}

	if a.o.Enforcer != nil {
		keep := map[string]bool{}
		for id := range byInstance {
			keep[id] = true
		}
		for id := range inSet {
			keep[id] = true
		}
		if err := a.o.Enforcer.Sweep(keep); err != nil {
			a.o.Log.Warn("enforcement: removing orphan volumes failed", "err", err)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// The images of the instances about to start, by app: an instance of
	// the same app on another image is stopped only once they are pulled
	// (a new version's image is on the node before its old instances go).
	pulls := map[string]map[string]*Pull{}
	for id, d := range want {
		if _, ok := a.insts[id]; ok {
			continue
		}
		ref := PullRef(d.Image, a.o.Gateway)
		if pulls[d.App] == nil {
			pulls[d.App] = map[string]*Pull{}
		}
		if pulls[d.App][ref] == nil {
			pulls[d.App][ref] = a.o.Puller.Start(ctx, ref)
		}
	}
	for id, in := range a.insts {
		if d, ok := want[id]; ok && specHash(d) == in.hash {
			in.setCanary(d.Canary)
			continue
		}
		delete(a.insts, id)
		a.stopping[id] = in
		var wait []*Pull
		for ref, p := range pulls[in.d.App] {
			if ref != PullRef(in.d.Image, a.o.Gateway) {
				wait = append(wait, p)
			}
		}
		if len(wait) == 0 {
			in.requestStop()
			continue
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			for _, p := range wait {
				select {
				case <-p.Done():
				case <-ctx.Done():
					return
				}
			}
			in.requestStop()
		}()
	}
	// A pull no desired instance waits for any more ends (after the stop
	// requests above: a supervisor whose pull ends so finds itself stopped).
	refs := map[string]bool{}
	for _, d := range want {
		refs[PullRef(d.Image, a.o.Gateway)] = true
	}
	a.o.Puller.Retain(refs)
	for id := range a.final {
		if !inSet[id] && a.sent[id] {
			delete(a.final, id)
			delete(a.sent, id)
		}
	}
	var remove []container.Summary
	for id, d := range want {
		if _, ok := a.insts[id]; ok {
			continue
		}
		if _, ok := a.stopping[id]; ok {
			continue // started again once its old container is gone
		}
		hash := specHash(d)
		var adopt *container.Summary
		for i, c := range byInstance[id] {
			switch {
			case c.Labels[LabelSpec] != hash:
				remove = append(remove, c)
			case adopt == nil || (c.State == "running" && adopt.State != "running"):
				if adopt != nil {
					remove = append(remove, *adopt)
				}
				adopt = &byInstance[id][i]
			default:
				remove = append(remove, c)
			}
		}
		if adopt != nil {
			if adopt.Names == nil || !hasName(adopt.Names, ContainerName(id)) {
				// Not under the instance's name: a container of ours only
				// ever has it; replace it.
				remove = append(remove, *adopt)
				adopt = nil
			}
		}
		in := &instance{a: a, d: *d, hash: hash, stop: make(chan struct{}), finished: make(chan struct{}),
			state: model.Pending, canary: d.Canary, assigned: set.Received}
		if in.assigned.IsZero() {
			in.assigned = time.Now()
		}
		if adopt != nil {
			in.assigned = time.Time{} // started before: no start latency
			in.adopt = adopt.ID
			in.state = model.Starting
			if adopt.State == "running" {
				in.state = model.Running
			}
			a.o.Metrics.containerOp.WithLabelValues("adopt").Inc()
			a.o.Log.Info("adopting container", "instance", id, "container", short(adopt.ID), "state", adopt.State)
		}
		delete(a.final, id)
		delete(a.sent, id)
		a.insts[id] = in
		a.wg.Add(1)
		go func() { defer a.wg.Done(); in.run(ctx) }()
	}
	// An instance the scheduler wants stopped that has no container (any
	// more) and no supervisor is reported stopped, even when this agent
	// never ran it (a predecessor did).
	for i := range set.Instances {
		d := &set.Instances[i]
		if d.Desired != model.DesiredStop || len(byInstance[d.ID]) > 0 {
			continue
		}
		if _, ok := a.stopping[d.ID]; ok {
			continue
		}
		if _, ok := a.final[d.ID]; !ok {
			a.final[d.ID] = InstanceReport{ID: d.ID, State: model.Stopped, Reason: "stopped"}
		}
	}
	for inst, cs := range byInstance {
		if _, ok := want[inst]; ok {
			continue
		}
		if _, ok := a.stopping[inst]; ok {
			continue // its supervisor stops it
		}
		remove = append(remove, cs...)
	}
	for _, c := range remove {
		if a.orphans[c.ID] {
			continue
		}
		a.orphans[c.ID] = true
		c := c
		a.o.Log.Info("removing a container no instance wants", "container", short(c.ID), "instance", c.Labels[LabelInstance], "state", c.State)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.removeContainer(context.WithoutCancel(ctx), c.ID, c.Labels[LabelInstance], a.o.StopTimeout)
			a.mu.Lock()
			delete(a.orphans, c.ID)
			a.mu.Unlock()
			a.reschedule() // reports an instance to stop as stopped
		}()
	}
	if !a.ready {
		a.ready = true
	}
	a.changed()
	return nil
}

func hasName(names []string, name string) bool {
	for _, n := range names {
		if n == "/"+name || n == name {
			return true
		}
	}
	return false
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// removeContainer deregisters the instance from Consul, then stops the
// container gracefully and removes it.
func (a *Agent) removeContainer(ctx context.Context, id, instance string, timeout time.Duration) error {
	if a.o.Consul != nil && instance != "" {
		if err := a.o.Consul.Agent().ServiceDeregister(instance); err != nil && !notRegistered(err) {
			a.o.Log.Warn("deregistering from Consul failed", "instance", instance, "err", err)
		}
	}
	if c, err := a.o.Docker.ContainerInspect(ctx, id); err == nil && c.ContainerJSONBase != nil {
		defer a.noteUsed(c.Image)
	}
	secs := int((timeout + time.Second - 1) / time.Second)
	if err := a.o.Docker.ContainerStop(ctx, id, container.StopOptions{Timeout: &secs}); err != nil && !errdefs.IsNotFound(err) {
		a.o.Log.Warn("stopping container failed", "container", short(id), "err", err)
	}
	a.o.Metrics.containerOp.WithLabelValues("stop").Inc()
	err := a.o.Docker.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !errdefs.IsNotFound(err) {
		a.o.Log.Warn("removing container failed", "container", short(id), "err", err)
		return err
	}
	a.o.Metrics.containerOp.WithLabelValues("remove").Inc()
	return nil
}

// instanceDone moves a stopped instance out of the stopping set.
func (a *Agent) instanceDone(in *instance) {
	a.mu.Lock()
	if a.stopping[in.d.ID] == in {
		delete(a.stopping, in.d.ID)
		a.final[in.d.ID] = in.report()
		delete(a.sent, in.d.ID)
	}
	a.mu.Unlock()
	a.changed()
	a.reschedule()
}

// waitInstances waits for the supervisors to return (at shutdown: they
// leave their containers running).
func (a *Agent) waitInstances() {
	a.mu.Lock()
	var all []*instance
	for _, in := range a.insts {
		all = append(all, in)
	}
	for _, in := range a.stopping {
		all = append(all, in)
	}
	a.mu.Unlock()
	for _, in := range all {
		<-in.finished
	}
}

// Snapshot is the report of every instance the agent knows, by ID.
func (a *Agent) Snapshot() []InstanceReport {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []InstanceReport
	for _, in := range a.insts {
		out = append(out, in.report())
	}
	for _, in := range a.stopping {
		r := in.report()
		if r.State != model.Stopped {
			r.State = model.Stopping
		}
		out = append(out, r)
	}
	for _, r := range a.final {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	counts := map[model.InstanceState]float64{}
	for _, r := range out {
		counts[r.State]++
	}
	for _, s := range []model.InstanceState{model.Pending, model.Pulling, model.Starting, model.Running,
		model.Healthy, model.Stopping, model.Stopped, model.Failed} {
		a.o.Metrics.instances.WithLabelValues(string(s)).Set(counts[s])
	}
	return out
}

// reportLoop reports the instances' states when they change (at most one
// report in flight) and at least every ReportInterval.
func (a *Agent) reportLoop(ctx context.Context) {
	t := time.NewTicker(a.o.ReportInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.kick:
			// Let a burst of changes land in one report.
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		a.mu.Lock()
		ready := a.ready
		a.mu.Unlock()
		if !ready {
			continue
		}
		rep := Report{Instances: a.Snapshot()}
		if rep.Instances == nil {
			rep.Instances = []InstanceReport{}
		}
		for _, r := range rep.Instances {
			rep.Usage = rep.Usage.Add(r.Usage)
		}
		if err := a.o.Scheduler.Report(ctx, rep); err != nil {
			if ctx.Err() != nil {
				return
			}
			a.o.Metrics.reports.WithLabelValues("error").Inc()
			a.o.Log.Warn("report failed", "err", err)
			continue
		}
		a.o.Metrics.reports.WithLabelValues("ok").Inc()
		a.mu.Lock()
		for _, r := range rep.Instances {
			if f, ok := a.final[r.ID]; ok && f == r {
				a.sent[r.ID] = true
			}
		}
		a.mu.Unlock()
	}
}

// notRegistered: Consul's answer to deregistering an unknown service ID.
func notRegistered(err error) bool {
	var se consul.StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound || strings.Contains(err.Error(), "404")
}

// maybeGC runs an image GC in the background unless one runs.
func (a *Agent) maybeGC(ctx context.Context) {
	if a.o.ImageGCHigh <= 0 || a.o.DataDir == "" {
		return
	}
	a.mu.Lock()
	busy := a.gcBusy
	a.gcBusy = true
	a.mu.Unlock()
	if busy {
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if _, err := a.gcImages(ctx, a.o.ImageGCHigh, a.o.ImageGCLow); err != nil && ctx.Err() == nil {
			a.o.Log.Warn("image GC failed", "err", err)
		}
		a.mu.Lock()
		a.gcBusy = false
		a.mu.Unlock()
	}()
}

// reregister puts back the Consul registrations of running instances that
// the local Consul agent lost (restarted without its state, or an
// operator's deregistration).
func (a *Agent) reregister() {
	if a.o.Consul == nil {
		return
	}
	a.mu.Lock()
	var registered []*instance
	for _, in := range a.insts {
		in.mu.Lock()
		if in.registered {
			registered = append(registered, in)
		}
		in.mu.Unlock()
	}
	a.mu.Unlock()
	if len(registered) == 0 {
		return
	}
	have, err := a.o.Consul.Agent().Services()
	if err != nil {
		a.o.Log.Warn("listing Consul's services failed", "err", err)
		return
	}
	for _, in := range registered {
		if _, ok := have[in.d.ID]; !ok {
			in.registerAgain()
		}
	}
}
