package enforce

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gaia-registry/gaia/scheduler/resource"
)

// cgroupDriver is what differs between cgroup v1 and v2: the node-level
// parent, EMC's pressure signal, and the statistics. Containers' own
// limits are dockerd's (from Container).
type cgroupDriver interface {
	setupParent(parent string, memLimit int64, threshold float64) error
	// events delivers a value on every OOM or pressure notification.
	events() <-chan struct{}
	// pressure reports whether the parent is at its limit (v1: under_oom,
	// v2: memory.current at memory.high or memory.max), with its numbers.
	pressure() (bool, string)
	stats(containerID string) (cgStats, error)
	parentStats() (cgStats, error)
	close()
}

type cgStats struct {
	memory        int64
	cpuNanos      uint64
	ioRead, ioWrt uint64
}

type instState struct {
	in          Instance
	containerID string
	netns       string
	vol         *volume
	started     bool
	victim      bool // handed to the agent, waiting for Stopped
}

// Node is the Enforcer: one per node agent.
type Node struct {
	cfg     Config
	cg      cgroupDriver
	net     *netTrees
	mu      sync.Mutex
	inst    map[string]*instState
	victims chan Victim
	stop    chan struct{}
	wg      sync.WaitGroup
}

var _ Enforcer = (*Node)(nil)

// New builds the node's Enforcer; Init sets the host up.
func New(cfg Config) (*Node, error) {
	cfg.defaults()
	v := cfg.CgroupVersion
	if v == 0 {
		v = DetectCgroupVersion()
	}
	switch v {
	case 1:
		return newNode(cfg, &cgroupV1{root: "/sys/fs/cgroup"}), nil
	case 2:
		return newNode(cfg, &cgroupV2{root: "/sys/fs/cgroup"}), nil
	}
	return nil, fmt.Errorf("enforce: cgroup version %d", v)
}

func newNode(cfg Config, cg cgroupDriver) *Node {
	n := &Node{cfg: cfg, cg: cg, inst: map[string]*instState{}, victims: make(chan Victim, 64), stop: make(chan struct{})}
	if cfg.LinkOut > 0 || cfg.LinkIn > 0 {
		n.net = &netTrees{}
	}
	return n
}

// Init creates the node-level parent cgroup (memory limit = allocatable,
// the OOM killer off on v1), starts EMC's watch, and creates the IFB
// devices with their HTB trees. It is idempotent: an agent restart calls
// it again, then Rebuild.
func (n *Node) Init() error {
	if err := n.cg.setupParent(n.cfg.CgroupParent, n.cfg.AllocatableMemory, n.cfg.PressureThreshold); err != nil {
		return err
	}
	if n.net != nil {
		if err := n.net.init(n.cfg); err != nil {
			return err
		}
	}
	if n.gated() {
		if err := checkGate(n.cfg.Gate); err != nil {
			return err
		}
	}
	n.wg.Add(1)
	go n.watch()
	return nil
}

// Close stops EMC's watch. Cgroups, trees and volumes stay: the instances
// keep running while the agent is away.
func (n *Node) Close() error {
	select {
	case <-n.stop:
	default:
		close(n.stop)
	}
	n.wg.Wait()
	n.cg.close()
	return nil
}

// Victims delivers EMC's decisions.
func (n *Node) Victims() <-chan Victim { return n.victims }

// CPUShares maps millicores to cgroup v1 cpu.shares (1024 per core, at
// least 2); dockerd maps shares to cpu.weight on v2.
func CPUShares(milli int64) int64 {
	s := milli * 1024 / 1000
	if s < 2 {
		s = 2
	}
	return s
}

