package gateway

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzLoadConfig: a gateway config (with one GAIA_GATEWAY_<KEY>=<value>
// override) is refused with an error that names the file and the key or
// variable at fault (or YAML's own, with a line), or accepted as a
// config that is its own fixed point: written back as YAML, it loads to
// the same config. Seeds: testdata/fuzz/FuzzLoadConfig (configs/cluster).
func FuzzLoadConfig(f *testing.F) {
	dir := f.TempDir() // one per fuzzing process
	path, again := filepath.Join(dir, "gateway.yml"), filepath.Join(dir, "again.yml")
	keys := []string{"yaml: ", envPrefix, "log.", "http.", "servers.", "idc:", "consul.", "failover:", "retries:", "eject:", "replay."}
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
				rest, ok = strings.CutPrefix(err.Error(), path+" with GAIA_GATEWAY_* overrides: ")
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
		if *cfg.Retries < 0 || *cfg.Replay.MaxBytes < 0 || cfg.Eject.Failures < 0 || cfg.Eject.Duration <= 0 || cfg.HTTP.DrainTimeout <= 0 || cfg.IDC == "" || cfg.Consul.Addr == "" {
			t.Fatalf("accepted %+v", cfg)
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
