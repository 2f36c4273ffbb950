package engine

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
)

// b fills a 10-cpu cluster (two nodes of 5) before a arrives.
func fullCluster(t *testing.T, a, b model.Pool) *Cluster {
	t.Helper()
	c := New(Config{})
	addNode(c, "n1", vec("cpu=5", "memory=50Gi"))
	addNode(c, "n2", vec("cpu=5", "memory=50Gi"))
	c.UpsertPool(a)
	c.UpsertPool(b)
	addApp(c, "b", b.Name, 10, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0.Add(-time.Hour))
	agent(c)
	addApp(c, "a", a.Name, 10, vec("cpu=1", "memory=1Gi"))
	return c
}

func preemptedFor(p *Plan, pool string) int {
	k := 0
	for _, s := range p.Stop {
		if s.Reason == ReasonPreempted && s.Pool == pool {
			k++
		}
	}
	return k
}

func TestMinSharePreemption(t *testing.T) {
	c := fullCluster(t,
		model.Pool{Name: "root.a", Min: vec("cpu=4"), MinSharePreemptionTimeout: model.Duration(30 * time.Second)},
		model.Pool{Name: "root.b"})
	// starved from t0; nothing before the timeout
	for _, d := range []time.Duration{0, 29 * time.Second} {
		if p := step(t, c, t0.Add(d)); len(p.Stop) != 0 || len(p.Place) != 0 {
			t.Fatalf("at +%v: %+v", d, p)
		}
	}
	p := step(t, c, t0.Add(30*time.Second))
	if got := preemptedFor(p, "root.a"); got != 4 || len(p.Place) != 0 {
		t.Fatalf("at timeout: %d preempted for root.a (want 4), %d placed", got, len(p.Place))
	}
	// the victims are still stopping: no more preemption, nothing placed
	settled(t, c, t0.Add(31*time.Second), "while stopping")
	agent(c) // the victims stop
	p = step(t, c, t0.Add(32*time.Second))
	if got := placedPer(p)["a"]; got != 4 {
		t.Fatalf("after the victims stopped: placed %v, want a:4", placedPer(p))
	}
	if n := counts(c); n["a"] != 4 || n["b"] != 6 {
		t.Fatalf("live %v, want a:4 b:6", n)
	}
	// at its min, a is not starved for its min any more (no fair-share timeout)
	agent(c)
	if p := step(t, c, t0.Add(time.Hour)); len(p.Stop) != 0 {
		t.Fatalf("after min met: %+v", p.Stop)
	}
}

func TestFairSharePreemption(t *testing.T) {
	c := fullCluster(t,
		model.Pool{Name: "root.a", FairSharePreemptionTimeout: model.Duration(time.Minute), FairSharePreemptionThreshold: 0.5},
		model.Pool{Name: "root.b"})
	if p := step(t, c, t0); len(p.Stop) != 0 {
		t.Fatalf("at once: %+v", p.Stop)
	}
	if fs := c.FairShares(); fs["root.a"][0] != 5000 || fs["root.b"][0] != 5000 {
		t.Fatalf("fair shares %v %v", fs["root.a"], fs["root.b"])
	}
	p := step(t, c, t0.Add(time.Minute))
	// below half its fair share for a minute: taken up to its fair share, 5
	if got := preemptedFor(p, "root.a"); got != 5 {
		t.Fatalf("preempted %d for root.a, want 5", got)
	}
	agent(c)
	step(t, c, t0.Add(time.Minute+time.Second))
	agent(c)
	if n := counts(c); n["a"] != 5 || n["b"] != 5 {
		t.Fatalf("live %v, want a:5 b:5", n)
	}
	// at fair share nobody preempts any more
	if p := step(t, c, t0.Add(time.Hour)); len(p.Stop) != 0 {
		t.Fatalf("at fair share: %+v", p.Stop)
	}
}

