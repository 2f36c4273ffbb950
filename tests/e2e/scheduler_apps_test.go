package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/nodeclient"
	"github.com/gaia-registry/gaia/tests/harness"
)

// timeline records what each simulated agent runs (instance → version),
// stamped the moment a desired set changed it, before its report left:
// what the app's users would see, independent of the scheduler's books.
type timeline struct {
	mu     sync.Mutex
	events []tlEvent
}

type tlEvent struct {
	at      time.Time
	node    int
	running map[string]int64
}

func (tl *timeline) hook(i int, s *nodeclient.Sim) {
	s.Trace = func(at time.Time, running map[string]int64) {
		tl.mu.Lock()
		tl.events = append(tl.events, tlEvent{at, i, running})
		tl.mu.Unlock()
	}
}

func (tl *timeline) mark() int {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return len(tl.events)
}

// span replays the events and returns, over the events from index from
// on, the fewest and the most instances of app running at once across
// the agents, the most that one agent started or stopped in one step, and
// what runs at the end (id → version).
func (tl *timeline) span(app string, from int) (least, most int, now map[string]int64) {
	least, most, _, now = tl.spanSteps(app, from)
	return least, most, now
}

func (tl *timeline) spanSteps(app string, from int) (least, most, step int, now map[string]int64) {
	tl.mu.Lock()
	events := append([]tlEvent(nil), tl.events...)
	tl.mu.Unlock()
	// Events are appended in time order per agent, not across agents.
	idx := make([]int, len(events))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return events[idx[a]].at.Before(events[idx[b]].at) })
	cur := map[int]map[string]int64{}
	count := func() (int, map[string]int64) {
		all := map[string]int64{}
		for _, set := range cur {
			for id, v := range set {
				if strings.HasPrefix(id, app+"-") {
					all[id] = v
				}
			}
		}
		return len(all), all
	}
	least, most = -1, 0
	for _, i := range idx {
		prev := cur[events[i].node]
		cur[events[i].node] = events[i].running
		if i < from {
			continue
		}
		started, stopped := 0, 0
		for id := range events[i].running {
			if _, ok := prev[id]; !ok && strings.HasPrefix(id, app+"-") {
				started++
			}
		}
		for id := range prev {
			if _, ok := events[i].running[id]; !ok && strings.HasPrefix(id, app+"-") {
				stopped++
			}
		}
		step = max(step, started, stopped)
		n, _ := count()
		if least < 0 || n < least {
			least = n
		}
		if n > most {
			most = n
		}
	}
	_, now = count()
	if least < 0 {
		least, most = len(now), len(now)
	}
	return least, most, step, now
}

// versionsOf counts the running instances by version.
func versionsOf(running map[string]int64) map[int64]int {
	out := map[int64]int{}
	for _, v := range running {
		out[v]++
	}
	return out
}

