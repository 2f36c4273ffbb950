// Package nodeagent is Gaia's node agent (issue 12): it registers its node
// with the scheduler, long-polls the node's desired set of instances,
// reconciles it against the containers of this node in dockerd (pulling
// images by digest from the IDC's gateway, one pull per image however many
// instances wait for it), runs health checks and the restart policy,
// registers running instances in the local Consul agent, and reports every
// instance's state back.
//
// The agent keeps no state of its own on disk: what runs is read from
// dockerd (containers carry gaia.node, gaia.app, gaia.instance,
// gaia.version and gaia.spec labels) and what should run from the
// scheduler, so a restarted or kill -9'd agent adopts its containers.
package nodeagent

import (
	"context"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// The node protocol's messages (scheduler/DESIGN.md, "Node protocol"), as
// the agent reads and writes them.

// RegisterRequest is the node's registration.
type RegisterRequest struct {
	Name     string            `json:"name"`
	IDC      string            `json:"idc,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Address  string            `json:"address,omitempty"`
	Capacity resource.Vector   `json:"capacity"`
	Reserved resource.Vector   `json:"reserved"`
}

// RegisterResponse answers a registration.
type RegisterResponse struct {
	NodeID       string         `json:"nodeID"`
	PollInterval model.Duration `json:"pollInterval"`
}

// DesiredSet is what the node should run. Anything this node runs that is
// not in it (or is there with desired stop) is stopped and removed.
type DesiredSet struct {
	Version   string            `json:"version"`
	Instances []DesiredInstance `json:"instances"`
	// Received is when the agent got the set (the start of its instances'
	// start latency); zero: when it is reconciled.
	Received time.Time `json:"-"`
}

// DesiredInstance is one instance as the node runs it.
type DesiredInstance struct {
	ID          string            `json:"id"`
	App         string            `json:"app"`
	Version     int64             `json:"version"`
	Image       string            `json:"image"` // by digest: [host/]repo@sha256:...
	Command     []string          `json:"command,omitempty"`
	Args        []string          `json:"args,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Resources   resource.Vector   `json:"resources"`
	MemoryLimit resource.Bytes    `json:"memoryLimit,omitempty"`
	// CPULimit is a CPU ceiling in millicores (a CFS quota); 0: none.
	CPULimit int64 `json:"cpuLimit,omitempty"`
	// DiskIOPS limits the volume's read and write IOPS (enforcement).
	DiskIOPS int64 `json:"diskIOPS,omitempty"`
	// CPUSet pins the container to these CPUs ("0-3"); "": not pinned.
	CPUSet string `json:"cpuSet,omitempty"`
	// VolumePath is where the disk volume is mounted (enforcement); "":
	// the node's enforce.volumetarget.
	VolumePath string        `json:"volumePath,omitempty"`
	Ports      []model.Port  `json:"ports,omitempty"` // hostPort assigned by the scheduler
	Health     *model.Health `json:"health,omitempty"`
	Restart    model.Restart `json:"restart,omitzero"`
	Desired    model.Desired `json:"desired"`
	// Canary instances are tagged "canary" in Consul. A change of it
	// alone (a promote) re-tags the running instance, never replaces it.
	Canary bool `json:"canary,omitempty"`
	// StopTimeout is the graceful stop's wait before SIGKILL (0: the
	// agent's stop.timeout). Not in the scheduler's DesiredInstance yet.
	StopTimeout model.Duration `json:"stopTimeout,omitempty"`
	// Labels are the app's extra container labels (gaia.* are the agent's).
	Labels map[string]string `json:"labels,omitempty"`
	// Priority is the app's priority (higher wins): node enforcement's
	// HTB class priority and EMC's victim order.
	Priority int `json:"priority,omitempty"`
}

// Report is the node's batched report: the state of every instance it has.
type Report struct {
	Instances []InstanceReport `json:"instances"`
	Usage     resource.Vector  `json:"usage"`
}

// InstanceReport is one instance's state on this node. A pull's progress
// travels in Reason ("pulling 37% (12 MiB of 33 MiB)") until the protocol
// has fields for it.
type InstanceReport struct {
	ID       string              `json:"id"`
	State    model.InstanceState `json:"state"`
	Reason   string              `json:"reason,omitempty"`
	ExitCode int                 `json:"exitCode,omitempty"`
	Restarts int                 `json:"restarts,omitempty"`
	Usage    resource.Vector     `json:"usage"`
	Net      model.NetCounters   `json:"net,omitzero"` // from enforcement's traffic classes
}

// Scheduler is the agent's side of the node protocol; NodeClient speaks
// it through scheduler/nodeclient, tests give the agent a fake. A client
// re-registers the node itself when the scheduler has forgotten it.
type Scheduler interface {
	Register(ctx context.Context, req RegisterRequest) (RegisterResponse, error)
	// PollDesired answers the desired set when its version differs from
	// version, else waits up to wait and answers changed=false.
	PollDesired(ctx context.Context, version string, wait time.Duration) (set *DesiredSet, changed bool, err error)
	Report(ctx context.Context, r Report) error
}