// Above the threshold (here 4 of a fair share of 5 with threshold 0.5) a
// pool is not starved for its fair share.
func TestFairShareThreshold(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=10", "memory=50Gi"))
	c.UpsertPool(model.Pool{Name: "root.a", FairSharePreemptionTimeout: model.Duration(time.Minute), FairSharePreemptionThreshold: 0.5})
	addApp(c, "a", "root.a", 3, vec("cpu=1", "memory=1Gi"))
	addApp(c, "b", "root.b", 7, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0)
	agent(c)
	addApp(c, "a", "root.a", 10, vec("cpu=1", "memory=1Gi"))
	addApp(c, "b", "root.b", 10, vec("cpu=1", "memory=1Gi"))
	for _, d := range []time.Duration{time.Second, time.Hour} {
		if p := step(t, c, t0.Add(d)); len(p.Stop) != 0 {
			t.Fatalf("a at 3 of fair share 5 (threshold 2.5) preempted: %+v", p.Stop)
		}
	}
}

func TestAllowPreemptionFromFalse(t *testing.T) {
	c := fullCluster(t,
		model.Pool{Name: "root.a", Min: vec("cpu=4"), MinSharePreemptionTimeout: model.Duration(time.Second)},
		model.Pool{Name: "root.b", AllowPreemptionFrom: model.Bool(false)})
	for _, d := range []time.Duration{0, time.Minute, time.Hour} {
		if p := step(t, c, t0.Add(d)); len(p.Stop) != 0 {
			t.Fatalf("preempted from a pool that forbids it: %+v", p.Stop)
		}
	}
	// a parent that forbids it protects its children too
	c2 := fullCluster(t,
		model.Pool{Name: "root.a", Min: vec("cpu=4"), MinSharePreemptionTimeout: model.Duration(time.Second)},
		model.Pool{Name: "root.prod.b"})
	c2.UpsertPool(model.Pool{Name: "root.prod", AllowPreemptionFrom: model.Bool(false)})
	for _, d := range []time.Duration{0, time.Minute} {
		if p := step(t, c2, t0.Add(d)); len(p.Stop) != 0 {
			t.Fatalf("preempted under a parent that forbids it: %+v", p.Stop)
		}
	}
}

// Victims: lowest priority first, then the fewest instances.
func TestPreemptionVictimOrder(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=4", "memory=40Gi"))
	addNode(c, "n2", vec("cpu=4", "memory=40Gi"))
	c.UpsertPool(model.Pool{Name: "root.a", Min: vec("cpu=2"), MinSharePreemptionTimeout: model.Duration(time.Second)})
	// n1: four small low-priority instances; n2: two big ones of priority 5
	addApp(c, "low", "root.b", 4, vec("cpu=1", "memory=1Gi"), func(a *model.App) { a.Spec.Constraints.IDC = "" })
	step(t, c, t0)
	addApp(c, "high", "root.b", 2, vec("cpu=2", "memory=1Gi"), func(a *model.App) { a.Spec.Priority = 5 })
	step(t, c, t0)
	agent(c)
	if got := c.NodeUsed("n1"); got[0] != 4000 {
		t.Fatalf("setup: n1 used %v", got)
	}
	addApp(c, "a", "root.a", 1, vec("cpu=2", "memory=1Gi"))
	step(t, c, t0.Add(time.Minute))
	p := step(t, c, t0.Add(2*time.Minute))
	var victims []string
	for _, s := range p.Stop {
		m, _ := c.Instance(s.ID)
		victims = append(victims, m.App)
	}
	// two low-priority instances on n1 rather than one priority-5 one on n2
	if len(victims) != 2 || victims[0] != "low" || victims[1] != "low" {
		t.Fatalf("victims %v, want [low low]", victims)
	}
}

func TestPriorityPreemptionInPool(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=4", "memory=40Gi"))
	addApp(c, "batch", "root.p", 4, vec("cpu=1", "memory=1Gi"))
	addApp(c, "other", "root.q", 0, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0)
	agent(c)
	addApp(c, "web", "root.p", 2, vec("cpu=1", "memory=1Gi"), func(a *model.App) { a.Spec.Priority = 10 })
	p := step(t, c, t0.Add(time.Second))
	if len(p.Stop) != 2 || p.Stop[0].Reason != ReasonPreempted || len(p.Place) != 0 {
		t.Fatalf("priority preemption: %+v", p)
	}
	agent(c)
	p = step(t, c, t0.Add(2*time.Second))
	if got := placedPer(p); got["web"] != 2 {
		t.Fatalf("placed %v", got)
	}
	// equal priority never preempts
	addApp(c, "peer", "root.p", 2, vec("cpu=1", "memory=1Gi")) // priority 0, like batch
	agent(c)
	if p := step(t, c, t0.Add(3*time.Second)); len(p.Stop) != 0 {
		t.Fatalf("equal priority preempted: %+v", p.Stop)
	}
}

