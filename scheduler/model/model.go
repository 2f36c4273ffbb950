// Package model holds gaia-scheduler's records: nodes, pools, apps and
// their specs, instances. Field names in JSON and YAML are lowerCamel and
// the same in the API, app.yaml files and the database's JSONB columns
// (scheduler/DESIGN.md).
package model

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gaia-registry/gaia/scheduler/resource"
	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration that marshals as a Go duration string
// ("30s", "5m0s"). On input a string ("90s", "1m30s") or a number of
// seconds (YARN's allocation files count in seconds) is accepted.
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes "30s".
func (d Duration) MarshalJSON() ([]byte, error) {
	return strconv.AppendQuote(nil, time.Duration(d).String()), nil
}

// UnmarshalJSON reads "30s" or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*d = 0
		return nil
	}
	s := string(b)
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
	}
	x, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = x
	return nil
}

// MarshalYAML writes "30s".
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// UnmarshalYAML reads "30s" or a number of seconds.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration such as 30s", n.Line)
	}
	x, err := ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = x
	return nil
}

// ParseDuration reads "30s", "1m30s" or a plain number of seconds ("30",
// "1.5").
func ParseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return Duration(f * float64(time.Second)), nil
	}
	x, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: not a duration (e.g. 30s, 5m)", s)
	}
	return Duration(x), nil
}

// NodeState is ready, draining or down.
type NodeState string

// Node states.
const (
	NodeReady    NodeState = "ready"
	NodeDraining NodeState = "draining"
	NodeDown     NodeState = "down"
)

// Node is a machine that runs instances.
type Node struct {
	Name          string            `json:"name" yaml:"name"`
	IDC           string            `json:"idc,omitempty" yaml:"idc,omitempty"`
	Labels        map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	Address       string            `json:"address,omitempty" yaml:"address,omitempty"`
	Capacity      resource.Vector   `json:"capacity" yaml:"capacity"`
	Reserved      resource.Vector   `json:"reserved" yaml:"reserved"`
	State         NodeState         `json:"state" yaml:"state"`
	LastHeartbeat time.Time         `json:"lastHeartbeat,omitzero" yaml:"lastHeartbeat,omitempty"`
	// Usage is what the node reported in use (all of it, not only Gaia's
	// instances), as of its last report that the leader flushed.
	Usage resource.Vector `json:"usage,omitzero" yaml:"usage,omitempty"`
}

// Allocatable is capacity − reserved, floored at 0 in each dimension.
func (n Node) Allocatable() resource.Vector {
	return n.Capacity.Sub(n.Reserved).Max(resource.Vector{})
}

// Policy orders a pool's children: drf (default), fair (on memory only),
// fifo (by app creation time; in a parent pool, by pool name).
type Policy string

// Policies.
const (
	PolicyDRF  Policy = "drf"
	PolicyFair Policy = "fair"
	PolicyFIFO Policy = "fifo"
)

// RootPool is the pool every other pool descends from.
const RootPool = "root"

// DefaultFairSharePreemptionThreshold is YARN's default.
const DefaultFairSharePreemptionThreshold = 0.5

