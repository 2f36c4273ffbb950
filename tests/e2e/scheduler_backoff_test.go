package e2e

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/nodeclient"
)

// TestSchedulerBackoffAndPortClash: one scheduler (replacebackoff 400ms),
// two simulated agents that fail every instance whose env says
// MODE=crash.
//
//  1. An app whose instances fail: each replacement waits the back-off,
//     doubling (400ms, 800ms, 1.6s, ...), counted between the placements
//     the scheduler recorded; every failed instance stays listed with
//     ?all=true, failed with its exit code; the app's status says until
//     when its replacements are held and which instance failed how.
//  2. A new version ends the back-off: its instance is placed before the
//     hold in force would have ended, and runs.
//  3. Two apps asking for the same fixed host port: the second's instance
//     waits and the app says why; once the port is free it is placed and
//     the message is gone.
func TestSchedulerBackoffAndPortClash(t *testing.T) {
	e := newSchedEnv(t)
	const first = 400 * time.Millisecond
	s := e.start("GAIA_SCHEDULER_REPLACEBACKOFF="+first.String(), "GAIA_SCHEDULER_REPLACEBACKOFFMAX=1h")
	waitFor(t, "the scheduler to lead", time.Minute, func() bool { return isLeader(s) })
	fleet := startAgentsWith(t, 2, e, []string{s.URL()}, func(i int, sim *nodeclient.Sim) {
		sim.State = func(in api.DesiredInstance) model.InstanceState {
			if in.Env["MODE"] == "crash" {
				return model.Failed
			}
			return model.Running
		}
	})
	e.waitReadyNodes(t, 2)
	createPool(t, s.URL(), map[string]any{"name": "root.e2e"})
	getApp := func(name string) model.App {
		t.Helper()
		var app model.App
		if code := call(t, s.URL(), schedAdmin, "GET", "/v1/apps/"+name, nil, &app); code != http.StatusOK {
			t.Fatalf("GET app %s: %d", name, code)
		}
		return app
	}
	allInstances := func(name string) []model.Instance {
		t.Helper()
		var page struct{ Items []model.Instance }
		if code := call(t, s.URL(), schedAdmin, "GET", "/v1/apps/"+name+"/instances?all=true", nil, &page); code != http.StatusOK {
			t.Fatalf("GET instances of %s: %d", name, code)
		}
		// lists leave transitions out: each instance's own answer has them
		for i, in := range page.Items {
			if code := call(t, s.URL(), schedAdmin, "GET", "/v1/instances/"+in.ID, nil, &page.Items[i]); code != http.StatusOK {
				t.Fatalf("GET instance %s: %d", in.ID, code)
			}
		}
		sort.Slice(page.Items, func(i, j int) bool { return placedAt(page.Items[i]).Before(placedAt(page.Items[j])) })
		return page.Items
	}

	// 1. The crash loop.
	spec := appSpec("crash", "root.e2e", e.image, 1)
	spec["env"] = map[string]string{"MODE": "crash"}
	if code := call(t, s.URL(), schedAdmin, "POST", "/v1/apps", spec, nil); code != http.StatusCreated {
		t.Fatalf("submit: %d", code)
	}
	var held model.App
	waitErr(t, "5 failures, replacements held", time.Minute, func() error {
		held = getApp("crash")
		if st := held.Status; st.Failures < 5 || !strings.Contains(st.Unplaced, "replacements held until") {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	}, s)
	st := held.Status
	if !strings.Contains(st.Unplaced, "1 instance not placed: replacements held until "+st.HeldUntil.UTC().Format(time.RFC3339)) ||
		!strings.Contains(st.Unplaced, "failed: exited 1 (simulated)") || !strings.HasPrefix(st.LastFailure, "instance crash-") {
		t.Errorf("status %+v: want the hold's end and the failed instance named", st)
	}
	ins := allInstances("crash")
	failed := 0
	for k, in := range ins {
		if in.State == model.Failed {
			failed++
			if in.ExitCode != 1 || in.Reason != "exited 1 (simulated)" {
				t.Errorf("failed instance %s: exit code %d, reason %q", in.ID, in.ExitCode, in.Reason)
			}
		}
		if k == 0 {
			continue
		}
		gap, want := placedAt(in).Sub(placedAt(ins[k-1])), first<<(k-1)
		t.Logf("replacement %d placed %s after the one before (back-off %s)", k, gap.Round(time.Millisecond), want)
		if gap < want {
			t.Errorf("replacement %d placed %s after the instance it replaces, want at least its back-off %s", k, gap, want)
		}
	}
	if failed < 5 || failed < st.Failures {
		t.Errorf("%d failed instances listed with all=true, the app counts %d failures; want every one listed", failed, st.Failures)
	}

	// 2. A new version: no more waiting.
	spec["env"] = map[string]string{"MODE": "ok"}
	var updated model.App
	if code := call(t, s.URL(), schedAdmin, "POST", "/v1/apps/crash/update", spec, &updated); code != http.StatusOK {
		t.Fatalf("update: %d", code)
	}
	if updated.Status.Failures != 0 || !updated.Status.HeldUntil.IsZero() {
		t.Errorf("after the update: status %+v, want the back-off over", updated.Status)
	}
	waitErr(t, "the new version's instance running", time.Minute, func() error { return runs(fleet, "crash", 1) }, s)
	var fresh model.Instance
	for _, in := range allInstances("crash") {
		if in.Version == updated.Version {
			fresh = in
		}
	}
	// The update came while the 5th failure's hold (6.4s) was in force.
	if fresh.ID == "" || !placedAt(fresh).Before(held.Status.HeldUntil) {
		t.Errorf("version %d's instance %q placed at %s; want it placed before the hold it ended (until %s)",
			updated.Version, fresh.ID, placedAt(fresh), held.Status.HeldUntil)
	}
	waitErr(t, "no message once placed", time.Minute, func() error {
		if st := getApp("crash").Status; st.Unplaced != "" || st.Failures != 0 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	}, s)

	// 3. A fixed host port taken on every node.
	port := []map[string]any{{"name": "http", "containerPort": 80, "hostPort": 19090}}
	a := appSpec("fixed-a", "root.e2e", e.image, 2)
	a["ports"] = port
	b := appSpec("fixed-b", "root.e2e", e.image, 1)
	b["ports"] = port
	for _, sp := range []map[string]any{a, b} {
		if code := call(t, s.URL(), schedAdmin, "POST", "/v1/apps", sp, nil); code != http.StatusCreated {
			t.Fatalf("submit %s: %d", sp["name"], code)
		}
		if sp["name"] == "fixed-a" {
			waitErr(t, "fixed-a on both nodes", time.Minute, func() error { return runs(fleet, "fixed-a", 2) }, s)
		}
	}
	waitErr(t, "fixed-b says why it waits", time.Minute, func() error {
		if st := getApp("fixed-b").Status; !strings.HasPrefix(st.Unplaced, "1 instance not placed: host port 19090 is taken on every node that fits") {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	}, s)
	if code := call(t, s.URL(), schedAdmin, "POST", "/v1/apps/fixed-a/scale", map[string]int{"instances": 1}, nil); code != http.StatusOK {
		t.Fatalf("scale fixed-a: %d", code)
	}
	waitErr(t, "fixed-b placed once the port is free, its message gone", time.Minute, func() error {
		if err := runs(fleet, "fixed-b", 1); err != nil {
			return err
		}
		if st := getApp("fixed-b").Status; st.Unplaced != "" {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	}, s)
}

// placedAt is when the scheduler placed an instance (its first transition).
func placedAt(in model.Instance) time.Time {
	if len(in.Transitions) == 0 {
		return time.Time{}
	}
	return in.Transitions[0].At
}

// runs checks the agents run want instances of app (others aside).
func runs(fleet *agents, app string, want int) error {
	n := 0
	for id := range fleet.running() {
		if strings.HasPrefix(id, app+"-") {
			n++
		}
	}
	if n != want {
		return fmt.Errorf("agents run %d instances of %s, want %d", n, app, want)
	}
	return nil
}