// A starved pool whose app needs a fixed host port takes the node whose
// port holder it may preempt.
func TestPreemptionFreesHostPort(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=8", "memory=80Gi"))
	c.UpsertPool(model.Pool{Name: "root.a", Min: vec("cpu=1"), MinSharePreemptionTimeout: model.Duration(time.Second)})
	port := func(a *model.App) { a.Spec.Ports = []model.Port{{Name: "web", ContainerPort: 80, HostPort: 8080}} }
	addApp(c, "b", "root.b", 1, vec("cpu=1", "memory=1Gi"), port)
	addApp(c, "fill", "root.b", 7, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0)
	agent(c)
	addApp(c, "a", "root.a", 1, vec("cpu=1", "memory=1Gi"), port)
	step(t, c, t0.Add(time.Second))
	p := step(t, c, t0.Add(3*time.Second))
	if len(p.Stop) != 1 {
		t.Fatalf("stops %+v", p.Stop)
	}
	if m, _ := c.Instance(p.Stop[0].ID); m.App != "b" {
		t.Fatalf("preempted %s, want the holder of port 8080", m.App)
	}
	agent(c)
	p = step(t, c, t0.Add(4*time.Second))
	if len(p.Place) != 1 || p.Place[0].Instance.App != "a" || p.Place[0].Instance.HostPorts["web"] != 8080 {
		t.Fatalf("placed %+v", p.Place)
	}
}

func TestCanFit(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=8", "memory=8Gi"), "idc=a")
	if ok, _ := c.CanFit(model.AppSpec{Resources: vec("cpu=8", "memory=8Gi")}); !ok {
		t.Fatal("a whole node's worth must fit")
	}
	if ok, why := c.CanFit(model.AppSpec{Resources: vec("cpu=9", "memory=1Gi")}); ok || why != "no node is big enough for cpu=9 memory=1Gi" {
		t.Fatalf("too big: %v %q", ok, why)
	}
	if ok, why := c.CanFit(model.AppSpec{Resources: vec("cpu=1"), Constraints: model.Constraints{IDC: "b"}}); ok || why != "no node matches the constraints" {
		t.Fatalf("constraints: %v %q", ok, why)
	}
}

// Victims that never stop do not hold their node for ever.
func TestReservationExpires(t *testing.T) {
	c := fullCluster(t,
		model.Pool{Name: "root.a", Min: vec("cpu=1"), MinSharePreemptionTimeout: model.Duration(time.Second)},
		model.Pool{Name: "root.b"})
	step(t, c, t0)
	p := step(t, c, t0.Add(2*time.Second))
	if preemptedFor(p, "root.a") != 1 || len(c.reservations) != 1 {
		t.Fatalf("preempted %d, reservations %d", preemptedFor(p, "root.a"), len(c.reservations))
	}
	step(t, c, t0.Add(2*time.Second+ReservationTTL-time.Second))
	if len(c.reservations) != 1 {
		t.Fatal("reservation dropped early")
	}
	p = step(t, c, t0.Add(2*time.Second+ReservationTTL))
	if len(c.reservations) != 1 || preemptedFor(p, "root.a") != 1 {
		t.Fatalf("after the TTL: reservations %d, preempted again %d (want the old one dropped and one new)", len(c.reservations), preemptedFor(p, "root.a"))
	}
}

