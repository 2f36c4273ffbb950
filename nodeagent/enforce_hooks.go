package nodeagent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/docker/docker/api/types/blkiodev"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"

	"github.com/gaia-registry/gaia/nodeagent/enforce"
	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// The agent's calls into node enforcement (nodeagent/enforce, issue 13),
// all no-ops when Options.Enforcer is nil.

func enforceInstance(d *DesiredInstance) enforce.Instance {
	return enforce.Instance{ID: d.ID, Priority: d.Priority, Request: d.Resources,
		MemoryLimit: int64(d.MemoryLimit), CPULimit: d.CPULimit, DiskIOPS: d.DiskIOPS, CPUSet: d.CPUSet,
		VolumeTarget: d.VolumePath}
}

// applyEnforce adds what enforcement prepared (volume, cgroup parent,
// limits) to the container's HostConfig.
func applyEnforce(hc *container.HostConfig, c enforce.Container) {
	r := &hc.Resources
	r.CgroupParent = c.CgroupParent
	if c.Memory > 0 {
		r.Memory, r.MemorySwap = c.Memory, c.MemorySwap
	}
	r.MemoryReservation = c.MemoryReservation
	r.CPUShares = c.CPUShares
	if c.CPUQuota > 0 {
		r.CPUPeriod, r.CPUQuota = c.CPUPeriod, c.CPUQuota
	}
	if c.CpusetCpus != "" {
		r.CpusetCpus = c.CpusetCpus
	}
	conv := func(ds []enforce.ThrottleDevice) []*blkiodev.ThrottleDevice {
		var out []*blkiodev.ThrottleDevice
		for _, d := range ds {
			out = append(out, &blkiodev.ThrottleDevice{Path: d.Path, Rate: d.Rate})
		}
		return out
	}
	r.BlkioDeviceReadBps, r.BlkioDeviceWriteBps = conv(c.BlkioDeviceReadBps), conv(c.BlkioDeviceWriteBps)
	r.BlkioDeviceReadIOps, r.BlkioDeviceWriteIOps = conv(c.BlkioDeviceReadIOps), conv(c.BlkioDeviceWriteIOps)
	for _, m := range c.Mounts {
		hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeBind, Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly})
	}
}

// gateCommand puts the container behind the gate (enforce/gate.go): its
// entrypoint becomes the gate, and the gate's arguments are the command
// docker would have run: the app's command and args over the image's
// entrypoint and cmd (an app command drops the image's cmd, as docker's
// --entrypoint does).
func gateCommand(cfg *container.Config, imgEntrypoint, imgCmd []string) {
	ep, cmd := cfg.Entrypoint, cfg.Cmd
	if len(ep) == 0 {
		ep = imgEntrypoint
		if len(cmd) == 0 {
			cmd = imgCmd
		}
	}
	cfg.Entrypoint = []string{enforce.GateEntrypoint}
	cfg.Cmd = append(append([]string{}, ep...), cmd...)
}

// gateDir is the host directory of the container's gate (enforce/gate.go),
// "" when it was not made behind one: read from the container itself, so
// that an agent releases the gates of containers it finds whatever its
// own enforcement configuration.
func gateDir(c container.InspectResponse) string {
	if c.Config == nil || len(c.Config.Entrypoint) == 0 || c.Config.Entrypoint[0] != enforce.GateEntrypoint {
		return ""
	}
	for _, m := range c.Mounts {
		if m.Destination == enforce.GateDirTarget {
			return m.Source
		}
	}
	return ""
}

// closeGate, before every start of a gated container (dir ""; none).
func closeGate(dir string) error {
	if dir == "" {
		return nil
	}
	return enforce.CloseGate(dir)
}

// afterStart, once the container runs (every start, and every adoption):
// its enforcement attached (enforceStarted), then its gate released, both
// from one inspection of the running container.
func (in *instance) afterStart(ctx context.Context, id, gate string) {
	if in.a.o.Enforcer == nil && gate == "" {
		return
	}
	c, err := in.a.o.Docker.ContainerInspect(ctx, id)
	if err != nil || c.State == nil || c.State.Pid == 0 {
		in.a.o.Log.Warn("the started container cannot be inspected: its traffic is not shaped, its gate (if any) not released",
			"instance", in.d.ID, "err", err)
		return
	}
	in.enforceStarted(c)
	in.openGate(c.State.Pid, gate)
}

