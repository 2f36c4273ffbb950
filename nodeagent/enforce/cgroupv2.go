package enforce

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/cgroups/v3/cgroup2"
)

// cgroupV2 is the driver for a unified hierarchy. There is no
// oom_kill_disable on v2: the parent gets memory.high at the pressure
// threshold (the kernel throttles and reclaims the whole subtree there
// instead of killing) and memory.max at the allocatable memory (the
// kernel's last resort). EMC watches memory.events (high and max
// counters, through containerd/cgroups' inotify EventChan) and memory.current,
// and picks its victim before memory.max is reached. Containers get
// memory.low = request and memory.max = ceiling from dockerd
// (MemoryReservation, Memory).
//
// Not run on the project's machines (cgroup v1 hybrid; the unified mount
// there has no memory controller): unit-tested through a fake cgroup2 tree
// in a temporary directory.
type cgroupV2 struct {
	root   string
	parent string
	limit  int64
	high   int64
	m      *cgroup2.Manager
	ev     chan struct{}
	done   chan struct{}
	once   sync.Once
}

// v2ParentResources is what the parent gets: memory.high at the
// threshold, memory.max at the allocatable memory, and the controllers its
// children need.
func v2ParentResources(limit int64, threshold float64) *cgroup2.Resources {
	r := &cgroup2.Resources{CPU: &cgroup2.CPU{}, IO: &cgroup2.IO{}, Pids: &cgroup2.Pids{}}
	if limit > 0 {
		high := int64(float64(limit) * threshold)
		r.Memory = &cgroup2.Memory{Max: &limit, High: &high}
	} else {
		r.Memory = &cgroup2.Memory{}
	}
	return r
}

func (c *cgroupV2) setupParent(parent string, limit int64, threshold float64) error {
	c.parent, c.limit = parent, limit
	c.ev, c.done = make(chan struct{}, 1), make(chan struct{})
	ctrl, err := os.ReadFile(filepath.Join(c.root, "cgroup.controllers"))
	if err != nil {
		return missing("cgroup v2 unified hierarchy at %s: %v", c.root, err)
	}
	have := map[string]bool{}
	for _, f := range strings.Fields(string(ctrl)) {
		have[f] = true
	}
	for _, need := range []string{"memory", "cpu", "io", "pids"} {
		if !have[need] {
			return missing("cgroup v2 controller %q not in %s/cgroup.controllers", need, c.root)
		}
	}
	res := v2ParentResources(limit, threshold)
	if res.Memory.High != nil {
		c.high = *res.Memory.High
	}
	m, err := cgroup2.NewManager(c.root, "/"+parent, res)
	if err != nil {
		return fmt.Errorf("enforce: cgroup v2 parent /%s: %w", parent, err)
	}
	c.m = m
	evs, errs := m.EventChan()
	go func() {
		for {
			select {
			case <-c.done:
				return
			case _, ok := <-evs:
				if !ok {
					return
				}
				select {
				case c.ev <- struct{}{}:
				default:
				}
			case <-errs:
				return // the periodic check carries on
			}
		}
	}()
	return nil
}

func (c *cgroupV2) events() <-chan struct{} { return c.ev }

func (c *cgroupV2) close() {
	c.once.Do(func() {
		if c.done != nil {
			close(c.done)
		}
	})
}

func (c *cgroupV2) pressure() (bool, string) {
	if c.limit <= 0 {
		return false, ""
	}
	cur := readInt(filepath.Join(c.root, c.parent, "memory.current"))
	ev := readKV(filepath.Join(c.root, c.parent, "memory.events"))
	why := fmt.Sprintf("parent /%s memory.current %d, memory.high %d, memory.max %d, events high %d max %d",
		c.parent, cur, c.high, c.limit, ev["high"], ev["max"])
	return cur >= c.high, why
}

func (c *cgroupV2) statsAt(group string) (cgStats, error) {
	var s cgStats
	m, err := cgroup2.Load(group, cgroup2.WithMountpoint(c.root))
	if err != nil {
		return s, err
	}
	st, err := m.Stat()
	if err != nil {
		return s, err
	}
	if st.Memory != nil {
		s.memory = int64(st.Memory.Usage) - int64(min(st.Memory.InactiveFile, st.Memory.Usage)) // the working set
	}
	if st.CPU != nil {
		s.cpuNanos = st.CPU.UsageUsec * 1000
	}
	if st.Io != nil {
		for _, e := range st.Io.Usage {
			s.ioRead += e.Rbytes
			s.ioWrt += e.Wbytes
		}
	}
	return s, nil
}

func (c *cgroupV2) stats(id string) (cgStats, error) {
	if _, err := os.Stat(filepath.Join(c.root, c.parent, id)); err != nil {
		return cgStats{}, err
	}
	return c.statsAt("/" + c.parent + "/" + id)
}
func (c *cgroupV2) parentStats() (cgStats, error) { return c.statsAt("/" + c.parent) }
