package nodeagent

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// TestDesiredFromAPICarriesEveryField: every field of the scheduler's
// desired instance reaches the agent's (a field-by-field copy had dropped
// the priority the scheduler sends).
func TestDesiredFromAPICarriesEveryField(t *testing.T) {
	in := api.DesiredInstance{
		ID: "web-1a2b3c4d", App: "web", Version: 3, Image: "127.0.0.1:6000/team/web@sha256:" + strings.Repeat("a", 64),
		Command: []string{"/bin/httpd"}, Args: []string{"-f"}, Env: map[string]string{"A": "1"},
		Resources: resource.Vector{resource.CPU: 500, resource.Memory: 64 << 20}, MemoryLimit: 128 << 20,
		CPULimit: 1500, DiskIOPS: 300, CPUSet: "0-1", VolumePath: "/srv",
		Ports:   []model.Port{{Name: "http", ContainerPort: 8080, Protocol: "tcp", HostPort: 20001}},
		Health:  &model.Health{Type: "tcp", Port: "http"},
		Restart: model.Restart{Attempts: 3}, Priority: 7, Desired: model.DesiredRun,
		Canary: true,
	}
	// Every exported field set, so a new one left zero here fails too.
	v := reflect.ValueOf(in)
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Fatalf("the test leaves api.DesiredInstance.%s zero: set it", v.Type().Field(i).Name)
		}
	}
	out, err := desiredFromAPI(&api.DesiredSet{Version: "4.2", Instances: []api.DesiredInstance{in}})
	if err != nil || out.Version != "4.2" || len(out.Instances) != 1 {
		t.Fatalf("desiredFromAPI: %+v, %v", out, err)
	}
	b, _ := json.Marshal(out.Instances[0])
	var back api.DesiredInstance
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, in) {
		t.Fatalf("the agent's instance lost fields:\n got %+v\nwant %+v", back, in)
	}
}
