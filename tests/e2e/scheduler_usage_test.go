package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
	"github.com/gaia-registry/gaia/tests/harness"
)

// TestSchedulerUsage: resource usage the agents report (per instance and
// per node, with the instances' traffic-class counters) is stored, shown by GET /v1/apps/{name}/instances,
// GET /v1/nodes/{name}, `gaiactl app instances` and `gaiactl node show`,
// written with the heartbeat flush and only when it changed, and never
// recorded as a state transition.
func TestSchedulerUsage(t *testing.T) {
	e := newSchedEnv(t)
	s := e.start()
	waitFor(t, "the scheduler to lead", time.Minute, func() bool { return isLeader(s) })
	fleet := startAgents(t, 2, e, []string{s.URL()})
	createPool(t, s.URL(), map[string]any{"name": "root.e2e"})
	if code := call(t, s.URL(), schedAdmin, "POST", "/v1/apps", appSpec("web", "root.e2e", e.image, 3), nil); code != http.StatusCreated {
		t.Fatalf("submit: %d", code)
	}
	waitErr(t, "3 instances placed", time.Minute, func() error { return placedOnce(t, e.db, fleet, "web", 3) }, s)

	// Each agent reports its instances' usage and its own.
	per := resource.MustVector("cpu=150m", "memory=96Mi", "disk=2Gi", "netout=10Mbit")
	net := model.NetCounters{OutBytes: 1 << 20, OutDrops: 2, InBytes: 1 << 19, InDrops: 1, Retransmits: 3}
	report := func() {
		t.Helper()
		for _, sim := range fleet.sims {
			var rep api.Report
			for _, id := range sim.Running() {
				rep.Instances = append(rep.Instances, api.InstanceReport{ID: id, State: model.Running, Usage: per, Net: net})
				rep.Usage = rep.Usage.Add(per)
			}
			rep.Usage = rep.Usage.Add(resource.MustVector("cpu=1", "memory=1Gi"))
			if err := sim.C.Report(context.Background(), &rep); err != nil {
				t.Fatalf("report: %v", err)
			}
		}
	}
	eventsBefore := dbCount(t, e.db, `SELECT count(*) FROM instance_events`)
	report()
	waitErr(t, "the usage in GET /v1/apps/web/instances", time.Minute, func() error {
		var page struct{ Items []model.Instance }
		if code := call(t, s.URL(), schedAdmin, "GET", "/v1/apps/web/instances", nil, &page); code != http.StatusOK {
			return fmt.Errorf("GET: %d", code)
		}
		n := 0
		for _, in := range page.Items {
			if in.Usage == per && in.Net == net {
				n++
			}
		}
		if n != 3 {
			return fmt.Errorf("%d of %d instances show usage %s and net counters %+v", n, len(page.Items), per, net)
		}
		return nil
	}, s)
	var node model.Node
	if code := call(t, s.URL(), schedAdmin, "GET", "/v1/nodes/node-000", nil, &node); code != http.StatusOK || node.Usage[resource.CPU] < 1000 {
		t.Errorf("GET /v1/nodes/node-000: %d, usage %s; want at least cpu=1", code, node.Usage)
	}
	if n := dbCount(t, e.db, `SELECT count(*) FROM instance_events`); n != eventsBefore {
		t.Errorf("usage added %d instance events; it is not a state change", n-eventsBefore)
	}

	// The same usage again: nothing to write.
	writes := func() float64 {
		v, _ := harness.ScrapeMetric(nil, s.URL(), "gaia_scheduler_db_writes_total", `kind="usage"`)
		return v
	}
	before := writes()
	report()
	time.Sleep(3 * 2 * time.Second) // three heartbeat flushes (heartbeatflush: 2s)
	if after := writes(); after != before {
		t.Errorf("unchanged usage written %v more times", after-before)
	}

	// gaiactl shows it.
	gaiactl := harness.Binary(t, "./cmd/gaiactl")
	out, err := exec.Command(gaiactl, "--server", s.URL(), "--token", schedAdmin, "app", "instances", "web").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "USAGE") || strings.Count(string(out), "cpu=150m") != 3 ||
		strings.Count(string(out), "out=2 in=1 retrans=3") != 3 {
		t.Errorf("gaiactl app instances web: %v\n%s", err, out)
	}
	out, err = exec.Command(gaiactl, "--server", s.URL(), "--token", schedAdmin, "node", "show", "node-000").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "usage:") {
		t.Errorf("gaiactl node show node-000: %v\n%s", err, out)
	}
	t.Logf("gaiactl node show node-000:\n%s", out)
}