// Prepare creates the instance's volume and returns what the agent adds
// to the container's HostConfig.
func (n *Node) Prepare(in Instance) (Container, error) {
	c := Container{
		CgroupParent: "/" + n.cfg.CgroupParent,
		CPUShares:    CPUShares(in.Request[resource.CPU]),
		CpusetCpus:   in.CPUSet,
	}
	if m := in.Request[resource.Memory]; m > 0 {
		c.MemoryReservation = m // soft limit = request
	}
	limit := in.MemoryLimit
	if limit == 0 {
		limit = n.cfg.AllocatableMemory
	}
	if limit > 0 {
		c.Memory, c.MemorySwap = limit, limit // own ceiling, no swap
	}
	if in.CPULimit > 0 {
		c.CPUPeriod = 100000
		c.CPUQuota = in.CPULimit * 100
	}
	var vol *volume
	if size := in.Request[resource.Disk]; size > 0 {
		var err error
		if vol, err = createVolume(n.cfg.VolumeDir, in.ID, size); err != nil {
			return Container{}, err
		}
		target := in.VolumeTarget
		if target == "" {
			target = n.cfg.VolumeTarget
		}
		c.Mounts = append(c.Mounts, Mount{Source: vol.mnt, Target: target})
	}
	if n.gated() {
		m, err := n.prepareGate(in.ID)
		if err != nil {
			if vol != nil {
				vol.remove()
			}
			return Container{}, err
		}
		c.Mounts, c.Gate = append(c.Mounts, m...), true
	}
	var devs []string
	if vol != nil {
		devs = append(devs, vol.dev)
	}
	if n.cfg.WritableLayerDevice != "" {
		devs = append(devs, n.cfg.WritableLayerDevice)
	}
	for _, d := range devs {
		if bps := uint64(in.Request[resource.DiskIO]); bps > 0 {
			c.BlkioDeviceReadBps = append(c.BlkioDeviceReadBps, ThrottleDevice{d, bps})
			c.BlkioDeviceWriteBps = append(c.BlkioDeviceWriteBps, ThrottleDevice{d, bps})
		}
		if iops := uint64(in.DiskIOPS); iops > 0 {
			c.BlkioDeviceReadIOps = append(c.BlkioDeviceReadIOps, ThrottleDevice{d, iops})
			c.BlkioDeviceWriteIOps = append(c.BlkioDeviceWriteIOps, ThrottleDevice{d, iops})
		}
	}
	n.mu.Lock()
	n.inst[in.ID] = &instState{in: in, vol: vol}
	n.mu.Unlock()
	return c, nil
}

// Started attaches the running container: its HTB classes (rate = its
// netout/netin, ceil = the link, its app priority) and the redirect of its
// host-side veth to the shared trees (the agent then releases the
// container's gate). netns is the container's network namespace
// (/proc/PID/ns/net); "" when it has none to shape.
func (n *Node) Started(in Instance, containerID, netns string) error {
	n.mu.Lock()
	st := n.inst[in.ID]
	if st == nil {
		st = &instState{in: in}
		n.inst[in.ID] = st
	}
	st.in, st.containerID, st.started, st.victim, st.netns = in, containerID, true, false, netns
	if st.vol == nil && in.Request[resource.Disk] > 0 {
		st.vol, _ = openVolume(n.cfg.VolumeDir, in.ID) // adopted after an agent restart
	}
	n.mu.Unlock()
	if n.net != nil && netns != "" {
		return n.net.add(in, netns)
	}
	return nil
}

// Stopped removes what the instance had: classes, the veth redirect (if
// its veth still exists) and its volume.
func (n *Node) Stopped(id string) error {
	n.mu.Lock()
	st := n.inst[id]
	delete(n.inst, id)
	n.mu.Unlock()
	var errs []error
	if n.net != nil {
		errs = append(errs, n.net.remove(id))
	}
	if st != nil && st.vol != nil {
		errs = append(errs, st.vol.remove())
	} else {
		errs = append(errs, removeVolume(n.cfg.VolumeDir, id))
	}
	errs = append(errs, n.removeGate(id))
	return joinErrs(errs)
}

