package rule

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func valid() *Rule {
	return &Rule{
		Name:         "hub-official",
		Upstream:     Upstream{URL: "https://registry-1.docker.io", Username: "u", Password: "secret"},
		Repositories: []string{"library/nginx", "library/re*", "/^library/(alpine|busybox)$/"},
		Exclude:      []string{"library/registry"},
		Tags:         Tags{Semver: ">=1.20 <2", Latest: 2},
		Platforms:    []string{"linux/amd64", "linux/arm64/v8"},
		Destination:  "mirror",
		Schedule:     "6h",
		Enabled:      true,
	}
}

func TestValidateNamesTheField(t *testing.T) {
	if err := valid().Validate(); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(r *Rule){
		"name":                 func(r *Rule) { r.Name = "Bad Name" },
		"upstream.url":         func(r *Rule) { r.Upstream.URL = "ftp://x" },
		"upstream.password":    func(r *Rule) { r.Upstream.Password = "" },
		"upstream.concurrency": func(r *Rule) { r.Upstream.Concurrency = 1000 },
		"repositories":         func(r *Rule) { r.Repositories = nil },
		"repositories[1]":      func(r *Rule) { r.Repositories[1] = "library/[" },
		"repositories[2]":      func(r *Rule) { r.Repositories[2] = "/(unclosed/" },
		"exclude[0]":           func(r *Rule) { r.Exclude[0] = "" },
		"tags.regex":           func(r *Rule) { r.Tags.Regex = "(" },
		"tags.semver":          func(r *Rule) { r.Tags.Semver = "not a range" },
		"tags.latest":          func(r *Rule) { r.Tags.Latest = -1 },
		"platforms[0]":         func(r *Rule) { r.Platforms[0] = "amd64" },
		"destination":          func(r *Rule) { r.Destination = "Mirror/" },
		"schedule":             func(r *Rule) { r.Schedule = "every day" },
	}
	for field, breakIt := range cases {
		r := valid()
		breakIt(r)
		err := r.Validate()
		fe, ok := err.(*FieldError)
		if !ok || fe.Field != field {
			t.Errorf("%s: got %v", field, err)
		}
	}
	r := valid()
	r.Schedule = "9s"
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "shorter than ten seconds") {
		t.Errorf("9s schedule: %v", err)
	}
}

func TestDecode(t *testing.T) {
	if _, err := Decode([]byte(`{"name":"a","colour":"red"}`)); err == nil || err.(*FieldError).Field != "colour" {
		t.Fatalf("unknown field: %v", err)
	}
	if _, err := Decode([]byte(`{"name":"a","enabled":"yes"}`)); err == nil || err.(*FieldError).Field != "enabled" {
		t.Fatalf("wrong type: %v", err)
	}
	b, _ := json.Marshal(valid())
	r, err := Decode(b)
	if err != nil || !reflect.DeepEqual(r, valid()) {
		t.Fatalf("round trip: %v %+v", err, r)
	}
	if red := valid().Redacted(); red.Upstream.Password != "********" || valid().Upstream.Password != "secret" {
		t.Fatalf("redacted: %+v", red.Upstream)
	}
}

func TestMatchRepository(t *testing.T) {
	r := valid()
	for name, want := range map[string]bool{
		"library/nginx": true, "library/redis": true, "library/registry": false, // excluded
		"library/alpine": true, "library/alpine2": false, "library/ubuntu": false, "other/nginx": false,
	} {
		if got := r.MatchRepository(name); got != want {
			t.Errorf("%s: %v", name, got)
		}
	}
	if got := r.Exact(); !reflect.DeepEqual(got, []string{"library/nginx"}) {
		t.Errorf("exact: %v", got)
	}
	if r.DestinationOf("library/nginx") != "mirror/library/nginx" {
		t.Error(r.DestinationOf("library/nginx"))
	}
}