// A large deficit is worked off over several plans, MaxPreemptionsPerPlan
// at a time, the reservations made counting as in flight.
func TestPreemptionCappedPerPlan(t *testing.T) {
	c := New(Config{})
	for j := 0; j < 20; j++ {
		addNode(c, nodeName(j), vec("cpu=10", "memory=100Gi"))
	}
	c.UpsertPool(model.Pool{Name: "root.a", Min: vec("cpu=100"), MinSharePreemptionTimeout: model.Duration(time.Second)})
	addApp(c, "b", "root.b", 200, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0)
	agent(c)
	addApp(c, "a", "root.a", 200, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0.Add(time.Second))
	p1 := step(t, c, t0.Add(3*time.Second))
	p2 := step(t, c, t0.Add(4*time.Second))
	p3 := step(t, c, t0.Add(5*time.Second))
	if n1, n2, n3 := preemptedFor(p1, "root.a"), preemptedFor(p2, "root.a"), preemptedFor(p3, "root.a"); n1 != MaxPreemptionsPerPlan || n1+n2 != 100 || n3 != 0 {
		t.Fatalf("preempted %d, %d, %d; want %d, %d, 0", n1, n2, n3, MaxPreemptionsPerPlan, 100-MaxPreemptionsPerPlan)
	}
	agent(c)
	step(t, c, t0.Add(6*time.Second))
	if n := counts(c); n["a"] != 100 || n["b"] != 100 {
		t.Fatalf("live %v, want a:100 b:100", n)
	}
}

// Inside a pool, an app held below its fair share (its instances fit no
// node's leftover while a sibling's smaller ones do) takes instances of
// siblings above their share once the pool's fair-share timeout passes.
func TestFairSharePreemptionInPool(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pool  model.Pool
		stops int
	}{
		{"drf with a timeout", model.Pool{Name: "root.p", FairSharePreemptionTimeout: model.Duration(30 * time.Second)}, 4},
		{"no fair-share timeout", model.Pool{Name: "root.p", MinSharePreemptionTimeout: model.Duration(30 * time.Second)}, 0},
		{"fifo", model.Pool{Name: "root.p", Policy: model.PolicyFIFO, FairSharePreemptionTimeout: model.Duration(30 * time.Second)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := New(Config{})
			addNode(c, "n1", vec("cpu=4", "memory=64Gi"))
			addNode(c, "n2", vec("cpu=4", "memory=64Gi"))
			c.UpsertPool(tc.pool)
			addApp(c, "small", "root.p", 8, vec("cpu=1", "memory=1Gi"))
			step(t, c, t0.Add(-time.Hour))
			agent(c)
			addApp(c, "big", "root.p", 4, vec("cpu=2", "memory=2Gi"))
			// drf between the two: 4 cpu each, big 2 instances, small 4
			settled(t, c, t0, "at once")
			if p := step(t, c, t0.Add(29*time.Second)); len(p.Stop) != 0 {
				t.Fatalf("before the timeout: %+v", p.Stop)
			}
			p := step(t, c, t0.Add(30*time.Second))
			if got := preemptedFor(p, "root.p"); got != tc.stops || len(p.Stop) != tc.stops {
				t.Fatalf("at the timeout: %d preempted for root.p of %d stops, want %d", got, len(p.Stop), tc.stops)
			}
			if tc.stops == 0 {
				return
			}
			// both of big's instances get their room on n1 (fewest victims,
			// then the lowest index), taken from small only
			for _, st := range p.Stop {
				if i := c.insts[st.ID]; i.app.sk.name != "small" || i.nodeNm != "n1" {
					t.Fatalf("victim %s of %s on %s, want small's on n1", st.ID, i.app.sk.name, i.nodeNm)
				}
			}
			agent(c)
			p = step(t, c, t0.Add(31*time.Second))
			if got := placedPer(p); got["big"] != 2 || len(p.Place) != 2 {
				t.Fatalf("after the victims stopped: placed %v, want big:2", got)
			}
			for _, pl := range p.Place {
				if pl.Instance.Node != "n1" {
					t.Fatalf("big placed on %s, want n1", pl.Instance.Node)
				}
			}
			agent(c)
			if n := counts(c); n["big"] != 2 || n["small"] != 4 {
				t.Fatalf("live %v, want big:2 small:4", n)
			}
			// at its fair share big is not starved: nothing more moves
			settled(t, c, t0.Add(time.Hour), "at the fair shares")
		})
	}
}

