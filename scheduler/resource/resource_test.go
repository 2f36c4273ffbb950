package resource

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestParse(t *testing.T) {
	cases := []struct {
		d    Dim
		in   string
		want int64
	}{
		{CPU, "2", 2000}, {CPU, "500m", 500}, {CPU, "0.25", 250}, {CPU, "1.5", 1500},
		{Memory, "4Gi", 4 << 30}, {Memory, "512Mi", 512 << 20}, {Memory, "1G", 1e9}, {Memory, "1024", 1024},
		{Memory, "1.5Gi", 3 << 29}, {Memory, "2GiB", 2 << 30}, {Disk, "100GB", 100e9}, {Memory, "7B", 7},
		{DiskIO, "50MiB/s", 50 << 20}, {DiskIO, "1Gi", 1 << 30}, {DiskIO, "100MB/s", 100e6},
		{NetIn, "100Mbit", 100e6}, {NetOut, "1Gbps", 1e9}, {NetIn, "10G", 10e9}, {NetIn, "5bit/s", 5}, {NetIn, "1Gbit/s", 1e9},
	}
	for _, c := range cases {
		got, err := Parse(c.d, c.in)
		if err != nil || got != c.want {
			t.Errorf("Parse(%s, %q) = %d, %v; want %d", c.d, c.in, got, err, c.want)
		}
	}
	for _, bad := range []struct {
		d  Dim
		in string
	}{{CPU, ""}, {CPU, "1.5m"}, {CPU, "-1"}, {CPU, "2Gi"}, {Memory, "4Gx"}, {Memory, "abc"}, {NetIn, "1MiB"}, {Memory, "0.5"}, {Memory, "99999999Ei"}} {
		if v, err := Parse(bad.d, bad.in); err == nil {
			t.Errorf("Parse(%s, %q) = %d, want an error", bad.d, bad.in, v)
		}
	}
}

func TestFormatRoundTrip(t *testing.T) {
	cases := []struct {
		d    Dim
		v    int64
		want string
	}{
		{CPU, 2000, "2"}, {CPU, 500, "500m"}, {Memory, 4 << 30, "4Gi"}, {Memory, 1000, "1000"}, {Memory, 1536 << 20, "1536Mi"},
		{DiskIO, 50 << 20, "50MiB/s"}, {DiskIO, 3, "3B/s"}, {NetIn, 100e6, "100Mbit"}, {NetOut, 1500, "1500bit"}, {NetOut, 0, "0bit"},
	}
	for _, c := range cases {
		if got := Format(c.d, c.v); got != c.want {
			t.Errorf("Format(%s, %d) = %q, want %q", c.d, c.v, got, c.want)
		}
		if back, err := Parse(c.d, Format(c.d, c.v)); err != nil || back != c.v {
			t.Errorf("round trip %s %d: %d, %v", c.d, c.v, back, err)
		}
	}
	for _, d := range Dims {
		for _, v := range []int64{1, 999, 1024, 1e6, 3 << 40, 123456789} {
			if back, err := Parse(d, Format(d, v)); err != nil || back != v {
				t.Errorf("round trip %s %d via %q: %d, %v", d, v, Format(d, v), back, err)
			}
		}
	}
}

func TestVectorJSON(t *testing.T) {
	v := MustVector("cpu=500m", "memory=4Gi", "netin=100Mbit")
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"cpu":"500m","memory":"4Gi","netin":"100Mbit"}` {
		t.Fatalf("marshal: %s", b)
	}
	var back Vector
	if err := json.Unmarshal(b, &back); err != nil || back != v {
		t.Fatalf("unmarshal: %v %v", back, err)
	}
	if err := json.Unmarshal([]byte(`{"cpu":2,"memory":1024}`), &back); err != nil || back != (Vector{2000, 1024}) {
		t.Fatalf("numbers: %v %v", back, err)
	}
	err = json.Unmarshal([]byte(`{"cpu":"1","memory":"lots"}`), &back)
	var de *DimError
	if !errors.As(err, &de) || de.Dim != "memory" {
		t.Fatalf("bad memory: %v", err)
	}
	err = json.Unmarshal([]byte(`{"gpu":"1"}`), &back)
	if !errors.As(err, &de) || de.Dim != "gpu" {
		t.Fatalf("unknown dim: %v", err)
	}
	if err := json.Unmarshal([]byte(`[1]`), &back); err == nil {
		t.Fatal("array accepted")
	}
}

func TestVectorYAML(t *testing.T) {
	var s struct {
		R Vector `yaml:"r"`
		L Bytes  `yaml:"l"`
	}
	if err := yaml.Unmarshal([]byte("r:\n  cpu: 2\n  memory: 4Gi\n  diskio: 50MiB/s\nl: 8Gi\n"), &s); err != nil {
		t.Fatal(err)
	}
	want := Vector{CPU: 2000, Memory: 4 << 30, DiskIO: 50 << 20}
	if s.R != want || s.L != 8<<30 {
		t.Fatalf("got %v %d", s.R, s.L)
	}
	out, err := yaml.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "memory: 4Gi") || !strings.Contains(string(out), "l: 8Gi") {
		t.Fatalf("marshal: %s", out)
	}
	if err := yaml.Unmarshal([]byte("r:\n  cpu: lots\n"), &s); err == nil || !strings.Contains(err.Error(), "cpu") {
		t.Fatalf("bad cpu: %v", err)
	}
}

func TestVectorOps(t *testing.T) {
	a := Vector{1000, 4 << 30}
	c := Vector{9000, 18 << 30}
	if !a.Fits(c) || c.Fits(a) {
		t.Fatal("Fits")
	}
	if got := a.Add(a).Sub(a); got != a {
		t.Fatal("Add/Sub")
	}
	if s := a.DominantShare(c); s < 0.222 || s > 0.223 {
		t.Fatalf("DominantShare = %v, want 4/18", s)
	}
	if (Vector{5}).DominantShare(Vector{}) != 0 {
		t.Fatal("zero total must not dominate")
	}
	if !(Vector{}).IsZero() || a.IsZero() {
		t.Fatal("IsZero")
	}
	if got := (Vector{1, 5}).Max(Vector{3, 2}); got != (Vector{3, 5}) {
		t.Fatalf("Max %v", got)
	}
	if got := a.String(); got != "cpu=1 memory=4Gi" {
		t.Fatalf("String %q", got)
	}
}