// Rebuild is called after an agent restart with the running instances:
// their volumes are found again (orphans removed), the HTB trees rebuilt
// from scratch with a class per running instance.
func (n *Node) Rebuild(running []Running) error {
	keep := map[string]bool{}
	var errs []error
	for _, r := range running {
		keep[volName(r.ID)] = true
	}
	errs = append(errs, removeOrphanVolumes(n.cfg.VolumeDir, keep))
	errs = append(errs, n.removeGates(func(name string) bool { return keep[name] }))
	if n.net != nil {
		errs = append(errs, n.net.reset(n.cfg))
	}
	for _, r := range running {
		st := &instState{in: r.Instance, containerID: r.ContainerID, netns: r.NetNS, started: true}
		if r.Request[resource.Disk] > 0 {
			v, err := openVolume(n.cfg.VolumeDir, r.ID)
			errs = append(errs, err)
			st.vol = v
		}
		n.mu.Lock()
		n.inst[r.ID] = st
		n.mu.Unlock()
		if n.net != nil && r.NetNS != "" {
			errs = append(errs, n.net.add(r.Instance, r.NetNS))
		}
	}
	return joinErrs(errs)
}

// Sweep removes orphan volumes: neither in keep nor known here.
func (n *Node) Sweep(keep map[string]bool) error {
	k := map[string]bool{}
	n.mu.Lock()
	for id := range n.inst {
		k[volName(id)] = true
	}
	n.mu.Unlock()
	for id := range keep {
		k[volName(id)] = true
	}
	return joinErrs([]error{removeOrphanVolumes(n.cfg.VolumeDir, k), n.removeGates(func(name string) bool { return k[name] })})
}

// Usage is every started instance's usage.
func (n *Node) Usage() map[string]Usage {
	n.mu.Lock()
	sts := make([]instState, 0, len(n.inst)) // copies: Started may change them meanwhile
	for _, st := range n.inst {
		sts = append(sts, *st)
	}
	n.mu.Unlock()
	var cls map[string]classStats
	if n.net != nil {
		cls = n.net.stats()
	}
	out := make(map[string]Usage, len(sts))
	for _, st := range sts {
		u := Usage{MemoryRequest: st.in.Request[resource.Memory]}
		if st.containerID != "" {
			if s, err := n.cg.stats(st.containerID); err == nil {
				u.MemoryBytes, u.CPUNanos, u.IOReadBytes, u.IOWriteBytes = s.memory, s.cpuNanos, s.ioRead, s.ioWrt
			}
		}
		if st.vol != nil {
			u.DiskUsedBytes, u.DiskSizeBytes = st.vol.usage()
		}
		u.TCPRetransmits = retransmits(st.netns)
		if c, ok := cls[st.in.ID]; ok {
			u.NetOutBytes, u.NetOutDrops, u.NetOutOverlim = c.outBytes, c.outDrops, c.outOverlimits
			u.NetInBytes, u.NetInDrops, u.NetInOverlimit = c.inBytes, c.inDrops, c.inOverlimits
		}
		out[st.in.ID] = u
	}
	return out
}

// NodeUsage is the parent cgroup's usage and the sum of the instances'
// disk and network use.
func (n *Node) NodeUsage() Usage {
	var t Usage
	for _, u := range n.Usage() {
		t.MemoryRequest += u.MemoryRequest
		t.DiskUsedBytes += u.DiskUsedBytes
		t.DiskSizeBytes += u.DiskSizeBytes
		t.NetOutBytes += u.NetOutBytes
		t.NetOutDrops += u.NetOutDrops
		t.NetInBytes += u.NetInBytes
		t.NetInDrops += u.NetInDrops
	}
	if s, err := n.cg.parentStats(); err == nil {
		t.MemoryBytes, t.CPUNanos, t.IOReadBytes, t.IOWriteBytes = s.memory, s.cpuNanos, s.ioRead, s.ioWrt
	}
	return t
}