// enforceStarted attaches the running container (its network classes).
func (in *instance) enforceStarted(c container.InspectResponse) {
	e := in.a.o.Enforcer
	if e == nil {
		return
	}
	ns := ""
	if c.HostConfig == nil || !c.HostConfig.NetworkMode.IsHost() {
		ns = fmt.Sprintf("/proc/%d/ns/net", c.State.Pid)
	}
	if err := e.Started(enforceInstance(&in.d), c.ID, ns); err != nil {
		in.a.o.Log.Warn("enforcement: attaching the instance failed", "instance", in.d.ID, "err", err)
	}
}

// openGate, once the container's classes exist: its command runs. The
// release names the running container's network namespace (gaia-gate
// execs only for its own), written whole (renamed into place).
func (in *instance) openGate(pid int, dir string) {
	if dir == "" {
		return
	}
	err := func() error {
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			return err
		}
		tmp := filepath.Join(dir, "."+enforce.GateReleased)
		if err := os.WriteFile(tmp, []byte(ns+"\n"), 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, filepath.Join(dir, enforce.GateReleased))
	}()
	if err != nil {
		in.a.o.Log.Error("releasing the gate failed: the instance's command waits in it (10 minutes, then the container exits 125)",
			"instance", in.d.ID, "err", err)
	}
}

// victimLoop stops the instances EMC picks: the container is killed and
// the instance failed as oom-reclaimed, with the numbers.
func (a *Agent) victimLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case v := <-a.o.Enforcer.Victims():
			a.mu.Lock()
			in := a.insts[v.ID]
			a.mu.Unlock()
			if in == nil {
				continue
			}
			in.mu.Lock()
			in.reclaimed = v.Reason
			id := in.containerID
			in.mu.Unlock()
			a.o.Log.Warn("EMC: reclaiming an instance", "instance", v.ID, "reason", v.Reason)
			if id != "" {
				_ = a.o.Docker.ContainerKill(ctx, id, "KILL")
			}
		}
	}
}

// enforceUsage adds what enforcement measures and dockerd does not: the
// disk used on the instance's volume, and its traffic classes' counters.
func (in *instance) enforceUsage(u *resource.Vector) model.NetCounters {
	e := in.a.o.Enforcer
	if e == nil {
		return model.NetCounters{}
	}
	eu, ok := e.Usage()[in.d.ID]
	if !ok {
		return model.NetCounters{}
	}
	u[resource.Disk] = eu.DiskUsedBytes
	return model.NetCounters{OutBytes: eu.NetOutBytes, OutDrops: eu.NetOutDrops, InBytes: eu.NetInBytes,
		InDrops: eu.NetInDrops, Retransmits: eu.TCPRetransmits}
}

// checkWritableLayer evicts the instance when its container's writable
// layer is over Options.WritableLayerLimit: the container is killed and
// the instance failed as evicted, with the numbers.
func (in *instance) checkWritableLayer(ctx context.Context, id string) {
	limit := in.a.o.WritableLayerLimit
	if limit <= 0 {
		return
	}
	c, _, err := in.a.o.Docker.ContainerInspectWithRaw(ctx, id, true)
	if err != nil || c.SizeRw == nil || *c.SizeRw <= limit {
		return
	}
	reason := fmt.Sprintf("evicted: the container's writable layer holds %d bytes, over the node's limit of %d (data belongs on the instance's volume)", *c.SizeRw, limit)
	in.mu.Lock()
	in.reclaimed = reason
	in.mu.Unlock()
	in.a.o.Log.Warn("evicting an instance", "instance", in.d.ID, "reason", reason)
	_ = in.a.o.Docker.ContainerKill(ctx, id, "KILL")
}
