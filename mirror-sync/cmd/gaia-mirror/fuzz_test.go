package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzLoad: a gaia-mirror config (with one GAIA_MIRROR_<KEY>=<value>
// override) is refused with an error that names the file and the key or
// variable at fault (or YAML's own, with a line), or accepted with no
// duration or count below zero, as its own fixed point: written back as
// YAML, it loads to the same config. Seeds: testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	dir := f.TempDir() // one per fuzzing process
	path, again := filepath.Join(dir, "mirror.yml"), filepath.Join(dir, "again.yml")
	keys := []string{"yaml: ", "GAIA_MIRROR_", "log.", "http.", "database.", "admin.", "registry.", "worker."}
	f.Fuzz(func(t *testing.T, doc, key, value string) {
		if strings.ContainsAny(key, "=\x00") || strings.Contains(value, "\x00") {
			return // no such environment variable
		}
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if key != "" {
			t.Setenv("GAIA_MIRROR_"+key, value)
		}
		cfg, err := load(path)
		if err != nil {
			rest, ok := strings.CutPrefix(err.Error(), path+": ")
			if !ok {
				rest, ok = strings.CutPrefix(err.Error(), path+" with GAIA_MIRROR_* overrides: ")
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
		w := cfg.Worker
		if cfg.HTTP.DrainTimeout <= 0 || w.Lease < 0 || w.Poll < 0 || w.Parallel < 0 {
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
			os.Unsetenv("GAIA_MIRROR_" + key) // t.Setenv restores it afterwards
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