// watch is EMC: on every OOM/pressure event (and every CheckInterval as a
// fallback) it checks the parent and, when it is at its limit, hands the
// agent one victim at a time.
func (n *Node) watch() {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-n.cg.events():
		case <-t.C:
		}
		n.check()
	}
}

func (n *Node) check() {
	at, why := n.cg.pressure()
	if !at {
		return
	}
	n.mu.Lock()
	var cands []candidate
	var pending []string
	for _, st := range n.inst {
		if st.victim {
			pending = append(pending, st.containerID)
		} else if st.containerID != "" {
			cp := *st
			cands = append(cands, candidate{st: &cp})
		}
	}
	n.mu.Unlock()
	// One victim at a time: while a victim's container still exists (its
	// cgroup is there), the agent is stopping it.
	for _, id := range pending {
		if _, err := n.cg.stats(id); err == nil {
			return
		}
	}
	for i := range cands {
		s, err := n.cg.stats(cands[i].st.containerID)
		if err == nil {
			cands[i].usage = s.memory
		}
	}
	v, ok := pickVictim(cands)
	if !ok {
		n.cfg.Log.Warn("EMC: node memory full but no instance above its request", "parent", why)
		return
	}
	n.mu.Lock()
	if st := n.inst[v.st.in.ID]; st != nil {
		st.victim = true
	}
	n.mu.Unlock()
	vic := Victim{ID: v.st.in.ID, MemoryBytes: v.usage, MemoryRequest: v.st.in.Request[resource.Memory], Priority: v.st.in.Priority}
	vic.Reason = fmt.Sprintf("oom-reclaimed: node memory full (%s); instance used %d bytes (working set), %d above its request of %d, priority %d",
		why, vic.MemoryBytes, vic.MemoryBytes-vic.MemoryRequest, vic.MemoryRequest, vic.Priority)
	n.cfg.Log.Warn("EMC victim", "instance", vic.ID, "reason", vic.Reason)
	select {
	case n.victims <- vic:
	case <-n.stop:
	}
}

type candidate struct {
	st    *instState
	usage int64
}

// pickVictim is EMC's choice: among instances above their memory request,
// the lowest priority, then the furthest above its request. Instances
// within their request are never chosen.
func pickVictim(cs []candidate) (candidate, bool) {
	var above []candidate
	for _, c := range cs {
		if c.usage > c.st.in.Request[resource.Memory] {
			above = append(above, c)
		}
	}
	if len(above) == 0 {
		return candidate{}, false
	}
	sort.SliceStable(above, func(i, j int) bool {
		a, b := above[i], above[j]
		if a.st.in.Priority != b.st.in.Priority {
			return a.st.in.Priority < b.st.in.Priority
		}
		oa, ob := a.usage-a.st.in.Request[resource.Memory], b.usage-b.st.in.Request[resource.Memory]
		if oa != ob {
			return oa > ob
		}
		return a.st.in.ID < b.st.in.ID
	})
	return above[0], true
}

func joinErrs(errs []error) error {
	var out []error
	for _, e := range errs {
		if e != nil {
			out = append(out, e)
		}
	}
	switch len(out) {
	case 0:
		return nil
	case 1:
		return out[0]
	}
	return fmt.Errorf("%v", out)
}

var procNetNS = regexp.MustCompile(`^/proc/([0-9]+)/ns/net$`)

// retransmits is Tcp RetransSegs of the namespace's /proc/PID/net/snmp.
func retransmits(netns string) uint64 {
	m := procNetNS.FindStringSubmatch(netns)
	if m == nil {
		return 0
	}
	b, err := os.ReadFile("/proc/" + m[1] + "/net/snmp")
	if err != nil {
		return 0
	}
	var head []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "Tcp:") {
			continue
		}
		f := strings.Fields(l)
		if head == nil {
			head = f
			continue
		}
		for i := range head {
			if head[i] == "RetransSegs" && i < len(f) {
				v, _ := strconv.ParseUint(f[i], 10, 64)
				return v
			}
		}
	}
	return 0
}
