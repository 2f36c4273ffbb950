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

// The spec's CPU ceiling and IOPS limit reach the agent (its CFS quota
// and blkio IOPS throttles).
func TestDesiredInstanceCarriesLimits(t *testing.T) {
	ls := &leaderState{s: &Server{images: newResolver(RegistryConfig{URL: "http://127.0.0.1:5000"})}}
	in := &model.Instance{ID: "web-1", App: "web", Version: 1}
	var spec model.AppSpec
	if err := json.Unmarshal([]byte(`{"image":"team/web:v1","cpuLimit":"1500m","diskIOPS":300}`), &spec); err != nil {
		t.Fatal(err)
	}
	d := ls.desiredInstance(in, versionSpec{spec: spec, digest: "sha256:00"})
	if d.CPULimit != 1500 || d.DiskIOPS != 300 {
		t.Fatalf("desired instance: cpuLimit %d, diskIOPS %d; want 1500, 300", d.CPULimit, d.DiskIOPS)
	}
}
