package server

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gaia-registry/gaia/scheduler/engine"
	"github.com/gaia-registry/gaia/scheduler/model"
)

// The replacement back-off and the apps' placement status (App.Status).
//
// An instance its node reports failed while the scheduler wanted it to run
// counts as a failure of its app: the app's placements are held (the
// engine's HoldApp) for scheduler.replacebackoff, doubled with each further
// failure up to replacebackoffmax. The count and the hold are in the app's
// stored status (written with the failed instance), so a new leader keeps
// them. An instance of the app that becomes healthy and stays so for
// replacebackoffreset ends the back-off, as does any change of the app by
// its users. The work is per failure, per healthy transition of an app
// under back-off, and per app whose plan status changed: nothing per pass
// when nothing failed.

// healthyWatch is an instance of an app under back-off that became healthy
// at since: the back-off ends if it still is replacebackoffreset later.
type healthyWatch struct {
	id    string
	since time.Time
}

// backoff is the hold after the n-th failure.
func (ls *leaderState) backoff(n int) time.Duration {
	cfg := ls.s.cfg.Scheduler
	d := cfg.ReplaceBackoff
	for i := 1; i < n && d < cfg.ReplaceBackoffMax; i++ {
		d *= 2
	}
	return min(d, cfg.ReplaceBackoffMax)
}

// recordFailure counts a failed instance against its app and holds the
// app's placements.
func (ls *leaderState) recordFailure(in *model.Instance, now time.Time) {
	a := ls.apps[in.App]
	if a == nil {
		return
	}
	ls.s.metrics.failures.Inc()
	st := &a.Status
	st.Failures++
	st.FailedAt = now.UTC()
	st.HeldUntil = now.Add(ls.backoff(st.Failures)).UTC()
	st.LastFailure = fmt.Sprintf("instance %s failed: %s", in.ID, failure(in))
	ls.eng.HoldApp(in.App, st.HeldUntil, st.LastFailure)
	ls.pendingApps[in.App] = true
	delete(ls.healthy, in.App)
	ls.s.log.Warn("instance failed: replacements held", "app", in.App, "instance", in.ID, "failures", st.Failures,
		"until", st.HeldUntil, "reason", st.LastFailure)
}

// failure is how a failed instance ended: its node's reason, with the exit
// code and restarts when the reason does not say them.
func failure(in *model.Instance) string {
	s := in.Reason
	if s == "" {
		s = "failed"
	}
	var extra []string
	if in.ExitCode != 0 && !strings.Contains(s, strconv.Itoa(in.ExitCode)) {
		extra = append(extra, fmt.Sprintf("exit code %d", in.ExitCode))
	}
	if in.Restarts > 0 && !strings.Contains(s, "restart") {
		extra = append(extra, fmt.Sprintf("%d restarts", in.Restarts))
	}
	if len(extra) > 0 {
		s += " (" + strings.Join(extra, ", ") + ")"
	}
	return s
}

// noteHealthy starts the reset clock of an app under back-off when one of
// its instances became healthy.
func (ls *leaderState) noteHealthy(in *model.Instance, since time.Time) {
	a := ls.apps[in.App]
	if a == nil || a.Status.Failures == 0 || !healthy(in, a) {
		return
	}
	if _, ok := ls.healthy[in.App]; !ok {
		ls.healthy[in.App] = healthyWatch{in.ID, since}
	}
}

// checkBackoffResets ends the back-off of apps whose watched instance has
// been healthy for replacebackoffreset.
func (ls *leaderState) checkBackoffResets(now time.Time) {
	for name, w := range ls.healthy {
		a, in := ls.apps[name], ls.inst[w.id]
		if a == nil || a.Status.Failures == 0 || in == nil || !healthy(in, a) {
			delete(ls.healthy, name)
			continue
		}
		if now.Sub(w.since) < ls.s.cfg.Scheduler.ReplaceBackoffReset {
			continue
		}
		ls.s.log.Info("instance healthy: back-off reset", "app", name, "instance", w.id, "failures", a.Status.Failures)
		resetBackoff(a)
		ls.eng.HoldApp(name, time.Time{}, "")
		ls.pendingApps[name] = true
		delete(ls.healthy, name)
	}
}

// resetBackoff clears an app's failure count and hold (the engine learns
// it from the app's next upsert, or HoldApp).
func resetBackoff(a *model.App) {
	a.Status.Failures, a.Status.HeldUntil, a.Status.LastFailure, a.Status.FailedAt = 0, time.Time{}, "", time.Time{}
}

// noteUnplaced records in the apps' status why the plan left instances
// unplaced, and clears it where nothing waits any more; only the apps
// whose message changed are written.
func (ls *leaderState) noteUnplaced(plan *engine.Plan) {
	msgs := make(map[string]string, len(plan.Unplaceable))
	held := 0
	for _, u := range plan.Unplaceable {
		if u.Held {
			held++
		}
		what := "instances"
		if u.Count == 1 {
			what = "instance"
		}
		msgs[u.App] = fmt.Sprintf("%d %s not placed: %s", u.Count, what, u.Reason)
	}
	ls.s.metrics.unplaceable.Set(float64(len(plan.Unplaceable) - held))
	ls.s.metrics.held.Set(float64(held))
	for name, msg := range msgs {
		a := ls.apps[name]
		if a == nil {
			continue
		}
		ls.unplaced[name] = true
		if a.Status.Unplaced != msg {
			a.Status.Unplaced = msg
			ls.pendingApps[name] = true
		}
	}
	for name := range ls.unplaced {
		if _, ok := msgs[name]; ok {
			continue
		}
		delete(ls.unplaced, name)
		if a := ls.apps[name]; a != nil && a.Status.Unplaced != "" {
			a.Status.Unplaced = ""
			ls.pendingApps[name] = true
		}
	}
}
