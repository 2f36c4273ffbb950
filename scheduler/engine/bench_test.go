package engine

import (
	"fmt"
	"math"
	"math/rand"
	"runtime"
	"sort"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// BenchmarkPlacement10kNodes is issue 11 §6: a simulated cluster of
// 10,000 nodes and 2,500 pools (50 groups of 50 leaves, weights 1-3) fed
// 150,000 instances in bursts of apps (10-120 instances each, mixed
// shapes, some with IDC constraints, spread, dynamic or fixed host
// ports). Each burst is one Plan and one Apply, as the server's loop does.
// Reported: placements per second over the time spent in Plan and Apply,
// p50/p99 of a single placement decision (choosing the pool, the app and
// the node and recording the placement), p99 of a whole burst's Plan, and
// the heap in use at the end. The capacity and port invariants, and
// fairness (every pool within one instance of its fair share; here the
// cluster is big enough for all the demand, so that is all of it), are
// checked at the end. Run it with `make bench-scheduler`.
func BenchmarkPlacement10kNodes(b *testing.B) {
	for k := 0; k < b.N; k++ {
		benchPlacement(b, 10000, 50, 50, 150000, true)
	}
}

func benchPlacement(b testing.TB, nodes, groups, leavesPer, target int, metrics bool) *Cluster {
	start, stop, report := func() {}, func() {}, func(float64, string) {}
	if bb, ok := b.(*testing.B); ok {
		start, stop = bb.StartTimer, bb.StopTimer
		if metrics {
			report = bb.ReportMetric
		}
	}
	stop()
	rng := rand.New(rand.NewSource(1))
	var decisions []time.Duration
	c := New(Config{Scoring: Binpack, OnDecision: func(d time.Duration) { decisions = append(decisions, d) }})
	for j := 0; j < nodes; j++ {
		c.UpsertNode(model.Node{Name: fmt.Sprintf("node-%05d", j), Capacity: nodeShape, State: model.NodeReady,
			IDC: []string{"idc-a", "idc-b", "idc-c"}[j%3], Labels: map[string]string{"rack": fmt.Sprint(j % 40)}})
	}
	var pools []string
	for g := 0; g < groups; g++ {
		c.UpsertPool(model.Pool{Name: fmt.Sprintf("root.g%02d", g), Weight: float64(1 + rng.Intn(3))})
		for l := 0; l < leavesPer; l++ {
			name := fmt.Sprintf("root.g%02d.p%02d", g, l)
			c.UpsertPool(model.Pool{Name: name, Weight: float64(1 + rng.Intn(3))})
			pools = append(pools, name)
		}
	}
	// the apps, in submission order
	var apps []model.App
	total := 0
	for total < target {
		n := 10 + rng.Intn(111)
		if total+n > target {
			n = target - total
		}
		shape := shapes[rng.Intn(len(shapes))]
		a := model.App{Spec: model.AppSpec{Name: fmt.Sprintf("app-%05d", len(apps)), Pool: pools[rng.Intn(len(pools))],
			Image: "img", Instances: n, Resources: shape}, Version: 1, State: model.AppRunning, CreatedAt: t0}
		switch rng.Intn(10) {
		case 0:
			a.Spec.Constraints.IDC = "idc-b"
		case 1:
			a.Spec.Spread = 1
			a.Spec.Instances = min(n, nodes/4)
		case 2, 3:
			a.Spec.Ports = []model.Port{{Name: "http", ContainerPort: 8080}}
		case 4:
			a.Spec.Ports = []model.Port{{Name: "fixed", ContainerPort: 80, HostPort: 10000 + len(apps)%5000}}
		}
		apps = append(apps, a)
		total += a.Spec.Instances
	}
	runtime.GC()

	var planTime, applyTime time.Duration
	var bursts []time.Duration
	placed := 0
	now := t0
	for next := 0; next < len(apps); {
		// a burst: 1,000-3,000 instances' worth of apps at once
		want := 1000 + rng.Intn(2001)
		got := 0
		for next < len(apps) && got < want {
			c.UpsertApp(apps[next])
			got += apps[next].Spec.Instances
			next++
		}
		now = now.Add(time.Second)
		start()
		t1 := time.Now()
		p := c.Plan(now)
		t2 := time.Now()
		c.Apply(p)
		t3 := time.Now()
		stop()
		planTime += t2.Sub(t1)
		applyTime += t3.Sub(t2)
		bursts = append(bursts, t2.Sub(t1))
		placed += len(p.Place)
		if len(p.Unplaceable) > 0 {
			b.Fatalf("burst left %d apps unplaced, e.g. %+v", len(p.Unplaceable), p.Unplaceable[0])
		}
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)

	// invariants
	if placed != target {
		b.Fatalf("placed %d of %d", placed, target)
	}
	checkInvariants(b, c)
	fs := c.FairShares()
	m := allDims
	for _, name := range pools {
		p := c.pools[name]
		var one float64
		for _, a := range p.apps {
			one = math.Max(one, share(a.m.Spec.Resources, c.total, &m))
		}
		if d := math.Abs(share(p.sk.usage, c.total, &m) - share(fs[name], c.total, &m)); d > one+1e-9 {
			b.Fatalf("pool %s off its fair share by %.5f (one instance %.5f)", name, d, one)
		}
	}

	sort.Slice(decisions, func(i, j int) bool { return decisions[i] < decisions[j] })
	sort.Slice(bursts, func(i, j int) bool { return bursts[i] < bursts[j] })
	q := func(ds []time.Duration, f float64) time.Duration { return ds[int(f*float64(len(ds)-1))] }
	report(float64(placed)/(planTime+applyTime).Seconds(), "placements/s")
	report(float64(placed)/planTime.Seconds(), "plan-placements/s")
	report(float64(q(decisions, 0.50).Nanoseconds())/1e3, "p50-decision-µs")
	report(float64(q(decisions, 0.99).Nanoseconds())/1e3, "p99-decision-µs")
	report(float64(q(bursts, 0.99).Nanoseconds())/1e6, "p99-burst-plan-ms")
	report(float64(len(bursts)), "bursts")
	report(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
	b.Logf("%d nodes, %d pools, %d apps, %d instances in %d bursts: plan %v, apply %v; decision p50 %v p99 %v max %v; burst plan p50 %v p99 %v; heap in use %d MiB",
		nodes, len(pools), len(apps), placed, len(bursts), planTime, applyTime, q(decisions, 0.5), q(decisions, 0.99), decisions[len(decisions)-1],
		q(bursts, 0.5), q(bursts, 0.99), ms.HeapInuse>>20)
	return c
}

// BenchmarkPlanSteady10kNodes: the same cluster once it holds its 150,000
// instances, every pool with preemption timeouts (so each plan also
// computes the fair shares and checks starvation) and half of the apps
// scaled up by 10 (placed by one plan, not timed). It then times ten plans
// of the server's loop in that steady state, where nothing changes: the
// fixed cost of a scheduling pass at this size.
func BenchmarkPlanSteady10kNodes(b *testing.B) {
	for k := 0; k < b.N; k++ {
		b.StopTimer()
		c := benchPlacement(b, 10000, 50, 50, 150000, false)
		for _, p := range c.pools {
			if p.parent != nil {
				m := p.m
				m.MinSharePreemptionTimeout = model.Duration(time.Minute)
				m.FairSharePreemptionTimeout = model.Duration(5 * time.Minute)
				c.UpsertPool(m)
			}
		}
		// half of the apps ask for 10 more; the first plan places them
		now := t0.Add(time.Hour)
		for j, a := range c.sortedApps() {
			if j%2 == 0 {
				m := a.m
				m.Spec.Instances += 10
				c.UpsertApp(m)
			}
		}
		first := c.Plan(now)
		c.Apply(first)
		checkInvariants(b, c)
		var ds []time.Duration
		for j := 0; j < 10; j++ {
			now = now.Add(time.Second)
			b.StartTimer()
			t1 := time.Now()
			p := c.Plan(now)
			ds = append(ds, time.Since(t1))
			b.StopTimer()
			if !p.Empty() {
				b.Fatalf("steady plan changed something: %d placed, %d stopped", len(p.Place), len(p.Stop))
			}
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1e3, "p50-plan-ms")
		b.ReportMetric(float64(ds[len(ds)-1].Microseconds())/1e3, "max-plan-ms")
		b.Logf("steady plans: p50 %v max %v (first plan placed %d)", ds[len(ds)/2], ds[len(ds)-1], len(first.Place))
	}
}

// A small version of the benchmark that runs with the tests, so the
// benchmark's code and its invariant checks stay working.
func TestPlacementBenchSmall(t *testing.T) {
	if c := benchPlacement(t, 400, 5, 10, 3000, false); len(c.insts) != 3000 {
		t.Fatalf("%d instances", len(c.insts))
	}
}

var _ = resource.CPU