// Several victims from one pool on one node together leave it at or
// above its fair share, not only each on its own.
func TestPreemptionVictimsTogetherKeepShare(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=4", "memory=40Gi"))
	addNode(c, "n2", vec("cpu=4", "memory=40Gi"))
	c.UpsertPool(model.Pool{Name: "root.a", FairSharePreemptionTimeout: model.Duration(time.Second), FairSharePreemptionThreshold: 1})
	addApp(c, "b2", "root.b", 3, vec("cpu=2", "memory=1Gi")) // n1: 2, n2: 1
	step(t, c, t0.Add(-2*time.Hour))
	agent(c)
	addApp(c, "b1", "root.b", 3, vec("cpu=1", "memory=1Gi")) // n2: 2, one waits
	step(t, c, t0.Add(-time.Hour))
	agent(c)
	addApp(c, "a", "root.a", 1, vec("cpu=3", "memory=1Gi"))
	step(t, c, t0)
	if fs := c.FairShares(); fs["root.a"][0] != 3000 || fs["root.b"][0] != 5000 {
		t.Fatalf("fair shares a %v b %v, want cpu 3 and 5", fs["root.a"], fs["root.b"])
	}
	// n1's two 2-cpu instances would each leave root.b at 6 of its 5, but
	// both leave it at 4: the room is made on n2 (one of each, 5 left)
	p := step(t, c, t0.Add(time.Second))
	var victims []string
	for _, st := range p.Stop {
		i := c.insts[st.ID]
		victims = append(victims, i.app.sk.name+"@"+i.nodeNm)
	}
	sort.Strings(victims)
	if fmt.Sprint(victims) != "[b1@n2 b2@n2]" {
		t.Fatalf("victims %v, want [b1@n2 b2@n2]", victims)
	}
}

// A pool that gave instances in an earlier plan is judged on what it
// keeps while they stop: a second starved pool takes only what leaves it
// at its fair share.
func TestPreemptionCountsVictimsStillStopping(t *testing.T) {
	c := New(Config{})
	for _, n := range []string{"n1", "n2", "n3"} {
		addNode(c, n, vec("cpu=4", "memory=40Gi"))
	}
	fair := func(name string) model.Pool {
		return model.Pool{Name: name, FairSharePreemptionTimeout: model.Duration(time.Second), FairSharePreemptionThreshold: 1}
	}
	c.UpsertPool(fair("root.a"))
	c.UpsertPool(model.Pool{Name: "root.b", Weight: 2})
	c.UpsertPool(fair("root.c"))
	addApp(c, "b", "root.b", 12, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0.Add(-time.Hour))
	agent(c)
	addApp(c, "a", "root.a", 4, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0)
	// a's fair share is 4 (its demand), b's 8: a takes 4
	if p := step(t, c, t0.Add(time.Second)); preemptedFor(p, "root.a") != 4 {
		t.Fatalf("for root.a: %+v", p.Stop)
	}
	// they are still stopping when c arrives: a 3, b 6, c 3
	addApp(c, "c", "root.c", 4, vec("cpu=1", "memory=1Gi"))
	if fs := c.FairShares(); fs["root.a"][0] != 3000 || fs["root.b"][0] != 6000 || fs["root.c"][0] != 3000 {
		t.Fatalf("fair shares a %v b %v c %v", fs["root.a"], fs["root.b"], fs["root.c"])
	}
	step(t, c, t0.Add(2*time.Second))
	// b keeps 8 of its 12: it can give c 2, not 3
	p := step(t, c, t0.Add(3*time.Second))
	if got := preemptedFor(p, "root.c"); got != 2 {
		t.Fatalf("for root.c: %d preempted, want 2 (b keeps 8 once a's victims are gone; its share is 6)", got)
	}
}

