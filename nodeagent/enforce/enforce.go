// Package enforce makes a node hold every resource dimension the scheduler
// allocates (issue 13): elastic memory control (EMC), CPU, disk capacity,
// disk IO, and network bandwidth in and out with guarantees, borrowing and
// priorities. The node agent calls one Enforcer:
//
//	Init                     parent cgroups, the IFB devices and their HTB trees
//	Prepare(instance)        before the container is created: the volume, and
//	                         what to add to the container's HostConfig
//	Started(instance, ...)   after it started: its HTB classes and the redirect
//	                         of its veth to the shared trees (the agent then
//	                         releases the container's gate, gate.go)
//	Stopped(id)              classes, redirect and volume removed
//	Rebuild(running)         after an agent restart: the trees rebuilt from
//	                         the running instances, orphan volumes removed
//	Usage()                  usage per instance in every dimension
//	Victims()                EMC's decisions: instances the agent must stop
//
// The cgroup parts have two drivers, cgroup v1 (what the project's machines
// run; memory.oom_control with the OOM killer disabled on the node-level
// parent and eventfd notifications) and cgroup v2 (memory.high/max on the
// parent, memory.events and PSI; github.com/containerd/cgroups/v3). The
// containers' own limits are set by dockerd from the HostConfig additions
// (it writes the v1 or v2 files itself).
package enforce

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/gaia-registry/gaia/scheduler/resource"
)

// Config is the node's enforcement configuration (gaia-nodeagent's
// `enforce` section, docs/configuration.md).
type Config struct {
	// CgroupParent is the node-level parent cgroup every instance lives
	// under ("gaia": /sys/fs/cgroup/<controller>/gaia on v1,
	// /sys/fs/cgroup/gaia on v2).
	CgroupParent string
	// AllocatableMemory is the parent's memory limit in bytes: the node's
	// memory the scheduler may allocate. 0: no EMC (the parent unlimited).
	AllocatableMemory int64
	// PressureThreshold is the fraction of AllocatableMemory at which EMC
	// starts looking (a usage threshold event on v1, memory.high on v2).
	PressureThreshold float64
	// CheckInterval is EMC's fallback poll interval (events are the
	// primary trigger).
	CheckInterval time.Duration
	// VolumeDir holds the per-instance loop-file volumes (disk capacity).
	VolumeDir string
	// VolumeTarget is where an instance's volume is mounted in its
	// container when the instance does not say.
	VolumeTarget string
	// WritableLayerDevice, when set (/dev/sdX), is throttled too (disk IO
	// on the container's writable layer).
	WritableLayerDevice string
	// LinkOut and LinkIn are the node's link capacity in bits/s, each
	// direction (the HTB trees' root rate and every class's ceil). 0: no
	// network shaping.
	LinkOut, LinkIn int64
	// IFBOut and IFBIn name the IFB devices the agent creates and owns.
	IFBOut, IFBIn string
	// Gate is the static gaia-gate binary (gate.go): with network shaping
	// on, every container waits in it until its classes exist. "": no
	// gate, an instance may send before its classes exist.
	Gate string
	// GateDir holds the per-instance gate directories.
	GateDir string
	// CgroupVersion forces 1 or 2; 0 detects.
	CgroupVersion int
	Log           *slog.Logger
}