// Pool is a node of the pool tree. Its parent is its name without the last
// dotted segment; "root" always exists. Apps live in leaf pools.
type Pool struct {
	Name string `json:"name" yaml:"name"`
	// Weight of the pool among its siblings; 0 means the default, 1.
	Weight float64 `json:"weight,omitempty" yaml:"weight,omitempty"`
	// Min is guaranteed before anything above fair share is served.
	Min resource.Vector `json:"min" yaml:"min"`
	// Max is never exceeded; a dimension left at 0 is unlimited.
	Max resource.Vector `json:"max" yaml:"max"`
	// MaxInstances caps the pool's (and its descendants') live instances;
	// 0 is unlimited.
	MaxInstances int `json:"maxInstances,omitempty" yaml:"maxInstances,omitempty"`
	// Policy among the pool's children; "" means drf.
	Policy                     Policy   `json:"policy,omitempty" yaml:"policy,omitempty"`
	MinSharePreemptionTimeout  Duration `json:"minSharePreemptionTimeout,omitempty" yaml:"minSharePreemptionTimeout,omitempty"`
	FairSharePreemptionTimeout Duration `json:"fairSharePreemptionTimeout,omitempty" yaml:"fairSharePreemptionTimeout,omitempty"`
	// FairSharePreemptionThreshold in 0..1; 0 means the default, 0.5.
	FairSharePreemptionThreshold float64 `json:"fairSharePreemptionThreshold,omitempty" yaml:"fairSharePreemptionThreshold,omitempty"`
	// AllowPreemptionFrom: may other pools preempt this pool's instances?
	// nil means true; use PreemptableFrom.
	AllowPreemptionFrom *bool    `json:"allowPreemptionFrom,omitempty" yaml:"allowPreemptionFrom,omitempty"`
	Submitters          []string `json:"submitters,omitempty" yaml:"submitters,omitempty"`
}

// Parent returns the parent pool's name, "" for root.
func (p Pool) Parent() string { return ParentPool(p.Name) }

// ParentPool returns the name without its last dotted segment.
func ParentPool(name string) string {
	i := strings.LastIndexByte(name, '.')
	if i < 0 {
		return ""
	}
	return name[:i]
}

// EffectiveWeight is Weight, or 1 when unset.
func (p Pool) EffectiveWeight() float64 {
	if p.Weight <= 0 {
		return 1
	}
	return p.Weight
}

// EffectivePolicy is Policy, or drf when unset.
func (p Pool) EffectivePolicy() Policy {
	if p.Policy == "" {
		return PolicyDRF
	}
	return p.Policy
}

// EffectiveThreshold is FairSharePreemptionThreshold, or 0.5 when unset.
func (p Pool) EffectiveThreshold() float64 {
	if p.FairSharePreemptionThreshold <= 0 {
		return DefaultFairSharePreemptionThreshold
	}
	return p.FairSharePreemptionThreshold
}

// PreemptableFrom is AllowPreemptionFrom with its default, true.
func (p Pool) PreemptableFrom() bool { return p.AllowPreemptionFrom == nil || *p.AllowPreemptionFrom }

// Bool returns a pointer to b, for AllowPreemptionFrom literals.
func Bool(b bool) *bool { return &b }

// Protocol of a port.
const (
	TCP = "tcp"
	UDP = "udp"
)

// Port is a named container port; HostPort 0 lets the scheduler choose one
// from its dynamic range.
type Port struct {
	Name          string `json:"name" yaml:"name"`
	ContainerPort int    `json:"containerPort" yaml:"containerPort"`
	Protocol      string `json:"protocol,omitempty" yaml:"protocol,omitempty"`
	HostPort      int    `json:"hostPort,omitempty" yaml:"hostPort,omitempty"`
}

// Health check types.
const (
	HealthTCP  = "tcp"
	HealthHTTP = "http"
	HealthExec = "exec"
)

// Health is an instance's health check. Port names one of the spec's ports.
type Health struct {
	Type     string   `json:"type,omitempty" yaml:"type,omitempty"`
	Port     string   `json:"port,omitempty" yaml:"port,omitempty"`
	Path     string   `json:"path,omitempty" yaml:"path,omitempty"`
	Command  []string `json:"command,omitempty" yaml:"command,omitempty"`
	Interval Duration `json:"interval,omitempty" yaml:"interval,omitempty"`
	Timeout  Duration `json:"timeout,omitempty" yaml:"timeout,omitempty"`
	Grace    Duration `json:"grace,omitempty" yaml:"grace,omitempty"`
}

// Restart is the node agent's restart policy: at most Attempts restarts
// within Interval, waiting Delay before the first and multiplying the wait
// by Backoff (≥ 1; 0 means 1) after each.
type Restart struct {
	Attempts int      `json:"attempts,omitempty" yaml:"attempts,omitempty"`
	Interval Duration `json:"interval,omitempty" yaml:"interval,omitempty"`
	Delay    Duration `json:"delay,omitempty" yaml:"delay,omitempty"`
	Backoff  float64  `json:"backoff,omitempty" yaml:"backoff,omitempty"`
}

