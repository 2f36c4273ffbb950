package main

import (
	"fmt"
	"net"
	"slices"
	"strconv"

	"github.com/hashicorp/consul/api"
)

// schedulerService is the Consul service gaia-scheduler registers as,
// tagged cluster=NAME, and leader on the leader (scheduler/DESIGN.md).
const schedulerService = "gaia-scheduler"

// resolveCluster asks Consul at addr ("" = $CONSUL_HTTP_ADDR, else
// 127.0.0.1:8500) for a passing gaia-scheduler instance of cluster name,
// preferring the leader, and returns its base URL: https when the
// service's meta says scheme=https, else http.
func resolveCluster(addr, name string) (string, error) {
	cfg := api.DefaultConfig()
	if addr != "" {
		cfg.Address = addr
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return "", fmt.Errorf("--consul %s: %w", cfg.Address, err)
	}
	tag := "cluster=" + name
	entries, _, err := client.Health().Service(schedulerService, tag, true, nil)
	if err != nil {
		return "", fmt.Errorf("--cluster %s: asking Consul at %s: %w", name, cfg.Address, err)
	}
	if len(entries) == 0 {
		return "", fmt.Errorf("--cluster %s: no passing %s instance tagged %s in Consul at %s", name, schedulerService, tag, cfg.Address)
	}
	pick := entries[0]
	for _, e := range entries {
		if slices.Contains(e.Service.Tags, "leader") {
			pick = e
			break
		}
	}
	host := pick.Service.Address
	if host == "" {
		host = pick.Node.Address
	}
	scheme := "http"
	if pick.Service.Meta["scheme"] == "https" {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, strconv.Itoa(pick.Service.Port)), nil
}
