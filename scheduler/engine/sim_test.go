package engine

import (
	"fmt"
	"math"
	"math/rand"
	"sort"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

var shapes = []resource.Vector{
	resource.MustVector("cpu=1", "memory=4Gi", "disk=10Gi", "diskio=10MiB/s", "netin=100Mbit", "netout=100Mbit"),
	resource.MustVector("cpu=2", "memory=4Gi", "disk=10Gi", "diskio=10MiB/s", "netin=100Mbit", "netout=100Mbit"),
	resource.MustVector("cpu=1", "memory=8Gi", "disk=20Gi", "diskio=20MiB/s", "netin=200Mbit", "netout=100Mbit"),
	resource.MustVector("cpu=4", "memory=8Gi", "disk=10Gi", "diskio=10MiB/s", "netin=100Mbit", "netout=200Mbit"),
	resource.MustVector("cpu=500m", "memory=2Gi", "disk=5Gi", "diskio=5MiB/s", "netin=50Mbit", "netout=50Mbit"),
}

var nodeShape = resource.MustVector("cpu=32", "memory=128Gi", "disk=2Ti", "diskio=1GiB/s", "netin=10Gbit", "netout=10Gbit")

type simCluster struct {
	c      *Cluster
	pools  []model.Pool // leaves
	apps   []model.App
	now    time.Time
	rounds int
}

// buildSim makes nodes, a two-level pool tree with weights and some mins,
// and apps asking for about three times the capacity.
func buildSim(t testing.TB, nodes, groups, leavesPer int, seed int64, cfg Config) *simCluster {
	rng := rand.New(rand.NewSource(seed))
	s := &simCluster{c: New(cfg), now: t0}
	for j := 0; j < nodes; j++ {
		s.c.UpsertNode(model.Node{Name: fmt.Sprintf("node-%05d", j), Capacity: nodeShape, State: model.NodeReady,
			IDC: []string{"idc-a", "idc-b"}[j%2], Labels: map[string]string{"rack": fmt.Sprint(j % 10)}})
	}
	total := nodeShape.Scale(int64(nodes))
	leaves := groups * leavesPer
	// mins add up to a fifth of the cluster, on a quarter of the leaves
	minEach := total.Scale(4).Scale(1)
	for d := range minEach {
		minEach[d] = total[d] / 5 / int64((leaves+3)/4)
	}
	for g := 0; g < groups; g++ {
		s.c.UpsertPool(model.Pool{Name: fmt.Sprintf("root.g%d", g), Weight: float64(1 + rng.Intn(3))})
		for l := 0; l < leavesPer; l++ {
			p := model.Pool{Name: fmt.Sprintf("root.g%d.p%d", g, l), Weight: float64(1 + rng.Intn(3)),
				MinSharePreemptionTimeout: model.Duration(10 * time.Second), FairSharePreemptionTimeout: model.Duration(30 * time.Second),
				FairSharePreemptionThreshold: 1}
			if (g*leavesPer+l)%4 == 0 {
				p.Min = resource.Vector{resource.CPU: minEach[resource.CPU], resource.Memory: minEach[resource.Memory]}
			}
			s.c.UpsertPool(p)
			s.pools = append(s.pools, p)
		}
	}
	// demand: about 3× the cluster's cpu, spread over the leaves
	perLeaf := 3 * total[resource.CPU] / int64(leaves)
	for j, p := range s.pools {
		napps := 1 + rng.Intn(3)
		for k := 0; k < napps; k++ {
			shape := shapes[rng.Intn(len(shapes))]
			a := model.App{Spec: model.AppSpec{Name: fmt.Sprintf("app-%d-%d", j, k), Pool: p.Name, Image: "img",
				Instances: int(perLeaf/int64(napps)/shape[resource.CPU]) + 1, Resources: shape},
				Version: 1, State: model.AppRunning, CreatedAt: t0.Add(time.Duration(j*10+k) * time.Second)}
			// Node-level rules the fair share (computed on the cluster as
			// one machine) cannot see are kept loose enough not to bind:
			// a fixed host port (unique to the app) or a spread allows
			// one or two instances per node, so such apps ask for at most
			// half the nodes' worth.
			switch rng.Intn(5) {
			case 0:
				a.Spec.Ports = []model.Port{{Name: "http", ContainerPort: 80}, {Name: "admin", ContainerPort: 81}}
			case 1:
				a.Spec.Spread = 2
				a.Spec.Instances = min(a.Spec.Instances, nodes)
			case 2:
				a.Spec.Ports = []model.Port{{Name: "fixed", ContainerPort: 80, HostPort: 10000 + len(s.apps)}}
				a.Spec.Instances = min(a.Spec.Instances, nodes/2)
			}
			s.apps = append(s.apps, a)
		}
	}
	return s
}

// converge plans, applies and plays the node agents until a plan changes
// nothing, advancing the clock 5 s a round; converged means quiet for
// longer than every timeout, and still quiet once GiveBackAfter has
// passed (when pools may take back what they gave each other).
func (s *simCluster) converge(t testing.TB, maxRounds int) {
	t.Helper()
	for r := 0; r < maxRounds; r++ {
		p := s.round(5 * time.Second)
		checkFairCache(t, s.c)
		if p.Empty() && len(s.c.reservations) == 0 &&
			s.quiet(8, 5*time.Second) && s.quiet(1, GiveBackAfter) && s.quiet(8, 5*time.Second) {
			return
		}
	}
	t.Fatalf("no convergence in %d rounds", maxRounds)
}

// round advances the clock by d, plans, applies and plays the agents.
func (s *simCluster) round(d time.Duration) *Plan {
	s.now = s.now.Add(d)
	p := s.c.Plan(s.now)
	s.c.Apply(p)
	agent(s.c)
	s.rounds++
	return p
}

// quiet: k rounds d apart change nothing.
func (s *simCluster) quiet(k int, d time.Duration) bool {
	for ; k > 0; k-- {
		if !s.round(d).Empty() {
			return false
		}
	}
	return true
}

// deviations is each leaf's distance from its weighted fair share in
// dominant share, in units of the largest instance in the cluster, and the
// worst of them. The unit is not the pool's own instance: with whole
// instances no allocation need be within one of each pool's own. Two
// pools of equal weight on 11 cpus, one asking for 4-cpu instances and
// one for 1-cpu ones, have fair shares of 5.5 each; the first holds 4 or
// 8, so the second holds 7 or 3, 1.5 or 2.5 of its own instances away.
// Within one largest instance is what whole instances allow.
func (s *simCluster) deviations() (dev map[string]float64, worst float64, worstPool string) {
	c := s.c
	fs := c.FairShares()
	m := allDims
	var largest float64
	for _, a := range c.apps {
		largest = math.Max(largest, share(a.m.Spec.Resources, c.total, &m))
	}
	dev = map[string]float64{}
	for _, pm := range s.pools {
		p := c.pools[pm.Name]
		if p.sk.demand.IsZero() {
			continue
		}
		d := (share(p.sk.usage, c.total, &m) - share(fs[pm.Name], c.total, &m)) / largest
		dev[pm.Name] = d
		if math.Abs(d) > worst {
			worst, worstPool = math.Abs(d), pm.Name
		}
	}
	return dev, worst, worstPool
}

// checkFairness: every leaf's dominant share within one instance of its
// weighted fair share (see deviations), every min met.
func (s *simCluster) checkFairness(t testing.TB) {
	t.Helper()
	c := s.c
	fs := c.FairShares()
	m := allDims
	dev, worst, _ := s.deviations()
	for _, pm := range s.pools {
		p := c.pools[pm.Name]
		if d, ok := dev[pm.Name]; ok && math.Abs(d) > 1+1e-9 {
			t.Errorf("pool %s: %+.2f largest instances from its fair share (usage %v, fair %v)",
				pm.Name, d, p.sk.usage, fs[pm.Name])
		}
		minT := pm.Min.Min(p.sk.demand)
		if needy(p.sk.usage, minT, c.total, &m) {
			t.Errorf("pool %s below its min: usage %v min %v", pm.Name, p.sk.usage, minT)
		}
	}
	t.Logf("worst deviation from fair share: %.2f of the largest instance", worst)
}

// simSize is the simulation's cluster: 600 nodes, 8 groups of 15 leaf
// pools; 200 nodes, 6 of 8 with -short.
func simSize() (nodes, groups, leaves int) {
	if testing.Short() {
		return 200, 6, 8
	}
	return 600, 8, 15
}

// runSim builds the cluster of seed, submits every app at once and
// converges (phase 1), then changes the world (phase 2: a tenth of the
// nodes go down, some apps scale down, some stop, some scale up) and
// converges again; after each phase it calls check.
func runSim(t testing.TB, seed int64, scoring Scoring, check func(phase int, s *simCluster)) {
	nodes, groups, leaves := simSize()
	s := buildSim(t, nodes, groups, leaves, seed, Config{Scoring: scoring})
	for _, a := range s.apps {
		s.c.UpsertApp(a)
	}
	s.converge(t, 200)
	check(1, s)
	rng := rand.New(rand.NewSource(7))
	for j := 0; j < nodes/10; j++ {
		n := s.c.nodeList[rng.Intn(len(s.c.nodeList))].m
		n.State = model.NodeDown
		s.c.UpsertNode(n)
	}
	for j := range s.apps {
		switch rng.Intn(6) {
		case 0:
			s.apps[j].Spec.Instances /= 4
		case 1:
			s.apps[j].State = model.AppStopped
		case 2:
			// not those whose per-node rules would then bind
			if s.apps[j].Spec.Spread == 0 && len(s.apps[j].Spec.Ports) == 0 {
				s.apps[j].Spec.Instances *= 2
			}
		}
		s.c.UpsertApp(s.apps[j])
	}
	s.converge(t, 400)
	check(2, s)
}

// TestSimulationConverges: on eight clusters with binpack scoring (the
// default) and eleven with spread, every pool ends within one instance of
// its fair share, before and after a tenth of the nodes go down. The
// spread clusters include those that ended further off before preemption
// could move instances of pools at their share out of a large instance's
// way (seeds 3, 4, 16, 17, 40 at 200 nodes; 8, 16 at 600) and those on
// which two pools traded one instance's room for ever under earlier
// forms of the rules (41 at 200 nodes, 21 at 600; see GiveBackAfter).
// BenchmarkFairnessSweep measures many more (docs/benchmarks.md).
func TestSimulationConverges(t *testing.T) {
	type run struct {
		scoring Scoring
		seed    int64
	}
	var runs []run
	for _, seed := range []int64{42, 1, 2, 3, 4, 8, 16, 17, 21, 40, 41} {
		runs = append(runs, run{Spread, seed})
	}
	for _, seed := range []int64{42, 1, 2, 3, 4, 5, 6, 7} {
		runs = append(runs, run{Binpack, seed})
	}
	for _, r := range runs {
		t.Run(fmt.Sprintf("%v/seed=%d", r.scoring, r.seed), func(t *testing.T) {
			runSim(t, r.seed, r.scoring, func(phase int, s *simCluster) {
				checkInvariants(t, s.c)
				s.checkFairness(t)
				t.Logf("phase %d: %d rounds, %d instances", phase, s.rounds, len(s.c.insts))
			})
		})
	}
}

func sortedPoolNames(c *Cluster) []string {
	var out []string
	for n := range c.pools {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
