package server

import (
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
)

// What rolls a watched version back, and when its rollout is done.
func TestRolloutVerdict(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	app := func() *model.App {
		return &model.App{Version: 3, Spec: model.AppSpec{Instances: 3,
			Update: model.Update{AutoRollback: true, HealthyDeadline: model.Duration(time.Minute)}}}
	}
	placed := func(at time.Time, state model.InstanceState) *model.Instance {
		return &model.Instance{ID: "web-1", Version: 3, State: state, Transitions: []model.Transition{{State: model.Assigned, At: at}}}
	}
	for _, tc := range []struct {
		name     string
		a        *model.App
		p        rolloutProgress
		now      time.Time
		reason   string // a part of it; "" none
		finished bool
	}{
		{"a failed instance", app(), rolloutProgress{failed: &model.Instance{ID: "web-1", Reason: "exited 1"}, current: 1, older: 2}, t0, "failed (exited 1)", false},
		{"unhealthy past its own deadline", app(), rolloutProgress{unhealthy: placed(t0, model.Starting), current: 2, older: 1}, t0.Add(2 * time.Minute), "still starting 2m0s after it was placed", false},
		{"still rolling, healthy so far", app(), rolloutProgress{current: 2, healthy: 2, older: 1}, t0.Add(10 * time.Minute), "", false},
		{"unplaced past the deadline", func() *model.App { a := app(); a.Status.Unplaced = "1 instance not placed: no room"; return a }(),
			rolloutProgress{current: 2, healthy: 2}, t0.Add(2 * time.Minute), "not placed 2m0s after the update", false},
		{"unplaced within the deadline", func() *model.App { a := app(); a.Status.Unplaced = "1 instance not placed: no room"; return a }(),
			rolloutProgress{current: 2, healthy: 2}, t0.Add(30 * time.Second), "", false},
		{"done", app(), rolloutProgress{current: 3, healthy: 3}, t0.Add(time.Second), "", true},
		{"all placed, one not yet healthy", app(), rolloutProgress{current: 3, healthy: 2}, t0.Add(time.Second), "", false},
	} {
		reason, done := rolloutVerdict(tc.a, &tc.p, t0, tc.now)
		if done != tc.finished || (tc.reason == "") != (reason == "") || !strings.Contains(reason, tc.reason) {
			t.Errorf("%s: reason %q, done %v; want one with %q, done %v", tc.name, reason, done, tc.reason, tc.finished)
		}
	}
}

// Which versions are watched: new versions of apps with autoRollback,
// not a rollback's (manual or automatic), from the version's making.
func TestWatchRollout(t *testing.T) {
	ls := memLeader(t)
	ls.rollouts = map[string]time.Time{}
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	a := model.App{Spec: model.AppSpec{Name: "web", Update: model.Update{AutoRollback: true}}, Version: 2, VersionAt: at, UpdatedAt: at.Add(time.Hour)}
	ls.watchRollout(&a)
	if got, ok := ls.rollouts["web"]; !ok || !got.Equal(at) {
		t.Fatalf("version 2: watched %v since %v; want since %v", ok, got, at)
	}
	for _, rb := range []*model.Rollback{{From: 3, To: 2}, {From: 3, To: 2, Auto: true}} {
		b := a
		b.Version, b.Rollback = 4, rb
		ls.watchRollout(&b)
		if _, ok := ls.rollouts["web"]; ok {
			t.Fatalf("a rollback's version (%+v) is watched", rb)
		}
	}
	c := a
	c.Spec.Update.AutoRollback = false
	ls.watchRollout(&c)
	if _, ok := ls.rollouts["web"]; ok {
		t.Fatal("an app without autoRollback is watched")
	}
}