// Constraints restrict the nodes an app's instances may run on: every
// label must match exactly, and IDC (when set) must equal the node's.
type Constraints struct {
	Labels map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	IDC    string            `json:"idc,omitempty" yaml:"idc,omitempty"`
}

// Update is an app's update strategy.
type Update struct {
	// MaxParallel instances are replaced at a time; 0 means 1.
	MaxParallel int `json:"maxParallel,omitempty" yaml:"maxParallel,omitempty"`
	// Canary: on a new version, first this many instances move to it and
	// the rest wait for promote.
	Canary int `json:"canary,omitempty" yaml:"canary,omitempty"`
	// MinHealthyTime: a new instance counts as updated only after it has
	// been healthy (running, without a health check) this long; until
	// then the rolling update waits for it.
	MinHealthyTime Duration `json:"minHealthyTime,omitempty" yaml:"minHealthyTime,omitempty"`
	// HealthyDeadline: a new version's instances must be healthy this
	// long after it was made (default 5m), or, with AutoRollback, the
	// scheduler rolls back to the version before.
	HealthyDeadline Duration `json:"healthyDeadline,omitempty" yaml:"healthyDeadline,omitempty"`
	// AutoRollback: when an instance of a new version fails, or its
	// instances are not all healthy within HealthyDeadline, roll back to
	// the version the app ran before (not again from a rollback).
	AutoRollback bool `json:"autoRollback,omitempty" yaml:"autoRollback,omitempty"`
}

// DefaultHealthyDeadline is HealthyDeadline's default.
const DefaultHealthyDeadline = 5 * time.Minute

// EffectiveHealthyDeadline is HealthyDeadline, or its default when unset.
func (u Update) EffectiveHealthyDeadline() time.Duration {
	if u.HealthyDeadline > 0 {
		return time.Duration(u.HealthyDeadline)
	}
	return DefaultHealthyDeadline
}

// EffectiveMaxParallel is MaxParallel, or 1 when unset.
func (u Update) EffectiveMaxParallel() int {
	if u.MaxParallel <= 0 {
		return 1
	}
	return u.MaxParallel
}

// AppSpec is what a user submits (app.yaml).
type AppSpec struct {
	Name      string            `json:"name" yaml:"name"`
	Pool      string            `json:"pool" yaml:"pool"`
	Image     string            `json:"image" yaml:"image"`
	Command   []string          `json:"command,omitempty" yaml:"command,omitempty"`
	Args      []string          `json:"args,omitempty" yaml:"args,omitempty"`
	Env       map[string]string `json:"env,omitempty" yaml:"env,omitempty"`
	Instances int               `json:"instances" yaml:"instances"`
	// Resources is the per-instance request in all six dimensions.
	Resources resource.Vector `json:"resources" yaml:"resources"`
	// MemoryLimit is the elastic memory ceiling (≥ resources.memory); 0
	// means the request.
	MemoryLimit resource.Bytes `json:"memoryLimit,omitempty" yaml:"memoryLimit,omitempty"`
	// CPULimit is a CPU ceiling (≥ resources.cpu; a CFS quota on the
	// node); 0: none, the instance may use idle CPU beyond its request.
	CPULimit resource.Millicores `json:"cpuLimit,omitempty" yaml:"cpuLimit,omitempty"`
	// DiskIOPS limits read and write operations per second on the
	// instance's volume (beside resources.diskio's bytes/s); 0: none.
	DiskIOPS int64 `json:"diskIOPS,omitempty" yaml:"diskIOPS,omitempty"`
	// CPUSet pins every instance to these CPUs of its node ("0-3,6", as
	// cpuset.cpus); "": not pinned.
	CPUSet string `json:"cpuSet,omitempty" yaml:"cpuSet,omitempty"`
	// VolumePath is where the instance's disk volume (resources.disk) is
	// mounted in its container; "": the node's enforce.volumetarget.
	VolumePath  string      `json:"volumePath,omitempty" yaml:"volumePath,omitempty"`
	Ports       []Port      `json:"ports,omitempty" yaml:"ports,omitempty"`
	Health      *Health     `json:"health,omitempty" yaml:"health,omitempty"`
	Restart     Restart     `json:"restart,omitzero" yaml:"restart,omitempty"`
	Constraints Constraints `json:"constraints,omitzero" yaml:"constraints,omitempty"`
	// Spread is the most instances of the app on one node; 0 is no limit.
	Spread int `json:"spread,omitempty" yaml:"spread,omitempty"`
	// Priority: higher wins, inside a pool and when preempting.
	Priority int    `json:"priority,omitempty" yaml:"priority,omitempty"`
	Update   Update `json:"update,omitzero" yaml:"update,omitempty"`
}