// TestSchedulerAppLifecycle: one scheduler, four simulated agents, an app
// of 6 instances with update.maxParallel 2, driven through the API, with
// every claim checked on the agents' side (what they run, when):
//
//  1. rolling restart: every instance replaced by one of the new version,
//     never more than 2 in motion (see bounded);
//  2. update with canary 1: one instance of the new version, the rest
//     wait; promote: all on the new version; rollback: all on a new
//     version with the old spec; the same bounds throughout;
//  3. node drain: the node holding the app is emptied, never more than 2
//     instances in motion (fewer than 6 running) at once;
//  4. instance stop: that instance goes, a replacement comes;
//  5. app stop / start / delete.
func TestSchedulerAppLifecycle(t *testing.T) {
	e := newSchedEnv(t)
	s := e.start()
	waitFor(t, "the scheduler to lead", time.Minute, func() bool { return isLeader(s) })
	tl := &timeline{}
	fleet := startAgentsWith(t, 4, e, []string{s.URL()}, tl.hook)
	e.waitReadyNodes(t, 4)
	createPool(t, s.URL(), map[string]any{"name": "root.e2e"})
	const n, maxParallel = 6, 2
	spec := appSpec("web", "root.e2e", e.image, n)
	spec["update"] = map[string]any{"maxParallel": maxParallel}
	spec["env"] = map[string]string{"MODE": "one"}
	if code := call(t, s.URL(), schedAdmin, "POST", "/v1/apps", spec, nil); code != http.StatusCreated {
		t.Fatalf("submit: %d", code)
	}
	// settled: the agents run want instances, all of version v.
	settled := func(what string, want int, v int64) map[string]int64 {
		t.Helper()
		var now map[string]int64
		waitErr(t, what, time.Minute, func() error {
			_, _, now = tl.span("web", tl.mark())
			vs := versionsOf(now)
			if len(now) != want || vs[v] != want {
				return fmt.Errorf("agents run %d instances of web by version %v, want %d of version %d", len(now), vs, want, v)
			}
			return placedOnce(t, e.db, fleet, "web", want)
		}, s)
		return now
	}
	// bounded: over the events since from, never more than maxParallel
	// instances in motion, as the agents saw it: at most maxParallel
	// missing (fewer than n running) or extra (a replacement started on
	// one agent before another stopped the instance it replaces: stops and
	// starts are sent at once), and no agent starting or stopping more
	// than maxParallel in one step (a replacement on the same agent is one
	// step: stop and start in one desired set).
	bounded := func(what string, from int) {
		t.Helper()
		least, most, step, _ := tl.spanSteps("web", from)
		t.Logf("%s: %d to %d instances running, at most %d started or stopped by one agent at once", what, least, most, step)
		if least < n-maxParallel || most > n+maxParallel || step > maxParallel || step == 0 {
			t.Errorf("%s: %d to %d instances running at once, up to %d moved in one step; want %d to %d, 1 to %d (maxParallel %d)",
				what, least, most, step, n-maxParallel, n+maxParallel, maxParallel, maxParallel)
		}
	}
	action := func(act string, body any, want int) {
		t.Helper()
		if code := call(t, s.URL(), schedAdmin, "POST", "/v1/apps/web/"+act, body, nil); code != want {
			t.Fatalf("%s: %d, want %d", act, code, want)
		}
	}
	before := settled("6 instances of version 1", n, 1)

	// 1. Rolling restart.
	from := tl.mark()
	action("restart", nil, http.StatusOK)
	after := settled("6 instances of version 2 after the restart", n, 2)
	bounded("restart", from)
	for id := range after {
		if _, ok := before[id]; ok {
			t.Errorf("restart: instance %s still runs", id)
		}
	}

	// 2. Canary, promote, rollback.
	from = tl.mark()
	spec["env"] = map[string]string{"MODE": "two"}
	spec["update"] = map[string]any{"maxParallel": maxParallel, "canary": 1}
	action("update", spec, http.StatusOK)
	waitErr(t, "one canary of version 3", time.Minute, func() error {
		_, _, now := tl.span("web", tl.mark())
		if vs := versionsOf(now); vs[3] != 1 || vs[2] != n-1 {
			return fmt.Errorf("by version: %v, want 1 of version 3 and %d of version 2", vs, n-1)
		}
		return nil
	}, s)
	time.Sleep(5 * loopInterval) // the canary waits for promote
	if _, _, now := tl.span("web", tl.mark()); versionsOf(now)[3] != 1 || len(now) != n {
		t.Errorf("before promote: by version %v, want the one canary and %d of version 2", versionsOf(now), n-1)
	}
	action("promote", nil, http.StatusOK)
	settled("6 instances of version 3 after promote", n, 3)
	bounded("canary and promote", from)

	from = tl.mark()
	action("rollback", nil, http.StatusOK)
	settled("6 instances of version 4 (version 2's spec) after rollback", n, 4)
	bounded("rollback", from)
	var app model.App
	if code := call(t, s.URL(), schedAdmin, "GET", "/v1/apps/web", nil, &app); code != http.StatusOK || app.Spec.Env["MODE"] != "one" || app.Version != 4 {
		t.Errorf("after rollback: %d, version %d, env %v; want version 4 with MODE=one", code, app.Version, app.Spec.Env)
	}

	// 3. Drain the node that holds most of the app.
	perNode := map[string]int{}
	for _, nodes := range fleet.running() {
		perNode[nodes[0]]++
	}
	victim := ""
	for node, c := range perNode {
		if victim == "" || c > perNode[victim] {
			victim = node
		}
	}
	from = tl.mark()
	if code := call(t, s.URL(), schedAdmin, "POST", "/v1/nodes/"+victim+"/drain", nil, nil); code != http.StatusOK {
		t.Fatalf("drain %s: %d", victim, code)
	}
	waitErr(t, victim+" drained", time.Minute, func() error {
		for id, nodes := range fleet.running() {
			if nodes[0] == victim {
				return fmt.Errorf("%s still runs %s", victim, id)
			}
		}
		return placedOnce(t, e.db, fleet, "web", n)
	}, s)
	bounded("drain of "+victim+fmt.Sprintf(" (held %d)", perNode[victim]), from)

	// 4. One instance stopped: replaced.
	_, _, now := tl.span("web", tl.mark())
	var stopped string
	for id := range now {
		stopped = id
		break
	}
	if code := call(t, s.URL(), schedAdmin, "POST", "/v1/instances/"+stopped+"/stop", nil, nil); code != http.StatusNoContent {
		t.Fatalf("instance stop: %d", code)
	}
	waitErr(t, "the stopped instance replaced", time.Minute, func() error {
		run := fleet.running()
		if _, ok := run[stopped]; ok {
			return fmt.Errorf("%s still runs", stopped)
		}
		return placedOnce(t, e.db, fleet, "web", n)
	}, s)

	// 5. Stop, start, delete.
	action("stop", nil, http.StatusOK)
	waitErr(t, "no instance after stop", time.Minute, func() error { return placedOnce(t, e.db, fleet, "web", 0) }, s)
	if code := call(t, s.URL(), schedAdmin, "GET", "/v1/apps/web", nil, &app); code != http.StatusOK || app.State != model.AppStopped {
		t.Errorf("after stop: %d, state %q", code, app.State)
	}
	action("start", nil, http.StatusOK)
	settled("6 instances after start", n, 4)
	if code := call(t, s.URL(), schedAdmin, "DELETE", "/v1/apps/web", nil, nil); code != http.StatusNoContent && code != http.StatusOK {
		t.Fatalf("delete: %d", code)
	}
	waitErr(t, "no instance after delete", time.Minute, func() error { return placedOnce(t, e.db, fleet, "web", 0) }, s)
	if code := call(t, s.URL(), schedAdmin, "GET", "/v1/apps/web", nil, nil); code != http.StatusNotFound {
		t.Errorf("GET of the deleted app: %d, want 404", code)
	}
	if n := dbCount(t, e.db, `SELECT count(*) FROM instances WHERE app = 'web' AND live`); n != 0 {
		t.Errorf("%d live instances of the deleted app in the database", n)
	}
}

