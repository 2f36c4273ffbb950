package main

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzLoad: a gaia-nodeagent config (with one GAIA_NODEAGENT_<KEY>=<value>
// override) is refused with an error that names the file and the key or
// variable at fault (or YAML's own), or accepted with no duration or
// count below zero and GC percents in order, as its own fixed point:
// written back as YAML, it loads to the same config. Seeds:
// testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	dir := f.TempDir()
	path, again := filepath.Join(dir, "agent.yml"), filepath.Join(dir, "again.yml")
	keys := []string{"yaml: ", "GAIA_NODEAGENT_", "log.", "http.", "node.", "scheduler.", "docker.", "registry.",
		"consul.", "pull.", "instances.", "images.", "agent.", "enforce.", "resource"}
	f.Fuzz(func(t *testing.T, doc, key, value string) {
		if strings.ContainsAny(key, "=\x00") || strings.Contains(value, "\x00") {
			return
		}
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if key != "" {
			t.Setenv("GAIA_NODEAGENT_"+key, value)
		}
		cfg, err := load(path)
		if err != nil {
			rest, ok := strings.CutPrefix(err.Error(), path+": ")
			if !ok {
				rest, ok = strings.CutPrefix(err.Error(), path+" with GAIA_NODEAGENT_* overrides: ")
			}
			named := false
			for _, k := range keys {
				named = named || strings.HasPrefix(rest, k)
			}
			if !ok || !named {
				t.Fatalf("error names no file and key: %v", err)
			}
			return
		}
		p, a, im := cfg.Pull, cfg.Agent, cfg.Images
		if cfg.HTTP.DrainTimeout <= 0 || p.StallTimeout <= 0 || p.Attempts <= 0 || p.Backoff <= 0 || p.MaxBackoff <= 0 ||
			a.PollWait < 0 || a.ReportInterval < 0 || a.Resync < 0 || a.RetryInterval < 0 || a.UsageInterval < 0 ||
			cfg.Instances.StopTimeout < 0 || math.IsNaN(im.GCHighPercent) || math.IsNaN(im.GCLowPercent) ||
			im.GCLowPercent < 0 || im.GCLowPercent > im.GCHighPercent || im.GCHighPercent > 100 ||
			!(0 <= cfg.Enforce.PressureThreshold && cfg.Enforce.PressureThreshold <= 1) || cfg.Enforce.CheckInterval < 0 {
			t.Fatalf("accepted %+v", cfg)
		}
		out, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatalf("accepted config does not marshal: %v", err)
		}
		if err := os.WriteFile(again, out, 0o600); err != nil {
			t.Fatal(err)
		}
		if key != "" {
			os.Unsetenv("GAIA_NODEAGENT_" + key)
		}
		cfg2, err := load(again)
		if err != nil {
			t.Fatalf("accepted config written back does not load: %v\n%s", err, out)
		}
		if out2, _ := yaml.Marshal(cfg2); !bytes.Equal(out, out2) {
			t.Fatalf("config changed when written back and loaded:\n%s\n%s", out, out2)
		}
	})
}
