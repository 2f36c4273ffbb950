package nodeagent

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/tests/harness"
)

var retryReason = regexp.MustCompile(`attempt (\d+) after: (.*)`)

// waitRetrying waits until id is reported pulling, retrying after more
// attempts than the puller's Attempts with an error that holds want; any
// other state than pending or pulling on the way fails the test.
func waitRetrying(t *testing.T, s *fakeScheduler, pl *Puller, id, want string) InstanceReport {
	t.Helper()
	var r InstanceReport
	waitFor(t, fmt.Sprintf("%s retrying its pull after %q", id, want), func() (bool, string) {
		r = s.Reports()[id]
		// (pending: made, its pull not yet started)
		if r.State != "" && r.State != model.Pending && r.State != model.Pulling {
			t.Fatalf("%s reported %s (%q) while the registry is unreachable, want pulling", id, r.State, r.Reason)
		}
		m := retryReason.FindStringSubmatch(r.Reason)
		if m == nil {
			return false, fmt.Sprintf("%s %q", r.State, r.Reason)
		}
		n, _ := strconv.Atoi(m[1])
		return n > pl.Attempts && strings.Contains(m[2], want), fmt.Sprintf("%s %q", r.State, r.Reason)
	})
	return r
}

// A registry unreachable while an instance's image is pulled: the
// instance stays pulling with the error in its reason, past the pull's
// attempts, and starts on its own once the registry is back; whether the
// registry is down (its connections closed) or behind a black hole
// (connections accepted, never answered: the stall timeout cuts each
// attempt). An instance no longer wanted while its pull retries ends the
// pull; one replaced by a new version while both pulls retry is stopped
// once the new version's image is pulled, not failed.
func TestAgentPullRegistryOutage(t *testing.T) {
	e := setup(t)
	ref, _ := e.pushImage(t, "outage-"+randHex(3))
	ref2, _ := e.pushImage(t, "outage2-"+randHex(3))
	ref3, _ := e.pushImage(t, "outage3-"+randHex(3))
	relay := harness.StartRelay(t, e.registry.Addr)
	sched := newFakeScheduler()
	m := NewMetrics(nil)
	a := e.agent(t, sched, m)
	a.o.Gateway = relay.Addr
	pl := a.o.Puller
	pl.Auth = robotAuth(t, relay.Addr)
	pl.Stall = 5 * time.Second // far above the pull's gaps here; the hang below waits for it

	app := "outage-" + randHex(3)
	in := webInstance(t, app, app+"-0", ref)
	relay.Set(harness.RelayCut)
	sched.Set(in)
	runAgent(t, a)

	// Down: dockerd's error, which names the registry, in the reason.
	r := waitRetrying(t, sched, pl, in.ID, relay.Addr)
	t.Logf("registry down: %q", r.Reason)
	// A black hole: every attempt cut by the stall timeout.
	relay.Set(harness.RelayHang)
	r = waitRetrying(t, sched, pl, in.ID, fmt.Sprintf("no progress for %s", pl.Stall))
	t.Logf("registry hanging: %q", r.Reason)
	relay.Set(harness.RelayOpen)
	waitStates(t, sched, model.Healthy, in.ID)
	hp := in.Ports[0].HostPort
	if body, err := get(t, fmt.Sprintf("http://127.0.0.1:%d/", hp)); err != nil || !strings.HasPrefix(body, in.ID+" ") {
		t.Errorf("GET 127.0.0.1:%d: %q, %v; want the instance's answer", hp, body, err)
	}
	if n := testutil.ToFloat64(m.pulls.WithLabelValues("unreachable")); n <= float64(pl.Attempts) {
		t.Errorf("gaia_nodeagent_pulls_total{result=\"unreachable\"} %v, want more than the %d attempts a refusal gets", n, pl.Attempts)
	}

	// Removed while its pull retries: stopped, and the pull ends.
	relay.Set(harness.RelayCut)
	other := webInstance(t, app, app+"-1", ref2)
	sched.Set(in, other)
	waitRetrying(t, sched, pl, other.ID, relay.Addr)
	sched.Set(in)
	waitStates(t, sched, model.Stopped, other.ID)
	waitFor(t, "no pull in flight", func() (bool, string) {
		pl.mu.Lock()
		defer pl.mu.Unlock()
		return len(pl.inflight) == 0, fmt.Sprintf("%d pulls in flight", len(pl.inflight))
	})
	if r := sched.Reports()[in.ID]; r.State != model.Healthy {
		t.Errorf("%s %s (%q) after another instance's pull was cancelled, want healthy", in.ID, r.State, r.Reason)
	}

	// An update while the registry is down, of an instance still pulling:
	// its pull is cancelled (its image no longer wanted), but it stays
	// until the new version's image is on the node, then stops; never
	// failed.
	v1 := webInstance(t, app+"-up", app+"-up-v1", ref2)
	sched.Set(in, v1)
	waitRetrying(t, sched, pl, v1.ID, relay.Addr)
	v2 := webInstance(t, app+"-up", app+"-up-v2", ref3)
	v2.Version = 2
	sched.Set(in, v2)
	waitRetrying(t, sched, pl, v2.ID, relay.Addr)
	relay.Set(harness.RelayOpen)
	waitStates(t, sched, model.Healthy, v2.ID)
	if r := waitStates(t, sched, model.Stopped, v1.ID)[v1.ID]; r.Reason != "stopped" {
		t.Errorf("the old version's instance stopped with %q", r.Reason)
	}
}
