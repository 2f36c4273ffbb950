package engine

import (
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
)

// An app held after failures gets no placement (and no preemption) until
// the hold ends; the plan says why, marked Held. Its scale-downs go on.
func TestHoldApp(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=8", "memory=16Gi"))
	addApp(c, "crash", "root.a", 2, vec("cpu=1", "memory=1Gi"))
	until := t0.Add(10 * time.Second)
	c.HoldApp("crash", until, "instance crash-1 failed: exited with code 3")
	p := step(t, c, t0)
	if len(p.Place) != 0 {
		t.Fatalf("held app placed %d instances", len(p.Place))
	}
	want := Unplaceable{App: "crash", Count: 2, Held: true,
		Reason: "replacements held until 2026-11-30T12:00:10Z: instance crash-1 failed: exited with code 3"}
	if len(p.Unplaceable) != 1 || p.Unplaceable[0] != want {
		t.Fatalf("unplaceable %+v, want %+v", p.Unplaceable, want)
	}
	if p := step(t, c, until.Add(-time.Nanosecond)); len(p.Place) != 0 {
		t.Fatalf("placed %d before the hold ended", len(p.Place))
	}
	if p := step(t, c, until); len(p.Place) != 2 || len(p.Unplaceable) != 0 {
		t.Fatalf("at the hold's end: %d placed, unplaceable %+v; want 2, none", len(p.Place), p.Unplaceable)
	}
	// a hold does not stop a scale-down
	c.HoldApp("crash", until.Add(time.Hour), "x")
	addApp(c, "crash", "root.a", 1, vec("cpu=1", "memory=1Gi"), func(a *model.App) {
		a.Status = model.AppStatus{HeldUntil: until.Add(time.Hour), LastFailure: "x"}
	})
	if p := step(t, c, until.Add(time.Second)); len(stopsBy(p, ReasonScaledDown)) != 1 || len(p.Place) != 0 {
		t.Fatalf("held app scaled 2 → 1: stops %+v, %d placed", p.Stop, len(p.Place))
	}
	// UpsertApp takes the hold from the app's status (a new leader's load)
	addApp(c, "crash", "root.a", 3, vec("cpu=1", "memory=1Gi"), func(a *model.App) {
		a.Status = model.AppStatus{HeldUntil: until.Add(time.Hour), LastFailure: "y"}
	})
	if p := step(t, c, until.Add(2*time.Second)); len(p.Place) != 0 || len(p.Unplaceable) != 1 || !p.Unplaceable[0].Held {
		t.Fatalf("hold from the status: %d placed, unplaceable %+v", len(p.Place), p.Unplaceable)
	}
	addApp(c, "crash", "root.a", 3, vec("cpu=1", "memory=1Gi")) // a status without a hold
	if p := step(t, c, until.Add(3*time.Second)); len(p.Place) != 2 {
		t.Fatalf("hold lifted: %d placed, want 2", len(p.Place))
	}
}

// Two apps asking for the same fixed host port: the second's instances
// wait where every node has it taken, and the plan says so (not "no
// room"); a spread limit is named the same way.
func TestUnplaceableReasons(t *testing.T) {
	c := New(Config{})
	addNode(c, "n1", vec("cpu=8", "memory=16Gi"))
	addNode(c, "n2", vec("cpu=8", "memory=16Gi"))
	port := func(a *model.App) { a.Spec.Ports = []model.Port{{Name: "http", ContainerPort: 80, HostPort: 19090}} }
	addApp(c, "first", "root.a", 2, vec("cpu=1", "memory=1Gi"), port)
	if p := step(t, c, t0); len(p.Place) != 2 {
		t.Fatalf("first: %d placed", len(p.Place))
	}
	agent(c)
	addApp(c, "second", "root.a", 1, vec("cpu=1", "memory=1Gi"), port)
	p := step(t, c, t0.Add(time.Second))
	if len(p.Place) != 0 || len(p.Unplaceable) != 1 || p.Unplaceable[0].Held ||
		!strings.HasPrefix(p.Unplaceable[0].Reason, "host port 19090 is taken on every node that fits") {
		t.Fatalf("second: %d placed, unplaceable %+v; want host port 19090 named", len(p.Place), p.Unplaceable)
	}
	addApp(c, "spread", "root.a", 3, vec("cpu=1", "memory=1Gi"), func(a *model.App) { a.Spec.Spread = 1 })
	p = step(t, c, t0.Add(2*time.Second))
	var why string
	for _, u := range p.Unplaceable {
		if u.App == "spread" {
			why = u.Reason
		}
	}
	if !strings.Contains(why, "already runs 1 of its instances (spread)") {
		t.Fatalf("spread 1 on 2 nodes, 3 instances: reason %q", why)
	}
	addApp(c, "big", "root.a", 1, vec("cpu=8", "memory=1Gi"), port)
	p = step(t, c, t0.Add(3*time.Second))
	why = ""
	for _, u := range p.Unplaceable {
		if u.App == "big" {
			why = u.Reason
		}
	}
	if !strings.HasPrefix(why, "no node has room") {
		t.Fatalf("big: %q, want no room (no node fits it, ports aside)", why)
	}
}
