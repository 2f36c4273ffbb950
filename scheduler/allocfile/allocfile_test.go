package allocfile

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

func sec(n int) model.Duration { return model.Duration(time.Duration(n) * time.Second) }

func TestParseRealisticFile(t *testing.T) {
	pools, warnings, err := Load("testdata/allocation.xml")
	if err != nil {
		t.Fatal(err)
	}
	maxDef := resource.MustVector("cpu=400", "memory=1600Gi")
	no := model.Bool(false)
	want := []model.Pool{
		{Name: "root", Policy: "drf", MinSharePreemptionTimeout: sec(120), FairSharePreemptionTimeout: sec(600), FairSharePreemptionThreshold: 0.6},
		{Name: "root.ads", Weight: 3, Policy: "fair",
			Min:                       resource.MustVector("cpu=100", "memory=400Gi"),
			Max:                       resource.MustVector("cpu=800", "memory=3Ti", "disk=100Ti", "diskio=20GiB/s", "netin=200Gbit", "netout=200Gbit"),
			MinSharePreemptionTimeout: sec(120), FairSharePreemptionTimeout: sec(300), FairSharePreemptionThreshold: 0.6},
		{Name: "root.ads.search", Weight: 2, Policy: "drf", Max: maxDef, MaxInstances: 500,
			Min:                       resource.MustVector("cpu=2", "memory=4Gi", "disk=100Gi", "diskio=50MiB/s", "netin=100Mbit", "netout=100Mbit"),
			MinSharePreemptionTimeout: sec(120), FairSharePreemptionTimeout: sec(300), FairSharePreemptionThreshold: 0.6,
			Submitters: []string{"search-ci", "search-oncall"}},
		{Name: "root.ads.display", Policy: "fifo", Max: maxDef, Min: resource.MustVector("cpu=20", "memory=40Gi"),
			MinSharePreemptionTimeout: sec(120), FairSharePreemptionTimeout: sec(300), FairSharePreemptionThreshold: 0.8},
		{Name: "root.batch", Weight: 1, Policy: "drf", Max: maxDef, AllowPreemptionFrom: no,
			MinSharePreemptionTimeout: sec(30), FairSharePreemptionTimeout: sec(600), FairSharePreemptionThreshold: 0.6},
		{Name: "root.batch.nightly", Policy: "drf", Max: maxDef, AllowPreemptionFrom: no, Submitters: []string{"*"},
			MinSharePreemptionTimeout: sec(30), FairSharePreemptionTimeout: sec(600), FairSharePreemptionThreshold: 0.6},
		{Name: "root.dev", Policy: "drf", Max: resource.MustVector("cpu=8", "memory=16Gi"),
			MinSharePreemptionTimeout: sec(120), FairSharePreemptionTimeout: sec(600), FairSharePreemptionThreshold: 0.6},
	}
	if !reflect.DeepEqual(pools, want) {
		g, _ := json.MarshalIndent(pools, "", " ")
		w, _ := json.MarshalIndent(want, "", " ")
		t.Fatalf("pools:\n%s\nwant:\n%s", g, w)
	}
	for _, p := range pools {
		if err := p.Validate(); err != nil {
			t.Errorf("%s: %v", p.Name, err)
		}
	}
	wantWarn := []string{
		"line 10: <queueMaxAppsDefault>: ignored",
		"line 11: <userMaxAppsDefault>: ignored",
		"line 47: <queuePlacementPolicy>: ignored",
		"line 22: <maxRunningApps> of root.ads.search: ignored: Gaia limits instances, not apps",
		`line 24: <aclSubmitApps> of root.ads.search: groups "search-team" ignored`,
		"line 38: <maxAMShare> of root.batch.nightly: ignored",
	}
	if len(warnings) != len(wantWarn) {
		t.Errorf("warnings: %q", warnings)
	}
	for i, w := range wantWarn {
		if i >= len(warnings) || !strings.HasPrefix(warnings[i], w) {
			t.Errorf("warning %d: %q, want prefix %q", i, warnings, w)
			break
		}
	}
}

func TestExplicitRoot(t *testing.T) {
	pools, _, err := Parse([]byte(`<allocations>
<queue name="root">
  <schedulingPolicy>fair</schedulingPolicy>
  <aclSubmitApps> </aclSubmitApps>
  <allowPreemptionFrom>false</allowPreemptionFrom>
  <queue name="a"><allowPreemptionFrom>true</allowPreemptionFrom></queue>
</queue>
<queue name="b"/>
</allocations>`))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pools {
		names = append(names, p.Name)
		if p.PreemptableFrom() {
			t.Errorf("%s: preemptable, but root does not allow preemption (YARN: inherited)", p.Name)
		}
	}
	if strings.Join(names, " ") != "root root.a root.b" || pools[0].Policy != "fair" || pools[1].Policy != "" || pools[0].Submitters != nil {
		t.Fatalf("%+v", pools)
	}
}