// The holders of the host ports an instance needs are victims together:
// a giver that can spare one of them spares none of a pair.
func TestPreemptionForcedVictimsTogether(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=8", "memory=80Gi"))
	c.UpsertPool(model.Pool{Name: "root.a", Min: vec("cpu=1"), MinSharePreemptionTimeout: model.Duration(time.Second)})
	port := func(ps ...int) func(*model.App) {
		return func(a *model.App) {
			for _, p := range ps {
				a.Spec.Ports = append(a.Spec.Ports, model.Port{Name: fmt.Sprint("p", p), ContainerPort: 80, HostPort: p})
			}
		}
	}
	addApp(c, "b1", "root.b", 1, vec("cpu=1", "memory=1Gi"), port(8080))
	addApp(c, "b2", "root.b", 1, vec("cpu=1", "memory=1Gi"), port(8081))
	addApp(c, "fill", "root.b", 6, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0)
	agent(c)
	addApp(c, "a", "root.a", 1, vec("cpu=1", "memory=1Gi"), port(8080, 8081))
	if fs := c.FairShares(); fs["root.b"][0] != 7000 {
		t.Fatalf("root.b's fair share %v, want cpu 7", fs["root.b"])
	}
	step(t, c, t0.Add(time.Second))
	// root.b at 8 of its 7 can give one instance, but a needs both
	// holders: giving them would leave it at 6
	if p := step(t, c, t0.Add(3*time.Second)); len(p.Stop) != 0 {
		t.Fatalf("stops %+v, want none", p.Stop)
	}
}

// A starved pool's instance needs a whole node, and no node frees enough
// from the pool above its share (its instances are spread three to a
// node): an instance of a pool at its share is moved out of the way, to
// a node where the giver's instance makes room for it.
func TestPreemptionMovesInstanceAtShare(t *testing.T) {
	c := New(Config{})
	for j := 1; j <= 3; j++ {
		addNode(c, fmt.Sprintf("n%d", j), vec("cpu=4", "memory=64Gi"), fmt.Sprintf("slot=%d", j))
	}
	c.UpsertPool(model.Pool{Name: "root.s", FairSharePreemptionTimeout: model.Duration(30 * time.Second)})
	c.UpsertPool(model.Pool{Name: "root.g"})
	c.UpsertPool(model.Pool{Name: "root.q"})
	// g holds 3 + 3 + 2 cpus (pinned), q the rest: 1 + 1 + 2
	for j, k := range []int{3, 3, 2} {
		slot := fmt.Sprint(j + 1)
		addApp(c, "g"+slot, "root.g", k, vec("cpu=1", "memory=1Gi"), func(a *model.App) {
			a.Spec.Constraints.Labels = map[string]string{"slot": slot}
		})
	}
	step(t, c, t0.Add(-2*time.Hour))
	agent(c)
	addApp(c, "q", "root.q", 4, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0.Add(-time.Hour))
	agent(c)
	on := func() map[string][]string {
		out := map[string][]string{}
		for _, i := range c.insts {
			if i.k.live {
				out[i.nodeNm] = append(out[i.nodeNm], i.app.sk.name)
			}
		}
		for _, v := range out {
			sort.Strings(v)
		}
		return out
	}
	if got := fmt.Sprint(on()); got != "map[n1:[g1 g1 g1 q] n2:[g2 g2 g2 q] n3:[g3 g3 q q]]" {
		t.Fatalf("before: %s", got)
	}
	addApp(c, "s", "root.s", 1, vec("cpu=4", "memory=4Gi"))
	if fs := c.FairShares(); fs["root.s"][0] != 4000 || fs["root.g"][0] != 4000 || fs["root.q"][0] != 4000 {
		t.Fatalf("fair shares s %v g %v q %v", fs["root.s"], fs["root.g"], fs["root.q"])
	}
	step(t, c, t0)
	p := step(t, c, t0.Add(30*time.Second))
	stopped := map[string]int{}
	for _, st := range p.Stop {
		i := c.insts[st.ID]
		stopped[st.Reason+" "+i.app.sk.name+"@"+i.nodeNm]++
	}
	// n1: g's three and q's one make room for s; q's gets n2, where one
	// of g's makes room; g ends at its share
	if got := fmt.Sprint(stopped); got != "map[moved q@n1:1 preempted g1@n1:3 preempted g2@n2:1]" {
		t.Fatalf("at the timeout: %s", got)
	}
	agent(c)
	p = step(t, c, t0.Add(31*time.Second))
	placed := map[string]string{}
	for _, pl := range p.Place {
		placed[pl.Instance.App] = pl.Instance.Node
	}
	if got := fmt.Sprint(placed); got != "map[q:n2 s:n1]" {
		t.Fatalf("after the victims stopped: placed %s", got)
	}
	agent(c)
	if got := fmt.Sprint(on()); got != "map[n1:[s] n2:[g2 g2 q q] n3:[g3 g3 q q]]" {
		t.Fatalf("after: %s", got)
	}
	// every pool at its share: nothing more moves
	settled(t, c, t0.Add(time.Hour), "at the fair shares")
}

