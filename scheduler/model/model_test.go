package model

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/resource"
	"go.yaml.in/yaml/v3"
)

const appYAML = `
name: web
pool: root.ads.search
image: gaia.example/ads/web:1.4
command: ["/bin/web"]
args: ["--port", "8080"]
env: {MODE: prod}
instances: 3
resources: {cpu: 500m, memory: 1Gi, disk: 10Gi, diskio: 50MiB/s, netin: 100Mbit, netout: 100Mbit}
memoryLimit: 2Gi
cpuLimit: "1.5"
diskIOPS: 400
cpuSet: "0-1,3"
volumePath: /var/lib/web
ports:
  - {name: http, containerPort: 8080}
  - {name: admin, containerPort: 9090, protocol: tcp, hostPort: 19090}
health: {type: http, port: http, path: /healthz, interval: 10s, timeout: 2s, grace: 30s}
restart: {attempts: 3, interval: 5m, delay: 5s, backoff: 2}
constraints: {labels: {disk: ssd}, idc: idc-a}
spread: 1
priority: 10
update: {maxParallel: 2, canary: 1, minHealthyTime: 10s, healthyDeadline: 5m, autoRollback: true}
`

func TestAppSpecYAMLAndJSON(t *testing.T) {
	var s AppSpec
	if err := yaml.Unmarshal([]byte(appYAML), &s); err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.Resources[resource.Memory] != 1<<30 || s.Resources[resource.DiskIO] != 50<<20 || s.MemoryLimit != 2<<30 {
		t.Fatalf("resources %v limit %d", s.Resources, s.MemoryLimit)
	}
	if s.Health.Interval.D() != 10*time.Second || s.Restart.Interval.D() != 5*time.Minute || s.Update.MaxParallel != 2 {
		t.Fatalf("durations/update: %+v %+v %+v", s.Health, s.Restart, s.Update)
	}
	if s.Ports[1].HostPort != 19090 || s.Constraints.Labels["disk"] != "ssd" || s.Spread != 1 || s.Priority != 10 {
		t.Fatalf("ports/constraints: %+v %+v", s.Ports, s.Constraints)
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"memory":"1Gi"`, `"memoryLimit":"2Gi"`, `"cpuLimit":"1500m"`, `"diskIOPS":400`, `"cpuSet":"0-1,3"`, `"volumePath":"/var/lib/web"`, `"diskio":"50MiB/s"`, `"interval":"10s"`, `"containerPort":8080`, `"maxParallel":2`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s: %s", want, b)
		}
	}
	var back AppSpec
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	b2, _ := json.Marshal(back)
	if string(b) != string(b2) {
		t.Fatalf("JSON round trip differs:\n%s\n%s", b, b2)
	}
	y, err := yaml.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var fromY AppSpec
	if err := yaml.Unmarshal(y, &fromY); err != nil {
		t.Fatalf("%v\n%s", err, y)
	}
	b3, _ := json.Marshal(fromY)
	if string(b) != string(b3) {
		t.Fatalf("YAML round trip differs:\n%s\n%s", b, b3)
	}
}

func validSpec() AppSpec {
	return AppSpec{Name: "web", Pool: "root.a", Image: "img:1", Instances: 1,
		Resources: resource.MustVector("cpu=1", "memory=1Gi"),
		Ports:     []Port{{Name: "http", ContainerPort: 80}, {Name: "admin", ContainerPort: 81}}}
}

func TestAppSpecValidateNamesField(t *testing.T) {
	cases := []struct {
		field string
		mod   func(*AppSpec)
	}{
		{"name", func(s *AppSpec) { s.Name = "Web_1" }},
		{"name", func(s *AppSpec) { s.Name = "" }},
		{"pool", func(s *AppSpec) { s.Pool = "ads" }},
		{"image", func(s *AppSpec) { s.Image = " " }},
		{"instances", func(s *AppSpec) { s.Instances = -1 }},
		{"resources.memory", func(s *AppSpec) { s.Resources[resource.Memory] = 0 }},
		{"resources.cpu", func(s *AppSpec) { s.Resources[resource.CPU] = 0 }},
		{"resources.netin", func(s *AppSpec) { s.Resources[resource.NetIn] = -1 }},
		{"memoryLimit", func(s *AppSpec) { s.MemoryLimit = 1 << 20 }},
		{"cpuLimit", func(s *AppSpec) { s.CPULimit = 100 }},
		{"diskIOPS", func(s *AppSpec) { s.DiskIOPS = -1 }},
		{"cpuSet", func(s *AppSpec) { s.CPUSet = "0-a" }},
		{"cpuSet", func(s *AppSpec) { s.CPUSet = "3-1" }},
		{"cpuSet", func(s *AppSpec) { s.CPUSet = "0,,1" }},
		{"volumePath", func(s *AppSpec) { s.VolumePath = "data" }},
		{"volumePath", func(s *AppSpec) { s.VolumePath = "/a/../b" }},
		{"volumePath", func(s *AppSpec) { s.VolumePath = "/" }},
		{"volumePath", func(s *AppSpec) { s.VolumePath = "/proc/x" }},
		{"volumePath", func(s *AppSpec) { s.VolumePath = "/.gaia-gate.d" }},
		{"volumePath", func(s *AppSpec) { s.VolumePath = "/srv"; s.Resources[resource.Disk] = 0 }},
		{"ports[1].containerPort", func(s *AppSpec) { s.Ports[1].ContainerPort = 70000 }},
		{"ports[1].name", func(s *AppSpec) { s.Ports[1].Name = "http" }},
		{"ports[0].protocol", func(s *AppSpec) { s.Ports[0].Protocol = "sctp" }},
		{"ports[1].hostPort", func(s *AppSpec) { s.Ports[0].HostPort = 99; s.Ports[1].HostPort = 99 }},
		{"health.port", func(s *AppSpec) { s.Health = &Health{Type: "tcp", Port: "nope"} }},
		{"health.path", func(s *AppSpec) { s.Health = &Health{Type: "http", Port: "http"} }},
		{"health.command", func(s *AppSpec) { s.Health = &Health{Type: "exec"} }},
		{"health.type", func(s *AppSpec) { s.Health = &Health{Type: "grpc"} }},
		{"restart.backoff", func(s *AppSpec) { s.Restart.Backoff = 0.5 }},
		{"spread", func(s *AppSpec) { s.Spread = -2 }},
		{"update.maxParallel", func(s *AppSpec) { s.Update.MaxParallel = -1 }},
		{"env.1BAD", func(s *AppSpec) { s.Env = map[string]string{"1BAD": "x"} }},
	}
	for _, c := range cases {
		s := validSpec()
		c.mod(&s)
		err := s.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%s: got %v, want a *FieldError", c.field, err)
			continue
		}
		if fe.Field != c.field {
			t.Errorf("want field %s, got %s (%s)", c.field, fe.Field, fe.Message)
		}
	}
	s := validSpec()
	if err := s.Validate(); err != nil {
		t.Fatalf("valid spec refused: %v", err)
	}
}

func TestPoolJSONDefaultsAndValidate(t *testing.T) {
	var p Pool
	in := `{"name":"root.ads.search","weight":2,"min":{"cpu":"10","memory":"20Gi"},"max":{"cpu":"100"},
	"maxInstances":50,"policy":"fair","minSharePreemptionTimeout":"30s","fairSharePreemptionTimeout":60,
	"allowPreemptionFrom":false,"submitters":["ads-team"]}`
	if err := json.Unmarshal([]byte(in), &p); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if p.Parent() != "root.ads" || p.EffectiveWeight() != 2 || p.EffectivePolicy() != PolicyFair || p.PreemptableFrom() {
		t.Fatalf("%+v", p)
	}
	if p.MinSharePreemptionTimeout.D() != 30*time.Second || p.FairSharePreemptionTimeout.D() != time.Minute || p.EffectiveThreshold() != 0.5 {
		t.Fatalf("timeouts %v %v", p.MinSharePreemptionTimeout, p.FairSharePreemptionTimeout)
	}
	var d Pool
	if err := json.Unmarshal([]byte(`{"name":"root.x"}`), &d); err != nil {
		t.Fatal(err)
	}
	if d.EffectiveWeight() != 1 || d.EffectivePolicy() != PolicyDRF || !d.PreemptableFrom() || d.Parent() != "root" {
		t.Fatalf("defaults: %+v", d)
	}
	if (Pool{Name: "root"}).Parent() != "" {
		t.Fatal("root has no parent")
	}
	bad := []struct {
		field string
		p     Pool
	}{
		{"name", Pool{Name: "ads.search"}},
		{"name", Pool{Name: "root..x"}},
		{"weight", Pool{Name: "root.a", Weight: -1}},
		{"min.cpu", Pool{Name: "root.a", Min: resource.Vector{2000}, Max: resource.Vector{1000}}},
		{"policy", Pool{Name: "root.a", Policy: "lifo"}},
		{"fairSharePreemptionThreshold", Pool{Name: "root.a", FairSharePreemptionThreshold: 1.5}},
		{"maxInstances", Pool{Name: "root.a", MaxInstances: -1}},
	}
	for _, c := range bad {
		err := c.p.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%+v: got %v, want field %s", c.p, err, c.field)
		}
	}
}

func TestAsFieldError(t *testing.T) {
	var s AppSpec
	err := json.Unmarshal([]byte(`{"resources":{"memory":"lots"}}`), &s)
	fe := AsFieldError(err, "resources")
	if fe == nil || fe.Field != "resources.memory" {
		t.Fatalf("%v -> %+v", err, fe)
	}
}

func TestInstanceJSON(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	i := Instance{ID: "web-0a1b2c3d", App: "web", Version: 2, Node: "n1", HostPorts: map[string]int{"http": 20001},
		State: Running, Desired: DesiredRun, Transitions: []Transition{{State: Assigned, At: at}, {State: Running, At: at, Reason: "started"}}}
	b, _ := json.Marshal(i)
	var back Instance
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.HostPorts["http"] != 20001 || back.Transitions[1].Reason != "started" || !back.Transitions[0].At.Equal(at) {
		t.Fatalf("%s -> %+v", b, back)
	}
	if back.Stopping() {
		t.Fatal("a running instance is not stopping")
	}
	back.Desired = DesiredStop
	if !back.Stopping() {
		t.Fatal("desired stop is stopping")
	}
	back.State = Stopped
	if back.Stopping() || !back.State.Terminal() {
		t.Fatal("stopped is terminal, not stopping")
	}
}

func TestNodeAllocatable(t *testing.T) {
	n := Node{Name: "n1", Capacity: resource.MustVector("cpu=8", "memory=16Gi"), Reserved: resource.MustVector("cpu=1", "memory=20Gi"), State: NodeReady}
	if got := n.Allocatable(); got != resource.MustVector("cpu=7") {
		t.Fatalf("allocatable %v", got)
	}
	if err := n.Validate(); err != nil {
		t.Fatal(err)
	}
	n.State = "gone"
	var fe *FieldError
	if err := n.Validate(); !errors.As(err, &fe) || fe.Field != "state" {
		t.Fatalf("%v", err)
	}
}