// TestSchedulerAutoRollback: an app with update.autoRollback, on four
// simulated agents that fail instances whose env says MODE=bad and never
// get those with MODE=slow past starting. An update whose instances fail
// is rolled back at once to the version before; one whose instances are
// not healthy within healthyDeadline is rolled back after it. Each
// rollback is a new version with the old spec, marked automatic with its
// reason; the old version's instances keep running (never fewer than
// instances − maxParallel), only the failed version's are replaced.
func TestSchedulerAutoRollback(t *testing.T) {
	e := newSchedEnv(t)
	s := e.start()
	waitFor(t, "the scheduler to lead", time.Minute, func() bool { return isLeader(s) })
	tl := &timeline{}
	startAgentsWith(t, 4, e, []string{s.URL()}, func(i int, sim *nodeclient.Sim) {
		tl.hook(i, sim)
		sim.State = func(in api.DesiredInstance) model.InstanceState {
			switch in.Env["MODE"] {
			case "bad":
				return model.Failed
			case "slow":
				return model.Starting
			}
			return model.Running
		}
	})
	e.waitReadyNodes(t, 4)
	createPool(t, s.URL(), map[string]any{"name": "root.e2e"})
	const n, maxParallel = 6, 2
	spec := appSpec("roll", "root.e2e", e.image, n)
	spec["update"] = map[string]any{"maxParallel": maxParallel, "autoRollback": true, "healthyDeadline": "3s"}
	update := func(mode string) {
		t.Helper()
		spec["env"] = map[string]string{"MODE": mode}
		path, method, want := "/v1/apps/roll/update", "POST", http.StatusOK
		if mode == "one" {
			path, method, want = "/v1/apps", "POST", http.StatusCreated
		}
		if code := call(t, s.URL(), schedAdmin, method, path, spec, nil); code != want {
			t.Fatalf("%s with MODE=%s: %d, want %d", path, mode, code, want)
		}
	}
	// runs: the agents run n instances, all of the versions in vs.
	runs := func(what string, vs ...int64) map[string]int64 {
		t.Helper()
		var now map[string]int64
		waitErr(t, what, time.Minute, func() error {
			_, _, now = tl.span("roll", tl.mark())
			for _, v := range now {
				if !slices.Contains(vs, v) {
					return fmt.Errorf("agents run versions %v, want %d instances of %v", versionsOf(now), n, vs)
				}
			}
			if len(now) != n {
				return fmt.Errorf("agents run %d instances (%v), want %d", len(now), versionsOf(now), n)
			}
			return nil
		}, s)
		return now
	}
	rolledBack := func(from, to, version int64, why string) model.App {
		t.Helper()
		var app model.App
		waitErr(t, fmt.Sprintf("version %d rolled back to %d", from, to), time.Minute, func() error {
			if code := call(t, s.URL(), schedAdmin, "GET", "/v1/apps/roll", nil, &app); code != http.StatusOK {
				return fmt.Errorf("GET app: %d", code)
			}
			if rb := app.Rollback; app.Version != version || rb == nil || !rb.Auto || rb.From != from || rb.To != to || !strings.Contains(rb.Reason, why) {
				return fmt.Errorf("app at version %d, rollback %+v; want version %d, an automatic rollback %d→%d for %q", app.Version, app.Rollback, version, from, to, why)
			}
			return nil
		}, s)
		return app
	}

	update("one")
	runs("6 instances of version 1", 1)
	update("two")
	good := runs("6 instances of version 2", 2)
	time.Sleep(2 * loopInterval) // the rollout of version 2 is seen complete

	from := tl.mark()
	update("bad") // version 3: its instances fail
	app := rolledBack(3, 2, 4, "failed")
	if app.Spec.Env["MODE"] != "two" || !slices.Contains(app.Same, 2) {
		t.Errorf("version 4: env %v, same %v; want version 2's spec and version 2 the same", app.Spec.Env, app.Same)
	}
	after := runs("6 instances of versions 2 and 4 after the rollback", 2, 4)
	least, _, _ := tl.span("roll", from)
	if least < n-maxParallel {
		t.Errorf("during the failed update and its rollback, %d instances ran at once; want at least %d", least, n-maxParallel)
	}
	for id, v := range after {
		if _, ok := good[id]; v == 2 && !ok {
			t.Errorf("instance %s of version 2 was started again", id)
		}
	}
	kept := 0
	for id := range good {
		if _, ok := after[id]; ok {
			kept++
		}
	}
	if kept < n-maxParallel {
		t.Errorf("%d of version 2's instances kept; want at least %d (only the failed version's are replaced)", kept, n-maxParallel)
	}

	from = tl.mark()
	update("slow") // version 5: never healthy
	rolledBack(5, 4, 6, "healthyDeadline")
	runs("6 instances of versions 2, 4 and 6 after the second rollback", 2, 4, 6)
	if least, _, _ := tl.span("roll", from); least < n-maxParallel {
		t.Errorf("during the slow update and its rollback, %d instances ran at once; want at least %d", least, n-maxParallel)
	}
	if v := harness.Metric(t, s.URL(), "gaia_scheduler_auto_rollbacks_total"); v != 2 {
		t.Errorf("gaia_scheduler_auto_rollbacks_total %v, want 2", v)
	}
}

