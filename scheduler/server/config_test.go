package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := LoadConfig(filepath.Join("..", "..", "configs", "scheduler.yml"), []string{"GAIA_HTTP_ADDR=127.0.0.1:7100", "GAIA_CLUSTER_ADVERTISE=10.0.0.1:7100"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTP.Addr != "127.0.0.1:7100" || cfg.Cluster.Advertise != "10.0.0.1:7100" || cfg.Scheduler.NodeTimeout.String() != "30s" {
		t.Fatalf("%+v", cfg)
	}
}

func TestClusterConfigLoads(t *testing.T) {
	if _, err := LoadConfig(filepath.Join("..", "..", "configs", "cluster", "scheduler.yml"), nil); err != nil {
		t.Fatal(err)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	base := `database: {url: "postgres://x@127.0.0.1/db"}
cluster: {consul: {addr: "127.0.0.1:8500"}}
auth: {admintoken: a, nodetoken: n}
registry: {url: "http://127.0.0.1:5000"}
`
	for extra, key := range map[string]string{
		"scheduler: {pollinterval: 40s}\n":     "scheduler.pollinterval",
		"scheduler: {scoring: random}\n":       "scheduler.scoring",
		"http: {addr: \"0.0.0.0:7000\"}\n":     "cluster.advertise",
		"scheduler: {nodetimeout: -1s}\n":      "scheduler.nodetimeout",
		"pools: {reload: -1s}\n":               "pools.reload",
		"scheduler: {replacebackoffmax: 1s}\n": "scheduler.replacebackoffmax",
	} {
		p := filepath.Join(t.TempDir(), "c.yml")
		os.WriteFile(p, []byte(base+extra), 0o644)
		_, err := LoadConfig(p, nil)
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%q: %v, want an error naming %s", extra, err, key)
		}
	}
}
