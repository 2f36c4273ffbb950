package enforce

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gaia-registry/gaia/scheduler/resource"
)

// BenchmarkNode50 is §8 (make bench-node): the agent-side time to set up
// an instance's limits including its tc classes and veth redirect (50
// instances, each in a network namespace of its own on a test bridge), a
// volume's creation separately, and the control overhead at steady state
// with 50 instances: the CPU this process uses while EMC watches and
// Usage() is read every second (the agent's report), over 10 s.
func BenchmarkNode50(b *testing.B) {
	needNode(b)
	const N = 50
	br := "gxbbr"
	cleanup := func() {
		for i := 0; i < N; i++ {
			_ = exec.Command("ip", "netns", "del", fmt.Sprintf("gxb-%d", i)).Run()
		}
		_ = exec.Command("ip", "link", "del", br).Run()
		_ = exec.Command("ip", "link", "del", "gxb-out").Run()
		_ = exec.Command("ip", "link", "del", "gxb-in").Run()
	}
	cleanup()
	defer cleanup()
	sh(b, "ip link add "+br+" type bridge && ip link set "+br+" up")
	for i := 0; i < N; i++ {
		sh(b, fmt.Sprintf("ip netns add gxb-%[1]d && ip link add hb-%[1]d type veth peer name cb-%[1]d && "+
			"ip link set cb-%[1]d netns gxb-%[1]d && ip link set hb-%[1]d master %[2]s up && "+
			"nsenter --net=/run/netns/gxb-%[1]d sh -c 'ip addr add 10.215.%[3]d.%[4]d/16 dev cb-%[1]d && ip link set cb-%[1]d up'",
			i, br, i/200, i%200+2))
	}
	for it := 0; it < b.N; it++ {
		parent := fmt.Sprintf("gaia-enforce-bench-%d", os.Getpid())
		n := testNode(b, Config{CgroupParent: parent, AllocatableMemory: 4 << 30, LinkOut: 1_000_000_000, LinkIn: 1_000_000_000,
			IFBOut: "gxb-out", IFBIn: "gxb-in", CheckInterval: time.Second})
		var setup []time.Duration
		for i := 0; i < N; i++ {
			var r resource.Vector
			r[resource.CPU], r[resource.Memory], r[resource.NetOut], r[resource.NetIn] = 100, 64<<20, 10_000_000, 10_000_000
			in := Instance{ID: fmt.Sprintf("bench-%d", i), Priority: i % 3, Request: r}
			cid := fmt.Sprintf("c%d", i)
			for _, ctrl := range []string{"memory", "cpuacct", "blkio"} { // what dockerd would create
				_ = os.MkdirAll(filepath.Join("/sys/fs/cgroup", ctrl, parent, cid), 0o755)
			}
			start := time.Now()
			if _, err := n.Prepare(in); err != nil {
				b.Fatal(err)
			}
			if err := n.Started(in, cid, fmt.Sprintf("/run/netns/gxb-%d", i)); err != nil {
				b.Fatal(err)
			}
			setup = append(setup, time.Since(start))
		}
		sort.Slice(setup, func(i, j int) bool { return setup[i] < setup[j] })
		var sum time.Duration
		for _, d := range setup {
			sum += d
		}
		mean := sum / N
		b.ReportMetric(float64(mean.Microseconds())/1000, "setup-ms/instance")
		b.ReportMetric(float64(setup[N-1].Microseconds())/1000, "setup-max-ms")
		fmt.Printf("setup of an instance's limits incl. tc classes and veth redirect (%d instances): mean %.2f ms, median %.2f ms, max %.2f ms\n",
			N, ms(mean), ms(setup[N/2]), ms(setup[N-1]))

		var vol []time.Duration
		for i := 0; i < 5; i++ {
			var r resource.Vector
			r[resource.Disk], r[resource.DiskIO] = 256<<20, 10<<20
			id := fmt.Sprintf("bench-vol-%d", i)
			start := time.Now()
			if _, err := n.Prepare(Instance{ID: id, Request: r}); err != nil {
				b.Fatal(err)
			}
			vol = append(vol, time.Since(start))
			if err := n.Stopped(id); err != nil {
				b.Fatal(err)
			}
		}
		sort.Slice(vol, func(i, j int) bool { return vol[i] < vol[j] })
		fmt.Printf("a 256 MiB loop-file ext4 volume (mkfs, losetup, mount): median %.1f ms, max %.1f ms\n", ms(vol[2]), ms(vol[4]))
		b.ReportMetric(ms(vol[2]), "volume-ms")

		var r0, r1 unix.Rusage
		_ = unix.Getrusage(unix.RUSAGE_SELF, &r0)
		t0 := time.Now()
		for time.Since(t0) < 10*time.Second {
			time.Sleep(time.Second)
			if u := n.Usage(); len(u) != N {
				b.Fatalf("usage of %d instances", len(u))
			}
		}
		_ = unix.Getrusage(unix.RUSAGE_SELF, &r1)
		cpu := time.Duration(r1.Utime.Nano()+r1.Stime.Nano()-r0.Utime.Nano()-r0.Stime.Nano()) * time.Nanosecond
		pct := 100 * cpu.Seconds() / time.Since(t0).Seconds()
		fmt.Printf("steady state with %d instances (EMC watch + Usage every 1 s): %.3f%% of one core (%v CPU in %v)\n",
			N, pct, cpu.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
		b.ReportMetric(pct, "steady-cpu-%")

		start := time.Now()
		for i := 0; i < N; i++ {
			if err := n.Stopped(fmt.Sprintf("bench-%d", i)); err != nil {
				b.Fatal(err)
			}
			for _, ctrl := range []string{"memory", "cpuacct", "blkio"} {
				_ = os.Remove(filepath.Join("/sys/fs/cgroup", ctrl, parent, fmt.Sprintf("c%d", i)))
			}
		}
		fmt.Printf("teardown: %.2f ms per instance\n", ms(time.Since(start)/N))
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