// TestSchedulerMinHealthyTime: with update.minHealthyTime, a rolling
// restart (maxParallel 1) starts each next replacement only after the
// previous one has run that long, as the agents see it.
func TestSchedulerMinHealthyTime(t *testing.T) {
	e := newSchedEnv(t)
	s := e.start()
	waitFor(t, "the scheduler to lead", time.Minute, func() bool { return isLeader(s) })
	type start struct {
		id string
		at time.Time
	}
	var mu sync.Mutex
	var starts []start
	seen := map[string]bool{}
	startAgentsWith(t, 3, e, []string{s.URL()}, func(i int, sim *nodeclient.Sim) {
		sim.Trace = func(at time.Time, running map[string]int64) {
			mu.Lock()
			defer mu.Unlock()
			for id, v := range running {
				if v == 2 && !seen[id] {
					seen[id] = true
					starts = append(starts, start{id, at})
				}
			}
		}
	})
	e.waitReadyNodes(t, 3)
	createPool(t, s.URL(), map[string]any{"name": "root.e2e"})
	const n, minHealthy = 3, 2 * time.Second
	spec := appSpec("ripe", "root.e2e", e.image, n)
	spec["update"] = map[string]any{"maxParallel": 1, "minHealthyTime": minHealthy.String()}
	if code := call(t, s.URL(), schedAdmin, "POST", "/v1/apps", spec, nil); code != http.StatusCreated {
		t.Fatalf("submit: %d", code)
	}
	waitFor(t, "3 instances placed", time.Minute, func() bool {
		return dbCount(t, e.db, `SELECT count(*) FROM instances WHERE app = 'ripe' AND live AND state = 'running'`) == n
	})
	if code := call(t, s.URL(), schedAdmin, "POST", "/v1/apps/ripe/restart", nil, nil); code != http.StatusOK {
		t.Fatalf("restart: %d", code)
	}
	waitErr(t, "3 instances of version 2 started", time.Minute, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(starts) < n {
			return fmt.Errorf("%d of version 2 started", len(starts))
		}
		return nil
	}, s)
	mu.Lock()
	defer mu.Unlock()
	sort.Slice(starts, func(i, j int) bool { return starts[i].at.Before(starts[j].at) })
	for i := 1; i < len(starts); i++ {
		if gap := starts[i].at.Sub(starts[i-1].at); gap < minHealthy {
			t.Errorf("replacement %s started %v after %s, want at least minHealthyTime %v", starts[i].id, gap, starts[i-1].id, minHealthy)
		}
	}
}
