package server

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/gaia-registry/gaia/scheduler/model"
)

// The desired set carries each instance's app priority (the agent's
// memory reclaim and network class order by it), from the spec of the
// version the instance runs.
func TestDesiredInstanceCarriesPriority(t *testing.T) {
	ls := &leaderState{s: &Server{images: newResolver(RegistryConfig{URL: "http://127.0.0.1:5000"})}}
	in := &model.Instance{ID: "web-1", App: "web", Version: 2}
	for _, prio := range []int{0, 7, -3} {
		d := ls.desiredInstance(in, versionSpec{spec: model.AppSpec{Image: "team/web:v1", Priority: prio}, digest: "sha256:00"})
		if d.Priority != prio {
			t.Errorf("priority %d: desired instance has %d", prio, d.Priority)
		}
		raw, _ := json.Marshal(d)
		if want := `"priority":` + strings.TrimSpace(string(mustJSON(prio))); !strings.Contains(string(raw), want) {
			t.Errorf("priority %d: %s lacks %s", prio, raw, want)
		}
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// The spec's CPU ceiling, IOPS limit, cpuset and volume path reach the
// agent (its CFS quota, blkio IOPS throttles, cpuset and volume mount).
func TestDesiredInstanceCarriesLimits(t *testing.T) {
	ls := &leaderState{s: &Server{images: newResolver(RegistryConfig{URL: "http://127.0.0.1:5000"})}}
	in := &model.Instance{ID: "web-1", App: "web", Version: 1}
	var spec model.AppSpec
	if err := json.Unmarshal([]byte(`{"image":"team/web:v1","cpuLimit":"1500m","diskIOPS":300,"cpuSet":"2-3","volumePath":"/srv"}`), &spec); err != nil {
		t.Fatal(err)
	}
	d := ls.desiredInstance(in, versionSpec{spec: spec, digest: "sha256:00"})
	if d.CPULimit != 1500 || d.DiskIOPS != 300 || d.CPUSet != "2-3" || d.VolumePath != "/srv" {
		t.Fatalf("desired instance: cpuLimit %d, diskIOPS %d, cpuSet %q, volumePath %q; want 1500, 300, 2-3, /srv", d.CPULimit, d.DiskIOPS, d.CPUSet, d.VolumePath)
	}
}
