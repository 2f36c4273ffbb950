package server

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/engine"
	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
	"github.com/prometheus/client_golang/prometheus"
)

// memLeader is a leader state without a store: the in-memory side of a
// pass (reports, back-off, plan status) driven by hand.
func memLeader(t *testing.T) *leaderState {
	t.Helper()
	cfg := &Config{}
	cfg.Scheduler.ReplaceBackoff, cfg.Scheduler.ReplaceBackoffMax, cfg.Scheduler.ReplaceBackoffReset = 5*time.Second, 40*time.Second, 10*time.Minute
	ls := &leaderState{
		s:   &Server{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil)), metrics: newMetrics(prometheus.NewRegistry())},
		eng: engine.New(engine.Config{}), nodes: map[string]*model.Node{}, apps: map[string]*model.App{},
		inst: map[string]*model.Instance{}, byNode: map[string]map[string]struct{}{}, specs: map[versionKey]versionSpec{},
		pendingNodes: map[string]bool{}, pendingInst: map[string]bool{}, pendingApps: map[string]bool{}, dirty: map[string]bool{},
		unplaced: map[string]bool{}, healthy: map[string]healthyWatch{}, usageInst: map[string]bool{}, usageNodes: map[string]bool{},
		reports: map[string]*api.Report{},
	}
	n := model.Node{Name: "n1", State: model.NodeReady, Capacity: resource.MustVector("cpu=8", "memory=16Gi")}
	ls.nodes[n.Name] = &n
	ls.eng.UpsertNode(n)
	ls.setApp(model.App{Spec: model.AppSpec{Name: "crash", Pool: "root", Instances: 1, Resources: resource.MustVector("cpu=1", "memory=1Gi")},
		Version: 1, State: model.AppRunning})
	return ls
}

// place plans at now and installs the placements as the store would have
// them (no write): the ids placed.
func (ls *leaderState) placeMem(now time.Time) (*engine.Plan, []string) {
	plan := ls.eng.Plan(now)
	ls.eng.Apply(plan)
	var ids []string
	for _, p := range plan.Place {
		in := p.Instance
		in.Desired = model.DesiredRun
		ls.addInstance(&in)
		ids = append(ids, in.ID)
	}
	ls.noteUnplaced(plan)
	return plan, ids
}

// report delivers one node report and folds it in at now.
func (ls *leaderState) reportMem(now time.Time, reps ...api.InstanceReport) {
	ls.reports["n1"] = &api.Report{Instances: reps}
	ls.applyReports(now)
	ls.checkBackoffResets(now)
	// what flushPending does after a successful write
	for id := range ls.pendingInst {
		if in := ls.inst[id]; in != nil && in.State.Terminal() {
			ls.dropInstance(in)
		}
	}
	clear(ls.pendingInst)
}

// An app whose instances keep failing gets its replacements held, 5s,
// 10s, 20s, 40s, 40s: the app's status says until when and why, and the
// pending write carries it. A user's change ends the back-off at once.
func TestReplacementBackoff(t *testing.T) {
	ls := memLeader(t)
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	_, ids := ls.placeMem(now)
	if len(ids) != 1 {
		t.Fatalf("placed %v", ids)
	}
	for k, want := range []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, 40 * time.Second} {
		failed := ids[0]
		ls.reportMem(now, api.InstanceReport{ID: failed, State: model.Failed, ExitCode: 3, Restarts: 2, Reason: "exited with code 3; 2 restarts"})
		a := ls.apps["crash"]
		if !ls.pendingApps["crash"] || a.Status.Failures != k+1 || !a.Status.HeldUntil.Equal(now.Add(want)) {
			t.Fatalf("failure %d: status %+v (pending write %v); want held until %s", k+1, a.Status, ls.pendingApps["crash"], now.Add(want))
		}
		clear(ls.pendingApps)
		plan, placed := ls.placeMem(now.Add(want - time.Millisecond))
		wantMsg := "1 instance not placed: replacements held until " + now.Add(want).Format(time.RFC3339) +
			": instance " + failed + " failed: exited with code 3; 2 restarts"
		if len(placed) != 0 || a.Status.Unplaced != wantMsg || !ls.pendingApps["crash"] {
			t.Fatalf("failure %d, before the hold ends: placed %v, unplaceable %+v, status %q; want nothing placed, %q",
				k+1, placed, plan.Unplaceable, a.Status.Unplaced, wantMsg)
		}
		clear(ls.pendingApps)
		if _, again := ls.placeMem(now.Add(want - time.Millisecond)); len(ls.pendingApps) != 0 || len(again) != 0 {
			t.Fatalf("an unchanged plan status is written again: pending %v", ls.pendingApps)
		}
		now = now.Add(want)
		_, ids = ls.placeMem(now)
		if len(ids) != 1 || a.Status.Unplaced != "" || !ls.pendingApps["crash"] {
			t.Fatalf("failure %d, at the hold's end: placed %v, status %q (pending %v)", k+1, ids, a.Status.Unplaced, ls.pendingApps)
		}
		clear(ls.pendingApps)
	}
	// an instance stopped by the scheduler is no failure
	ls.inst[ids[0]].Desired = model.DesiredStop
	ls.reportMem(now, api.InstanceReport{ID: ids[0], State: model.Failed, ExitCode: 137})
	if ls.apps["crash"].Status.Failures != 5 {
		t.Fatalf("a failure while desired stop counted: %+v", ls.apps["crash"].Status)
	}
	// a new version resets (changeApp without its write: the same steps)
	a := *ls.apps["crash"]
	resetBackoff(&a)
	ls.setApp(a)
	if _, placed := ls.placeMem(now); len(placed) != 1 {
		t.Fatalf("after a reset: placed %v, want 1 at once", placed)
	}
}