// AppState is running or stopped.
type AppState string

// App states.
const (
	AppRunning AppState = "running"
	AppStopped AppState = "stopped"
)

// App is a submitted app with its current version.
type App struct {
	Spec AppSpec `json:"spec" yaml:"spec"`
	// Version counts spec changes: 1, 2, ...
	Version int64 `json:"version" yaml:"version"`
	// Digest is the image resolved at submit or update.
	Digest string   `json:"digest,omitempty" yaml:"digest,omitempty"`
	State  AppState `json:"state" yaml:"state"`
	// Promoted is set by promote and cleared by each new version; while
	// it is false and spec.update.canary > 0, only that many instances
	// move to the new version.
	Promoted bool `json:"promoted,omitempty" yaml:"promoted,omitempty"`
	// Same lists earlier versions that run exactly this version's spec
	// and image (the version a rollback returned to): their instances are
	// not outdated, so a rollback replaces only the failed version's.
	Same []int64 `json:"same,omitempty" yaml:"same,omitempty"`
	// VersionAt is when this version was made (UpdatedAt also moves
	// with scales, promotes, stops and starts).
	VersionAt time.Time `json:"versionAt,omitzero" yaml:"versionAt,omitempty"`
	// Rollback says this version is a rollback, and why.
	Rollback  *Rollback `json:"rollback,omitempty" yaml:"rollback,omitempty"`
	CreatedAt time.Time `json:"createdAt" yaml:"createdAt"`
	UpdatedAt time.Time `json:"updatedAt" yaml:"updatedAt"`
	// Status is the leader's word on the app, written when it changes.
	Status AppStatus `json:"status,omitzero" yaml:"status,omitempty"`
}

// AppStatus says why an app's missing instances are not placed, and the
// back-off its replacements are under after instances failed.
type AppStatus struct {
	// Unplaced: how many missing instances the last plan could not place
	// and why ("1 instance not placed: host port 19090 is taken on every
	// node that fits"); "" when none wait.
	Unplaced string `json:"unplaced,omitempty" yaml:"unplaced,omitempty"`
	// Failures counts the instances that failed (exited for good on
	// their node, not stopped by the scheduler) since the last reset: an
	// instance healthy for a while, or a user's change of the app.
	Failures int `json:"failures,omitempty" yaml:"failures,omitempty"`
	// HeldUntil: no instance of the app is placed before this time (the
	// back-off after the last failure, doubling with each).
	HeldUntil time.Time `json:"heldUntil,omitzero" yaml:"heldUntil,omitempty"`
	// LastFailure names the last failed instance and how it ended.
	LastFailure string    `json:"lastFailure,omitempty" yaml:"lastFailure,omitempty"`
	FailedAt    time.Time `json:"failedAt,omitzero" yaml:"failedAt,omitempty"`
}

// Name is Spec.Name.
func (a App) Name() string { return a.Spec.Name }

// Current reports whether an instance of version v runs this version's
// spec: v is the app's version or one of Same.
func (a App) Current(v int64) bool {
	if v == a.Version {
		return true
	}
	for _, s := range a.Same {
		if s == v {
			return true
		}
	}
	return false
}

