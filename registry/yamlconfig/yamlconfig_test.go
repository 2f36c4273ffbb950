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