func (c *Config) defaults() {
	if c.CgroupParent == "" {
		c.CgroupParent = "gaia"
	}
	if c.PressureThreshold == 0 {
		c.PressureThreshold = 0.95
	}
	if c.CheckInterval == 0 {
		c.CheckInterval = time.Second
	}
	if c.VolumeDir == "" {
		c.VolumeDir = "/var/lib/gaia/volumes"
	}
	if c.GateDir == "" {
		c.GateDir = "/var/lib/gaia/gates"
	}
	if c.VolumeTarget == "" {
		c.VolumeTarget = "/data"
	}
	if c.IFBOut == "" {
		c.IFBOut = "gaia-out"
	}
	if c.IFBIn == "" {
		c.IFBIn = "gaia-in"
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// Instance is what enforcement needs to know of one instance.
type Instance struct {
	ID string
	// Priority is the app's priority: higher wins (scheduler/model). It is
	// the HTB class priority (inverted: HTB serves prio 0 first) and EMC's
	// victim order (lowest first).
	Priority int
	// Request is what the scheduler allocated, in scheduler/resource units.
	Request resource.Vector
	// MemoryLimit is the elastic ceiling in bytes (the container's own hard
	// limit); 0: the node's allocatable memory.
	MemoryLimit int64
	// CPULimit is a CFS quota in millicores; 0: none.
	CPULimit int64
	// CPUSet pins the instance ("0", "0-1"); "": none.
	CPUSet string
	// VolumeTarget is where its disk volume is mounted ("": the config's).
	VolumeTarget string
	// DiskIOPS limits read and write operations per second on the same
	// devices as the diskio bytes/s; 0: none.
	DiskIOPS int64
}

// ThrottleDevice is a bytes/s (or IO/s) limit on one block device.
type ThrottleDevice struct {
	Path string
	Rate uint64
}

// Mount is a bind mount of a host path into the container.
type Mount struct {
	Source, Target string
	ReadOnly       bool
}

// Container is what Prepare adds to the container's HostConfig; field
// names follow Docker's HostConfig.Resources.
type Container struct {
	CgroupParent         string
	Memory               int64
	MemorySwap           int64
	MemoryReservation    int64
	CPUShares            int64
	CPUPeriod, CPUQuota  int64
	CpusetCpus           string
	BlkioDeviceReadBps   []ThrottleDevice
	BlkioDeviceWriteBps  []ThrottleDevice
	BlkioDeviceReadIOps  []ThrottleDevice
	BlkioDeviceWriteIOps []ThrottleDevice
	Mounts               []Mount
	// Gate: the container's entrypoint must be GateEntrypoint, followed
	// by the instance's whole command (its image's entrypoint and command
	// as docker would run them) as arguments.
	Gate bool
}

// Running is an instance the agent found running (Rebuild).
type Running struct {
	Instance
	ContainerID string
	// NetNS is the container's network namespace (/proc/PID/ns/net).
	NetNS string
}

// Usage is one instance's use of every dimension, cumulative counters
// since its start where it says so.
type Usage struct {
	MemoryBytes    int64 // current (cache included, as the limit counts it)
	MemoryRequest  int64
	CPUNanos       uint64 // cumulative CPU time
	DiskUsedBytes  int64  // on its volume
	DiskSizeBytes  int64
	IOReadBytes    uint64 // cumulative, all devices
	IOWriteBytes   uint64
	NetOutBytes    uint64 // through its egress class
	NetOutDrops    uint64
	NetOutOverlim  uint64
	NetInBytes     uint64
	NetInDrops     uint64
	NetInOverlimit uint64
	// TCPRetransmits is the instance's network namespace's RetransSegs
	// (when its namespace was given as /proc/PID/ns/net).
	TCPRetransmits uint64
}

// Victim is EMC's decision: stop this instance (reported as
// oom-reclaimed with the numbers in Reason).
type Victim struct {
	ID            string
	MemoryBytes   int64
	MemoryRequest int64
	Priority      int
	Reason        string
}

// Enforcer is the node agent's interface to enforcement.
type Enforcer interface {
	Init() error
	Prepare(in Instance) (Container, error)
	Started(in Instance, containerID, netns string) error
	Stopped(id string) error
	Rebuild(running []Running) error
	// Sweep removes the volumes of instances that are neither in keep nor
	// known to the Enforcer (left behind by an agent that died between a
	// container's removal and Stopped).
	Sweep(keep map[string]bool) error
	Usage() map[string]Usage
	NodeUsage() Usage
	Victims() <-chan Victim
	Close() error
}

// ErrMissing says a kernel feature enforcement needs is not there; the
// message names it.
var ErrMissing = errors.New("missing kernel feature")

func missing(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrMissing, fmt.Sprintf(format, a...))
}

// DetectCgroupVersion is 2 on a unified hierarchy (/sys/fs/cgroup is
// cgroup2), 1 otherwise (legacy or hybrid).
func DetectCgroupVersion() int {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return 2
	}
	return 1
}
