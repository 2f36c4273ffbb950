package yamlconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type conf struct {
	HTTP struct {
		Addr  string        `yaml:"addr"`
		Drain time.Duration `yaml:"drain"`
	} `yaml:"http"`
	Flag  bool `yaml:"flag"`
	Count int  `yaml:"count"`
}

func write(t *testing.T, s string) string {
	p := filepath.Join(t.TempDir(), "c.yml")
	os.WriteFile(p, []byte(s), 0o644)
	return p
}

func TestOverridesKeepTypes(t *testing.T) {
	var c conf
	err := Load(write(t, "http: {addr: a:1}\ncount: 1\n"), []string{
		"X_HTTP_DRAIN=5s", "X_FLAG=true", "X_COUNT=7", "X_OTHER_THING=ignored", "Y_HTTP_ADDR=not-ours",
	}, "X_", []string{"http", "flag", "count"}, &c)
	if err != nil || c.HTTP.Addr != "a:1" || c.HTTP.Drain != 5*time.Second || !c.Flag || c.Count != 7 {
		t.Fatalf("%v %+v", err, c)
	}
}

func TestErrorsCarryLines(t *testing.T) {
	var c conf
	err := Load(write(t, "http:\n  addr: x\n  port: 5\n"), nil, "X_", []string{"http"}, &c)
	if err == nil || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "port") {
		t.Fatalf("unknown key: %v", err)
	}
	err = Load(write(t, "count: 1\n"), []string{"X_COUNT=many"}, "X_", []string{"count"}, &c)
	if err == nil || !strings.Contains(err.Error(), "with X_* overrides") {
		t.Fatalf("bad override: %v", err)
	}
	if err := Load(filepath.Join(t.TempDir(), "none.yml"), nil, "X_", nil, &c); err == nil {
		t.Fatal("missing file loaded")
	}
}

// A string keeps its spelling, from the file or an override: overrides
// were once applied by re-encoding the file's values, so with any
// override present a token written 0123 became "123".
func TestOverridesKeepSpelling(t *testing.T) {
	var c conf
	err := Load(write(t, "http: {addr: 0123}\ncount: 1\n"), []string{"X_COUNT=0x10"}, "X_", []string{"http", "count"}, &c)
	if err != nil || c.HTTP.Addr != "0123" || c.Count != 16 {
		t.Fatalf("file's 0123 with an override: %v %+v", err, c)
	}
	for _, v := range []string{"0123", "1e3", "1_000", "0x1F", "null", "true"} {
		var c conf
		if err := Load(write(t, ""), []string{"X_HTTP_ADDR=" + v}, "X_", []string{"http"}, &c); err != nil || c.HTTP.Addr != v {
			t.Fatalf("X_HTTP_ADDR=%s: %v %+v", v, err, c)
		}
	}
}

// A negative duration, in the file or an override, is refused naming its
// key: a negative poll interval once made a worker poll in a loop.
func TestNegativeDurationsRefused(t *testing.T) {
	var c conf
	err := Load(write(t, "http: {drain: -1s}\n"), nil, "X_", []string{"http"}, &c)
	if err == nil || !strings.Contains(err.Error(), "http.drain: must not be negative, got -1s") {
		t.Fatalf("negative in the file: %v", err)
	}
	err = Load(write(t, "http: {drain: 1s}\n"), []string{"X_HTTP_DRAIN=-5m"}, "X_", []string{"http"}, &c)
	if err == nil || !strings.Contains(err.Error(), "with X_* overrides: http.drain: must not be negative, got -5m0s") {
		t.Fatalf("negative override: %v", err)
	}
	if err := Load(write(t, "http: {drain: 0s}\n"), nil, "X_", []string{"http"}, &c); err != nil {
		t.Fatalf("zero: %v", err)
	}
}
