package server

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzLoadConfig: a registry config (with one GAIA_<KEY>=<value>
// override) is refused with an error that names the file and the key at
// fault (or YAML's own, with a line), or accepted as a config that
// validates, has no duration below zero, and is its own fixed point: written back as YAML, it loads to
// the same config. Seeds: testdata/fuzz/FuzzLoadConfig (configs/).
func FuzzLoadConfig(f *testing.F) {
	dir := f.TempDir() // one per fuzzing process
	path, again := filepath.Join(dir, "registry.yml"), filepath.Join(dir, "again.yml")
	f.Fuzz(func(t *testing.T, doc, key, value string) {
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		var environ []string
		if key != "" {
			environ = []string{envPrefix + key + "=" + value}
		}
		cfg, err := LoadConfig(path, environ)
		if err != nil {
			rest, ok := strings.CutPrefix(err.Error(), path+": ")
			if !ok {
				rest, ok = strings.CutPrefix(err.Error(), path+" with GAIA_* overrides: ")
			}
			if !ok || !namesKey(rest) {
				t.Fatalf("error names no file and key: %v", err)
			}
			return
		}
		if cfg.HTTP.DrainTimeout <= 0 || cfg.Cluster.Consul.CheckInterval <= 0 || cfg.Cluster.Consul.DeregisterAfter <= 0 {
			t.Fatalf("accepted a duration that is not positive: %+v", cfg)
		}
		if _, err := cfg.StorageConfig(); err != nil {
			t.Fatalf("accepted, then StorageConfig: %v", err)
		}
		out, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatalf("accepted config does not marshal: %v", err)
		}
		if err := os.WriteFile(again, out, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg2, err := LoadConfig(again, nil)
		if err != nil {
			t.Fatalf("accepted config written back does not load: %v\n%s", err, out)
		}
		if out2, _ := yaml.Marshal(cfg2); !bytes.Equal(out, out2) {
			t.Fatalf("config changed when written back and loaded:\n%s\n%s", out, out2)
		}
	})
}

// namesKey: a config error starts with YAML's own (which gives a line),
// the key at fault (under one of the sections) or the variable at fault.
func namesKey(msg string) bool {
	if strings.HasPrefix(msg, "yaml: ") || strings.HasPrefix(msg, envPrefix) {
		return true
	}
	for _, s := range sections {
		if strings.HasPrefix(msg, s+".") || strings.HasPrefix(msg, s+":") {
			return true
		}
	}
	return false
}