// A starved pool makes room for the instances its policy would place
// next: with drf, each next one to its app of smallest share, not all
// to the app created first (which would end above its share inside the
// pool, and its sibling below would later swap it out).
func TestStarvedPoolServesAppsInPolicyOrder(t *testing.T) {
	c := New(Config{})
	for j := 1; j <= 3; j++ {
		addNode(c, fmt.Sprintf("n%d", j), vec("cpu=4", "memory=64Gi"))
	}
	c.UpsertPool(model.Pool{Name: "root.s", FairSharePreemptionTimeout: model.Duration(30 * time.Second)})
	c.UpsertPool(model.Pool{Name: "root.g"})
	addApp(c, "s1", "root.s", 2, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0.Add(-2*time.Hour))
	agent(c)
	addApp(c, "g", "root.g", 12, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0.Add(-time.Hour))
	agent(c)
	addApp(c, "s1", "root.s", 4, vec("cpu=1", "memory=1Gi"))
	addApp(c, "s2", "root.s", 4, vec("cpu=1", "memory=1Gi"))
	// fair shares: s and g 6 cpu each; inside s, s1 and s2 3 each
	step(t, c, t0)
	p := step(t, c, t0.Add(30*time.Second))
	if got := preemptedFor(p, "root.s"); got != 4 {
		t.Fatalf("at the timeout: %d preempted for root.s, want 4", got)
	}
	agent(c)
	p = step(t, c, t0.Add(31*time.Second))
	if got := placedPer(p); got["s1"] != 1 || got["s2"] != 3 || len(p.Place) != 4 {
		t.Fatalf("after the victims stopped: placed %v, want s1:1 s2:3", got)
	}
	agent(c)
	if n := counts(c); n["s1"] != 3 || n["s2"] != 3 || n["g"] != 6 {
		t.Fatalf("live %v, want s1:3 s2:3 g:6", n)
	}
	// every pool and app at its share: nothing more moves
	settled(t, c, t0.Add(time.Hour), "at the fair shares")
}

// The swap an app starved inside its pool makes counts the instances
// its pool is already getting (reservations under way): without them
// the pool's own preemption and the swap together could take the pool
// past its share.
func TestSwapCountsGrantsUnderWay(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=8", "memory=64Gi"))
	c.UpsertPool(model.Pool{Name: "root.p", FairSharePreemptionTimeout: model.Duration(30 * time.Second)})
	c.UpsertPool(model.Pool{Name: "root.q"})
	addApp(c, "x", "root.p", 3, vec("cpu=1", "memory=1Gi"))
	addApp(c, "q", "root.q", 5, vec("cpu=1", "memory=1Gi"))
	step(t, c, t0)
	agent(c)
	addApp(c, "x", "root.p", 8, vec("cpu=1", "memory=1Gi"))
	addApp(c, "q", "root.q", 8, vec("cpu=1", "memory=1Gi"))
	if fs := c.FairShares(); fs["root.p"][0] != 4000 {
		t.Fatalf("fair share of root.p %v, want 4 cpu", fs["root.p"])
	}
	p := c.pools["root.p"]
	pl := &planner{c: c, now: t0, plan: &Plan{}, removed: newRemoval()}
	req := vec("cpu=1", "memory=1Gi")
	// 3 of 4: one more fits its share
	if !pl.swapKeepsShare(p, req, nil) {
		t.Fatal("3 of a share of 4, nothing under way: the swap was refused")
	}
	// an instance of x is on its way: one more would be the fifth
	pl.plan.reservations = []*reservation{{app: "x", pool: "root.p", node: "n1", made: t0}}
	if pl.swapKeepsShare(p, req, nil) {
		t.Fatal("3 of a share of 4 and one under way: the swap was allowed")
	}
}

