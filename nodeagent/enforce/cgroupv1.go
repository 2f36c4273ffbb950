package enforce

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// cgroupV1 is the driver for legacy and hybrid hierarchies (one mount per
// controller under root).
type cgroupV1 struct {
	root   string
	parent string
	limit  int64
	efd    int
	ev     chan struct{}
	done   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

var v1Controllers = []string{"memory", "cpu", "cpuacct", "cpuset", "blkio", "pids"}

func (c *cgroupV1) path(ctrl string, elem ...string) string {
	return filepath.Join(append([]string{c.root, ctrl, c.parent}, elem...)...)
}

func (c *cgroupV1) setupParent(parent string, limit int64, threshold float64) error {
	c.parent, c.limit = parent, limit
	c.ev, c.done, c.efd = make(chan struct{}, 1), make(chan struct{}), -1
	for _, ctrl := range v1Controllers {
		if _, err := os.Stat(filepath.Join(c.root, ctrl)); err != nil {
			return missing("cgroup v1 controller %q is not mounted at %s", ctrl, filepath.Join(c.root, ctrl))
		}
		if err := os.MkdirAll(c.path(ctrl), 0o755); err != nil {
			return fmt.Errorf("enforce: parent cgroup: %w", err)
		}
	}
	// A new cpuset is empty; children cannot get CPUs until it has some.
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		cur, _ := os.ReadFile(c.path("cpuset", f))
		if strings.TrimSpace(string(cur)) == "" {
			all, err := os.ReadFile(filepath.Join(c.root, "cpuset", f))
			if err != nil {
				return err
			}
			if err := os.WriteFile(c.path("cpuset", f), all, 0); err != nil {
				return fmt.Errorf("enforce: %s: %w", f, err)
			}
		}
	}
	if limit <= 0 {
		return nil
	}
	// The parent's limit is the node's allocatable memory. memsw (when
	// swap accounting is on) must stay ≥ the memory limit: raise memsw
	// first when growing, lower it last when shrinking.
	lim := strconv.FormatInt(limit, 10)
	memsw := c.path("memory", "memory.memsw.limit_in_bytes")
	_, swErr := os.Stat(memsw)
	if swErr == nil {
		_ = os.WriteFile(memsw, []byte("-1"), 0)
	}
	if err := os.WriteFile(c.path("memory", "memory.limit_in_bytes"), []byte(lim), 0); err != nil {
		return fmt.Errorf("enforce: parent memory limit %d: %w", limit, err)
	}
	if swErr == nil {
		if err := os.WriteFile(memsw, []byte(lim), 0); err != nil {
			return fmt.Errorf("enforce: parent memsw limit: %w", err)
		}
	}
	// The agent decides, not the kernel: with the OOM killer off, tasks
	// hitting the parent's limit wait (under_oom 1) until EMC frees memory.
	if err := os.WriteFile(c.path("memory", "memory.oom_control"), []byte("1"), 0); err != nil {
		return missing("memory.oom_control (oom_kill_disable) on %s: %v", c.path("memory"), err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return missing("eventfd: %v", err)
	}
	c.efd = efd
	if err := c.register("memory.oom_control", ""); err != nil {
		return missing("memory cgroup OOM notification (cgroup.event_control): %v", err)
	}
	th := int64(float64(limit) * threshold)
	if err := c.register("memory.usage_in_bytes", strconv.FormatInt(th, 10)); err != nil {
		return missing("memory cgroup usage threshold notification: %v", err)
	}
	c.wg.Add(1)
	go c.read()
	return nil
}

func (c *cgroupV1) register(file, arg string) error {
	f, err := os.Open(c.path("memory", file))
	if err != nil {
		return err
	}
	defer f.Close() // the kernel keeps its own reference
	line := fmt.Sprintf("%d %d", c.efd, f.Fd())
	if arg != "" {
		line += " " + arg
	}
	return os.WriteFile(c.path("memory", "cgroup.event_control"), []byte(line), 0)
}

func (c *cgroupV1) read() {
	defer c.wg.Done()
	buf := make([]byte, 8)
	for {
		fds := []unix.PollFd{{Fd: int32(c.efd), Events: unix.POLLIN}}
		_, _ = unix.Poll(fds, 500)
		select {
		case <-c.done:
			return
		default:
		}
		if fds[0].Revents&unix.POLLIN == 0 {
			continue
		}
		if _, err := unix.Read(c.efd, buf); err != nil {
			continue
		}
		select {
		case c.ev <- struct{}{}:
		default:
		}
	}
}

func (c *cgroupV1) events() <-chan struct{} { return c.ev }

func (c *cgroupV1) close() {
	c.once.Do(func() {
		if c.done != nil {
			close(c.done)
		}
		c.wg.Wait()
		if c.efd >= 0 {
			unix.Close(c.efd)
		}
	})
}

func (c *cgroupV1) pressure() (bool, string) {
	if c.limit <= 0 {
		return false, ""
	}
	kv := readKV(c.path("memory", "memory.oom_control"))
	usage := readInt(c.path("memory", "memory.usage_in_bytes"))
	why := fmt.Sprintf("parent %s usage %d of limit %d, under_oom %d", c.parent, usage, c.limit, kv["under_oom"])
	return kv["under_oom"] == 1, why
}

func (c *cgroupV1) statsAt(elem ...string) (cgStats, error) {
	var s cgStats
	mem := c.path("memory", append(elem, "memory.usage_in_bytes")...)
	if _, err := os.Stat(mem); err != nil {
		return s, err
	}
	// The working set, as the kernel reclaims it last: usage less the
	// inactive page cache (what EMC compares with the request).
	s.memory = readInt(mem) - readKV(c.path("memory", append(elem, "memory.stat")...))["total_inactive_file"]
	s.cpuNanos = uint64(readInt(c.path("cpuacct", append(elem, "cpuacct.usage")...)))
	s.ioRead, s.ioWrt = blkioBytes(c.path("blkio", append(elem, "blkio.throttle.io_service_bytes")...))
	return s, nil
}

func (c *cgroupV1) stats(id string) (cgStats, error) { return c.statsAt(id) }
func (c *cgroupV1) parentStats() (cgStats, error)    { return c.statsAt() }

// blkioBytes sums the Read and Write lines of blkio.throttle.io_service_bytes
// (or io_service_bytes_recursive).
func blkioBytes(path string) (r, w uint64) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 3 {
			continue
		}
		n, _ := strconv.ParseUint(fs[2], 10, 64)
		switch fs[1] {
		case "Read":
			r += n
		case "Write":
			w += n
		}
	}
	return r, w
}

func readInt(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

func readKV(path string) map[string]int64 {
	out := map[string]int64{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(b), "\n") {
		fs := strings.Fields(l)
		if len(fs) == 2 {
			n, _ := strconv.ParseInt(fs[1], 10, 64)
			out[fs[0]] = n
		}
	}
	return out
}