// An instance healthy for replacebackoffreset ends the back-off: the next
// failure is held 5s again. One that fails before that does not.
func TestBackoffResetByHealthyInstance(t *testing.T) {
	ls := memLeader(t)
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	_, ids := ls.placeMem(now)
	for range 3 {
		ls.reportMem(now, api.InstanceReport{ID: ids[0], State: model.Failed, ExitCode: 1})
		now = ls.apps["crash"].Status.HeldUntil
		_, ids = ls.placeMem(now)
	}
	ls.reportMem(now, api.InstanceReport{ID: ids[0], State: model.Running})
	ls.reportMem(now.Add(9*time.Minute), api.InstanceReport{ID: ids[0], State: model.Running})
	if st := ls.apps["crash"].Status; st.Failures != 3 {
		t.Fatalf("healthy 9 minutes: status %+v, want 3 failures still", st)
	}
	ls.reportMem(now.Add(10*time.Minute), api.InstanceReport{ID: ids[0], State: model.Running})
	if st := ls.apps["crash"].Status; st.Failures != 0 || !st.HeldUntil.IsZero() || !ls.pendingApps["crash"] {
		t.Fatalf("healthy 10 minutes: status %+v (pending %v), want the back-off over", st, ls.pendingApps)
	}
	now = now.Add(11 * time.Minute)
	ls.reportMem(now, api.InstanceReport{ID: ids[0], State: model.Failed, ExitCode: 1})
	if st := ls.apps["crash"].Status; st.Failures != 1 || !st.HeldUntil.Equal(now.Add(5*time.Second)) || !strings.Contains(st.LastFailure, "exit code 1") {
		t.Fatalf("a failure after the reset: %+v, want held 5s", st)
	}
}

// A report with the same state and a new reason (a pull's progress, its
// retries' error) updates the instance's reason without a transition, and
// is written with the next flush (usageInst), not as a state change.
func TestReportReasonWithoutStateChange(t *testing.T) {
	ls := memLeader(t)
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	_, ids := ls.placeMem(now)
	id := ids[0]
	ls.reportMem(now, api.InstanceReport{ID: id, State: model.Pulling, Reason: "pulling"})
	transitions := len(ls.inst[id].Transitions)
	clear(ls.usageInst)
	for i, reason := range []string{"pulling 37% (3.7 MiB of 10 MiB)", "pulling, attempt 3 after: Get \"http://gw/v2/\": EOF"} {
		ls.reportMem(now.Add(time.Duration(i+1)*time.Second), api.InstanceReport{ID: id, State: model.Pulling, Reason: reason})
		in := ls.inst[id]
		if in.State != model.Pulling || in.Reason != reason {
			t.Fatalf("after a report of %q: %s %q", reason, in.State, in.Reason)
		}
		if len(in.Transitions) != transitions {
			t.Errorf("a reason-only report added transitions: %v", in.Transitions[transitions:])
		}
		if !ls.usageInst[id] {
			t.Errorf("the new reason %q is not due for the next flush", reason)
		}
		clear(ls.usageInst)
	}
	// Told to stop: the scheduler's reason stays while the node still
	// reports the instance in the same state.
	in := ls.inst[id]
	in.Desired, in.Reason = model.DesiredStop, "scaled down"
	ls.reportMem(now.Add(time.Minute), api.InstanceReport{ID: id, State: model.Pulling, Reason: "pulling 40% (4.0 MiB of 10 MiB)"})
	if in := ls.inst[id]; in.Reason != "scaled down" {
		t.Errorf("an instance told to stop: reason %q after a report, want the scheduler's %q", in.Reason, "scaled down")
	}
}