// A regex selects whole names, as globs and exact names do.
func TestRegexIsAnchored(t *testing.T) {
	r := valid()
	r.Repositories = []string{"/library/(nginx|redis)/"}
	r.Exclude = []string{"/.*-rc/"}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"library/nginx": true, "library/redis": true,
		"evil/library/nginx": false, "library/nginx-x": false, "library/redis2": false,
		"library/nginx-rc": false,
	} {
		if got := r.MatchRepository(name); got != want {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	r.Exclude = []string{"/rc/"} // anchored too: excludes only "rc"
	if !r.MatchRepository("library/nginx") {
		t.Error("an exclude matching part of a name excluded it")
	}
}

// An on-demand rule without a destination fills missing tags of local
// repositories of the upstream's names: it must name them exactly.
func TestOnDemandWithoutDestinationNamesRepositories(t *testing.T) {
	for _, tc := range []struct {
		repos       []string
		destination string
		onDemand    bool
		field       string // "" when valid
	}{
		{[]string{"library/nginx", "library/re*"}, "", true, "repositories[1]"},
		{[]string{"/library/.*/"}, "", true, "repositories[0]"},
		{[]string{"library/nginx", "library/[ab]pp"}, "", true, "repositories[1]"},
		{[]string{"library/nginx", "library/redis"}, "", true, ""},
		{[]string{"library/*", "/team/.*/"}, "hub", true, ""},
		{[]string{"library/*"}, "", false, ""}, // scheduled only: what runs copy is the admin's choice
	} {
		r := valid()
		r.Repositories, r.Destination, r.OnDemand = tc.repos, tc.destination, tc.onDemand
		err := r.Validate()
		if tc.field == "" {
			if err != nil {
				t.Errorf("%+v: %v", tc, err)
			}
			continue
		}
		if fe, ok := err.(*FieldError); !ok || fe.Field != tc.field || !strings.Contains(fe.Reason, "destination") {
			t.Errorf("%+v: got %v, want an error on %s", tc, err, tc.field)
		}
	}
}

func TestSelectTags(t *testing.T) {
	tags := []string{"1.19.0", "1.20.1", "1.21.0", "1.25.3", "2.0.0", "latest", "1.25.3-alpine", "stable"}
	r := valid()
	if got := r.SelectTags(tags); !reflect.DeepEqual(got, []string{"1.21.0", "1.25.3"}) {
		t.Errorf("semver + latest 2: %v", got) // 1.25.3-alpine is a pre-release: outside the range
	}
	r.Tags = Tags{Regex: `^(stable|latest)$`}
	if got := r.SelectTags(tags); !reflect.DeepEqual(got, []string{"latest", "stable"}) {
		t.Errorf("regex: %v", got)
	}
	r.Tags = Tags{Latest: 3}
	if got := r.SelectTags(tags); !reflect.DeepEqual(got, []string{"1.25.3", "1.25.3-alpine", "2.0.0"}) {
		t.Errorf("latest 3 of everything (the highest versions): %v", got)
	}
	r.Tags = Tags{}
	if got := r.SelectTags(tags); len(got) != len(tags) {
		t.Errorf("no filter: %v", got)
	}
}

func TestPlatformsAndSchedule(t *testing.T) {
	r := valid()
	for _, c := range []struct {
		os, arch, variant string
		want              bool
	}{{"linux", "amd64", "", true}, {"linux", "arm64", "v8", true}, {"linux", "arm64", "", false}, {"linux", "arm", "v7", false}, {"windows", "amd64", "", false}} {
		if got := r.WantPlatform(c.os, c.arch, c.variant); got != c.want {
			t.Errorf("%v: %v", c, got)
		}
	}
	r.Platforms = nil
	if !r.WantPlatform("linux", "s390x", "") {
		t.Error("no platform filter must take everything")
	}
	at := time.Date(2026, 11, 26, 10, 7, 0, 0, time.UTC)
	s, _ := ParseSchedule("30m")
	if s.Next(at) != at.Add(30*time.Minute) {
		t.Error("interval")
	}
	c, err := ParseSchedule("0 */6 * * *")
	if err != nil || c.Next(at) != time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC) {
		t.Errorf("cron: %v %v", err, c)
	}
}

// The example rule in configs/ is valid.
func TestExampleRule(t *testing.T) {
	raw, err := os.ReadFile("../../configs/mirror-rule-example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	j, _ := json.Marshal(v)
	r, err := Decode(j)
	if err == nil {
		err = r.Validate()
	}
	if err != nil || !r.MatchRepository("library/redis") || r.MatchRepository("library/redis-sentinel") {
		t.Fatalf("example rule: %v %+v", err, r)
	}
}

// A stored password goes with an update that leaves it out only for the
// same user at the same upstream (scheme, host and port).
func TestCarryPassword(t *testing.T) {
	old := &Rule{Upstream: Upstream{URL: "https://hub.example", Username: "bot", Password: "s3cret"}}
	for _, tc := range []struct {
		url, user, password string
		want                string // the password after, or "error"
	}{
		{"https://hub.example", "bot", "", "s3cret"},
		{"https://HUB.example:443/", "bot", Redacted, "s3cret"},
		{"https://other.example", "bot", "", "error"},
		{"https://hub.example.evil.example", "bot", Redacted, "error"},
		{"http://hub.example", "bot", "", "error"},
		{"https://hub.example:5000", "bot", "", "error"},
		{"https://other.example", "bot", "new", "new"},
		{"https://other.example", "robot", "pw", "pw"},
		{"https://other.example", "", "", ""},
	} {
		r := &Rule{Upstream: Upstream{URL: tc.url, Username: tc.user, Password: tc.password}}
		err := r.CarryPassword(old)
		var fe *FieldError
		switch {
		case tc.want == "error":
			if !errors.As(err, &fe) || fe.Field != "upstream.password" || !strings.Contains(fe.Reason, "give the password again") {
				t.Errorf("%s: %v, want an upstream.password error", tc.url, err)
			}
		case err != nil || r.Upstream.Password != tc.want:
			t.Errorf("%s %s %q: password %q, %v; want %q", tc.url, tc.user, tc.password, r.Upstream.Password, err, tc.want)
		}
	}
}