func TestErrorsNameTheElementAndLine(t *testing.T) {
	for _, tc := range []struct{ xml, want string }{
		{"<allocations>\n<queue name=\"a\">\n<minResources>vcores=2, gpus=1</minResources>\n</queue></allocations>",
			`line 3: <minResources> of root.a: "gpus=1": unknown resource "gpus"`},
		{"<allocations>\n<queue name=\"a\">\n <maxResources>50% memory</maxResources></queue></allocations>",
			"line 3: <maxResources> of root.a: \"50% memory\": percentages"},
		{"<allocations><queue name=\"a\">\n<minResources>memory=4096</minResources></queue></allocations>",
			"line 2: <minResources> of root.a: \"memory=4096\": give a unit"},
		{"<allocations><queue name=\"a\">\n<minResources>vcores=2, cpu=3</minResources></queue></allocations>",
			`"cpu=3": cpu is already given by "vcores=2"`},
		{"<allocations>\n\n<queue name=\"a\"><weigth>2</weigth></queue></allocations>",
			"line 3: <weigth> of root.a: unknown element in <queue>"},
		{"<allocations>\n<queue name=\"a\"><schedulingPolicy>lottery</schedulingPolicy></queue></allocations>",
			`line 2: <schedulingPolicy> of root.a: "lottery": want drf, fair or fifo`},
		{"<allocations>\n<queue name=\"a\">\n<minResources>vcores=4</minResources>\n<maxResources>vcores=2</maxResources></queue></allocations>",
			"line 2: <queue> of root.a: min.cpu: 4 is above max 2"},
		{"<allocations>\n<queue name=\"a\"/>\n<queue name=\"a\"/></allocations>",
			"line 3: <queue> of root.a: queue root.a is defined twice (first on line 2)"},
		{"<allocations>\n<queue name=\"a.b\"/></allocations>", "line 2: <queue> of root: name \"a.b\""},
		{"<allocations>\n<queue name=\"a b\"/></allocations>", "line 2: <queue> of root.a b: name"},
		{"<allocations>\n<queue/></allocations>", "line 2: <queue> of root: a queue needs a name"},
		{"<allocations>\n<queue name=\"a\"><weight>0</weight></queue></allocations>", "<weight> of root.a: \"0\": want a number above 0"},
		{"<allocations>\n<queue name=\"a\"><fairSharePreemptionThreshold>1.5</fairSharePreemptionThreshold></queue></allocations>", "<fairSharePreemptionThreshold> of root.a"},
		{"<allocations>\n<queue name=\"a\"><minSharePreemptionTimeout>soon</minSharePreemptionTimeout></queue></allocations>", "<minSharePreemptionTimeout> of root.a: \"soon\""},
		{"<allocations>\n<queue name=\"a\"><allowPreemptionFrom>maybe</allowPreemptionFrom></queue></allocations>", "want true or false"},
		{"<allocations>\n<queue name=\"a\"><maxInstances>-1</maxInstances></queue></allocations>", "<maxInstances> of root.a"},
		{"<allocations>\n<queue name=\"a\" kind=\"x\"/></allocations>", `unexpected attribute "kind"`},
		{"<allocations>\n<frobnicate/></allocations>", "line 2: <frobnicate>: unknown element in <allocations>"},
		{"<queues/>", "line 1: <queues>: the top-level element must be <allocations>"},
		{"<allocations>\n<queue name=\"a\">\n</allocations>", "line 3: "},
		{"", "no <allocations> element"},
	} {
		_, _, err := Parse([]byte(tc.xml))
		var e *Error
		if err == nil || !errors.As(err, &e) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q:\n got %v\nwant %q", tc.xml, err, tc.want)
		}
	}
	// Load names the file.
	p := filepath.Join(t.TempDir(), "alloc.xml")
	os.WriteFile(p, []byte("<allocations>\n<queue name=\"a\"><weight>x</weight></queue></allocations>"), 0o644)
	if _, _, err := Load(p); err == nil || !strings.HasPrefix(err.Error(), p+":2: <weight> of root.a") {
		t.Errorf("Load: %v", err)
	}
}

func TestACL(t *testing.T) {
	for raw, want := range map[string]struct {
		users  []string
		groups string
	}{
		"a,b g1,g2":      {[]string{"a", "b"}, "g1,g2"},
		"a":              {[]string{"a"}, ""},
		" g1":            {nil, "g1"},
		" ":              {nil, ""},
		"*":              {[]string{"*"}, ""},
		"\n   a,b g\n  ": {[]string{"a", "b"}, "g"},
	} {
		u, g := parseACL(raw)
		if !reflect.DeepEqual(u, want.users) || g != want.groups {
			t.Errorf("%q: %q %q, want %q %q", raw, u, g, want.users, want.groups)
		}
	}
}

func TestResources(t *testing.T) {
	for in, want := range map[string]resource.Vector{
		"vcores=2, memory-mb=4096":     resource.MustVector("cpu=2", "memory=4Gi"),
		"4096 mb, 2 vcores":            resource.MustVector("cpu=2", "memory=4Gi"),
		"4096 MB,1 vcore":              resource.MustVector("cpu=1", "memory=4Gi"),
		"cpu=500m, memory-mb=1Gi":      resource.MustVector("cpu=500m", "memory=1Gi"),
		"netout=1Gbps, diskio=100MB/s": resource.MustVector("netout=1Gbps", "diskio=100MB/s"),
		"disk=1Ti,":                    resource.MustVector("disk=1Ti"),
	} {
		got, err := parseResources(in)
		if err != nil || got != want {
			t.Errorf("%q: %v %v, want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "vcores", "2 cores", "vcores=-1", "memory-mb=x", "disk=100"} {
		if _, err := parseResources(in); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

// TestConfigsExample: the example shipped under configs/ loads.
func TestConfigsExample(t *testing.T) {
	pools, _, err := Load("../../configs/pools/allocation.xml")
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) < 3 || pools[0].Name != "root" {
		t.Fatalf("%+v", pools)
	}
}