// A pool does not take back, for its fair share, what it gave another's
// fair share less than GiveBackAfter ago; for its min it does.
func TestNoGiveBackWithinWindow(t *testing.T) {
	t.Run("fair share", func(t *testing.T) {
		c := fullCluster(t,
			model.Pool{Name: "root.a", FairSharePreemptionTimeout: model.Duration(time.Minute), FairSharePreemptionThreshold: 0.5},
			model.Pool{Name: "root.b"})
		c.gave[[2]string{"root.a", "root.b"}] = t0 // a's instances went to b at t0
		step(t, c, t0)
		if p := step(t, c, t0.Add(time.Minute)); len(p.Stop) != 0 {
			t.Fatalf("a minute after giving to root.b: %+v", p.Stop)
		}
		if p := step(t, c, t0.Add(GiveBackAfter-time.Second)); len(p.Stop) != 0 {
			t.Fatalf("just before GiveBackAfter: %+v", p.Stop)
		}
		if p := step(t, c, t0.Add(GiveBackAfter)); preemptedFor(p, "root.a") != 5 {
			t.Fatalf("after GiveBackAfter: %d preempted for root.a, want 5", preemptedFor(p, "root.a"))
		}
	})
	// for its min a takes back; past its min, for its fair share, not
	for _, tc := range []struct {
		name string
		pool model.Pool
		want int
	}{
		{"min share", model.Pool{Name: "root.a", Min: vec("cpu=4"), MinSharePreemptionTimeout: model.Duration(30 * time.Second)}, 4},
		{"min and fair share due", model.Pool{Name: "root.a", Min: vec("cpu=2"), MinSharePreemptionTimeout: model.Duration(30 * time.Second),
			FairSharePreemptionTimeout: model.Duration(30 * time.Second), FairSharePreemptionThreshold: 1}, 2}, // fair share 5
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fullCluster(t, tc.pool, model.Pool{Name: "root.b"})
			c.gave[[2]string{"root.a", "root.b"}] = t0
			step(t, c, t0)
			if p := step(t, c, t0.Add(30*time.Second)); preemptedFor(p, "root.a") != tc.want {
				t.Fatalf("at the timeouts: %d preempted for root.a, want %d (its min)", preemptedFor(p, "root.a"), tc.want)
			}
		})
	}
	t.Run("recorded", func(t *testing.T) {
		c := fullCluster(t,
			model.Pool{Name: "root.a", FairSharePreemptionTimeout: model.Duration(time.Minute), FairSharePreemptionThreshold: 0.5},
			model.Pool{Name: "root.b"})
		step(t, c, t0)
		step(t, c, t0.Add(time.Minute))
		if at, ok := c.gave[[2]string{"root.b", "root.a"}]; !ok || !at.Equal(t0.Add(time.Minute)) {
			t.Fatalf("root.b's gift to root.a not recorded: %v", c.gave)
		}
	})
}

// Instances whose room preemption is making wait for it: when room
// appears elsewhere while the victims stop, only the app's other missing
// instances go there (placed there too, the reserved ones would leave
// their victims stopped for nothing).
func TestReservedInstancesWaitForTheirNode(t *testing.T) {
	c := fullCluster(t,
		model.Pool{Name: "root.a", Min: vec("cpu=4"), MinSharePreemptionTimeout: model.Duration(30 * time.Second)},
		model.Pool{Name: "root.b"})
	step(t, c, t0)
	if p := step(t, c, t0.Add(30*time.Second)); preemptedFor(p, "root.a") != 4 {
		t.Fatalf("at the timeout: %d preempted for root.a, want 4", preemptedFor(p, "root.a"))
	}
	// the victims are still stopping; a roomy node arrives
	addNode(c, "n3", vec("cpu=20", "memory=200Gi"))
	p := step(t, c, t0.Add(31*time.Second))
	if got := placedPer(p)["a"]; got != 6 {
		t.Fatalf("while the victims stop: placed %v, want a:6 on n3 (10 missing, 4 waiting for their room)", placedPer(p))
	}
	agent(c) // the victims stop
	p = step(t, c, t0.Add(32*time.Second))
	if got := placedPer(p)["a"]; got != 4 {
		t.Fatalf("after the victims stopped: placed %v, want a:4 on the emptied nodes", placedPer(p))
	}
	for _, pl := range p.Place {
		if pl.Instance.Node == "n3" {
			t.Fatalf("a reserved instance went to n3: %+v", pl.Instance)
		}
	}
}
