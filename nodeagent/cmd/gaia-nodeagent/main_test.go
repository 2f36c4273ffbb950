package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/resource"
)

func writeConfig(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yml")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const minimal = `node: {name: n1, address: 10.0.0.5, capacity: {netin: 10Gbit}}
scheduler: {urls: ["http://127.0.0.1:5400/"], token: secret}
`

func TestLoadDefaultsAndOverrides(t *testing.T) {
	t.Setenv("GAIA_NODEAGENT_REGISTRY_GATEWAY", "gw.idc-a:6000")
	t.Setenv("GAIA_NODEAGENT_PULL_STALLTIMEOUT", "90s")
	c, err := load(writeConfig(t, minimal))
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP.Addr != "127.0.0.1:5300" || c.Docker.Host != "unix:///var/run/docker.sock" || c.Consul.Addr != "127.0.0.1:8500" ||
		c.Pull.Attempts != 5 || c.Pull.Backoff != time.Second || c.Scheduler.URLs[0] != "http://127.0.0.1:5400" {
		t.Errorf("defaults not applied: %+v", c)
	}
	if c.Registry.Gateway != "gw.idc-a:6000" || c.Pull.StallTimeout != 90*time.Second {
		t.Errorf("overrides not applied: gateway %q stall %s", c.Registry.Gateway, c.Pull.StallTimeout)
	}
	if c.Node.Capacity[resource.NetIn] != 10e9 {
		t.Errorf("netin %d, want 10Gbit", c.Node.Capacity[resource.NetIn])
	}
}

func TestLoadErrorsNameTheKey(t *testing.T) {
	for _, c := range []struct{ doc, key string }{
		{"node: {name: n1}\n", "scheduler.urls"},
		{"scheduler: {cluster: c1, token: t}\nconsul: {disabled: true}\n", "scheduler.cluster"},
		{"scheduler: {urls: [\"ftp://x\"], token: t}\n", "scheduler.urls[0]"},
		{"scheduler: {urls: [\"http://x\"]}\n", "scheduler.token"},
		{minimal + "registry: {gateway: \"http://gw:6000\"}\n", "registry.gateway"},
		{minimal + "registry: {username: robot}\n", "registry.password"},
		{minimal + "instances: {publiship: nowhere}\n", "instances.publiship"},
		{minimal + "log: {level: loud}\n", "log.level"},
		{minimal + "bogus: 1\n", "bogus"},
		{minimal + "images: {gchighpercent: 70, gclowpercent: 75}\n", "images.gclowpercent"},
	} {
		_, err := load(writeConfig(t, c.doc))
		if err == nil || !strings.Contains(err.Error(), c.key) {
			t.Errorf("%q: error %v, want one naming %s", c.doc, err, c.key)
		}
	}
}

func TestExampleConfigLoads(t *testing.T) {
	c, err := load("../../../configs/nodeagent.yml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Node.Name != "node-a1" || c.Registry.Gateway == "" || c.Node.Reserved[resource.Memory] != 1<<30 {
		t.Errorf("example config read as %+v", c)
	}
}
