package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gaia-registry/gaia/tests/harness"
)

// TestGaiactlMirrorRules: gaiactl drives gaia-mirror's admin API: create a
// rule from YAML, refuse invalid ones naming the field, list and show
// (no password anywhere), update, run now, history, delete.
func TestGaiactlMirrorRules(t *testing.T) {
	addr := harness.FreeAddr(t)
	token := "e2e-admin-token-0123456789"
	harness.StartDaemon(t, "./mirror-sync/cmd/gaia-mirror", nil, addr, fmt.Sprintf(`log: {level: warn}
http: {addr: %s}
database: {url: %q, migrate: true}
admin: {token: %q}
worker: {disabled: true}   # runs stay queued: this test reads them back as such
`, addr, harness.NewDatabase(t), token))
	gaiactl := harness.Binary(t, "./cmd/gaiactl")
	run := func(args ...string) (string, error) {
		cmd := exec.Command(gaiactl, append([]string{"--server", "http://" + addr, "--token", token}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o644)
		return p
	}
	good := write("hub.yaml", `name: hub
upstream: {url: "http://127.0.0.1:1", username: bot, password: very-secret}
repositories: [library/nginx, "library/re*"]
tags: {semver: ">=1.20", latest: 3}
platforms: [linux/amd64]
destination: mirror
schedule: 6h
enabled: true
`)
	if out, err := run("mirror", "create", "-f", good); err != nil || !strings.Contains(out, "hub") || !strings.Contains(out, "mirror") {
		t.Fatalf("create: %v\n%s", err, out)
	}
	bad := write("bad.yaml", "name: bad\nupstream: {url: \"http://127.0.0.1:1\"}\nrepositories: [x]\nschedule: \"every day\"\n")
	if out, err := run("mirror", "create", "-f", bad); err == nil || !strings.Contains(out, "schedule:") {
		t.Fatalf("invalid rule: %v\n%s", err, out)
	}
	unknown := write("unknown.json", `{"name":"u","upstream":{"url":"http://127.0.0.1:1"},"repositories":["x"],"schedule":"1h","colour":"red"}`)
	if out, err := run("mirror", "create", "-f", unknown); err == nil || !strings.Contains(out, "colour: unknown field") {
		t.Fatalf("unknown field: %v\n%s", err, out)
	}
	unreachable := write("check.yaml", "name: check\nupstream: {url: \"http://127.0.0.1:1\"}\nrepositories: [x]\nschedule: 1h\n")
	if out, err := run("mirror", "create", "--check", "-f", unreachable); err == nil || !strings.Contains(out, "upstream.url: upstream unreachable") {
		t.Fatalf("--check of an unreachable upstream: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"mirror", "list"}, {"mirror", "show", "hub"}, {"-o", "json", "mirror", "list"}} {
		out, err := run(args...)
		if err != nil || !strings.Contains(out, "hub") || strings.Contains(out, "very-secret") {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	updated := write("hub2.yaml", strings.Replace(strings.Replace(string(mustRead(t, good)), "schedule: 6h", "schedule: \"0 3 * * *\"", 1), ", password: very-secret", "", 1))
	if out, err := run("mirror", "update", "hub", "-f", updated); err != nil || !strings.Contains(out, "0 3 * * *") {
		t.Fatalf("update: %v\n%s", err, out)
	}
	out, err := run("mirror", "run", "hub")
	if err != nil || !strings.Contains(out, "manual") || !strings.Contains(out, "queued") {
		t.Fatalf("run: %v\n%s", err, out)
	}
	if out, err := run("mirror", "history", "hub", "--limit", "5"); err != nil || strings.Count(out, "queued") != 1 {
		t.Fatalf("history: %v\n%s", err, out)
	}
	if out, err := run("mirror", "delete", "hub"); err != nil || !strings.Contains(out, "deleted hub") {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	if out, err := run("mirror", "show", "hub"); err == nil || !strings.Contains(out, "name: no such mirror rule") {
		t.Fatalf("show after delete: %v\n%s", err, out)
	}
	if out, err := exec.Command(gaiactl, "--server", "http://"+addr, "--token", "wrong", "mirror", "list").CombinedOutput(); err == nil || !strings.Contains(string(out), "admin token required") {
		t.Fatalf("wrong token: %v\n%s", err, out)
	}
	if out, err := exec.Command(gaiactl, "mirror").CombinedOutput(); err == nil || !strings.Contains(string(out), "usage: gaiactl") {
		t.Fatalf("usage: %v\n%s", err, out)
	}
}

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