// Rollback records a version made by rolling back.
type Rollback struct {
	From   int64     `json:"from" yaml:"from"` // the version rolled back
	To     int64     `json:"to" yaml:"to"`     // the earlier version whose spec this is
	Auto   bool      `json:"auto,omitempty" yaml:"auto,omitempty"`
	Reason string    `json:"reason,omitempty" yaml:"reason,omitempty"`
	At     time.Time `json:"at" yaml:"at"`
}

// InstanceState is where an instance is in its life.
type InstanceState string

// Instance states.
const (
	Pending  InstanceState = "pending"
	Assigned InstanceState = "assigned"
	Pulling  InstanceState = "pulling"
	Starting InstanceState = "starting"
	Running  InstanceState = "running"
	Healthy  InstanceState = "healthy"
	Stopping InstanceState = "stopping"
	Stopped  InstanceState = "stopped"
	Failed   InstanceState = "failed"
	Lost     InstanceState = "lost"
)

// Terminal reports whether the instance no longer holds resources
// (stopped, failed, lost).
func (s InstanceState) Terminal() bool { return s == Stopped || s == Failed || s == Lost }

// Desired is what the scheduler wants an instance to do.
type Desired string

// Desired values.
const (
	DesiredRun  Desired = "run"
	DesiredStop Desired = "stop"
)

// Transition is one state change.
type Transition struct {
	State  InstanceState `json:"state" yaml:"state"`
	At     time.Time     `json:"at" yaml:"at"`
	Reason string        `json:"reason,omitempty" yaml:"reason,omitempty"`
}

// Instance is one container of an app on one node.
type Instance struct {
	ID        string         `json:"id" yaml:"id"`
	App       string         `json:"app" yaml:"app"`
	Version   int64          `json:"version" yaml:"version"`
	Node      string         `json:"node,omitempty" yaml:"node,omitempty"`
	HostPorts map[string]int `json:"hostPorts,omitempty" yaml:"hostPorts,omitempty"`
	State     InstanceState  `json:"state" yaml:"state"`
	Reason    string         `json:"reason,omitempty" yaml:"reason,omitempty"`
	ExitCode  int            `json:"exitCode,omitempty" yaml:"exitCode,omitempty"`
	Restarts  int            `json:"restarts,omitempty" yaml:"restarts,omitempty"`
	Desired   Desired        `json:"desired,omitempty" yaml:"desired,omitempty"`
	// Usage is what the instance's node reported it using (cpu, memory,
	// disk used, I/O and network rates), as of the last flush.
	Usage resource.Vector `json:"usage,omitzero" yaml:"usage,omitempty"`
	// Net is the instance's traffic-shaping counters, as its node
	// enforces netin/netout (zero where the node does not).
	Net         NetCounters  `json:"net,omitzero" yaml:"net,omitempty"`
	Transitions []Transition `json:"transitions,omitempty" yaml:"transitions,omitempty"`
}

// NetCounters are cumulative counters of an instance's traffic classes on
// its node: bytes and packets dropped in each direction, and the TCP
// retransmissions seen in its network namespace.
type NetCounters struct {
	OutBytes    uint64 `json:"outBytes,omitempty" yaml:"outBytes,omitempty"`
	OutDrops    uint64 `json:"outDrops,omitempty" yaml:"outDrops,omitempty"`
	InBytes     uint64 `json:"inBytes,omitempty" yaml:"inBytes,omitempty"`
	InDrops     uint64 `json:"inDrops,omitempty" yaml:"inDrops,omitempty"`
	Retransmits uint64 `json:"retransmits,omitempty" yaml:"retransmits,omitempty"`
}

// Stopping reports whether the instance is on its way out: desired stop or
// state stopping, but not yet terminal. It still holds its resources.
func (i Instance) Stopping() bool {
	return !i.State.Terminal() && (i.Desired == DesiredStop || i.State == Stopping)
}
