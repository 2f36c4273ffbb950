package main

import (
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"

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

// Endpoint is one instance of an app as Consul lists it (gaiactl app
// endpoints): the node agent registers each running instance under the
// app's name, ID = the instance, Meta port_<name> = each named port's
// host port.
type Endpoint struct {
	Instance string         `json:"instance"`
	Node     string         `json:"node,omitempty"`
	Address  string         `json:"address"`
	Port     int            `json:"port"`
	Ports    map[string]int `json:"ports,omitempty"`
	Version  string         `json:"version,omitempty"`
	Canary   bool           `json:"canary,omitempty"`
	Status   string         `json:"status"` // passing, warning or critical
}

// appEndpoints asks Consul at addr ("" = $CONSUL_HTTP_ADDR, else
// 127.0.0.1:8500) for the app's service, every instance whatever its
// checks say, sorted by instance.
func appEndpoints(addr, app string) ([]Endpoint, error) {
	cfg := api.DefaultConfig()
	if addr != "" {
		cfg.Address = addr
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("--consul %s: %w", cfg.Address, err)
	}
	entries, _, err := client.Health().Service(app, "", false, nil)
	if err != nil {
		return nil, fmt.Errorf("asking Consul at %s for %s: %w", cfg.Address, app, err)
	}
	out := []Endpoint{}
	for _, e := range entries {
		ep := Endpoint{Instance: e.Service.ID, Node: e.Service.Meta["node"], Address: e.Service.Address,
			Port: e.Service.Port, Version: e.Service.Meta["version"], Canary: slices.Contains(e.Service.Tags, "canary"),
			Status: e.Checks.AggregatedStatus()}
		if ep.Address == "" && e.Node != nil {
			ep.Address = e.Node.Address
		}
		for k, v := range e.Service.Meta {
			if name, ok := strings.CutPrefix(k, "port_"); ok {
				if p, err := strconv.Atoi(v); err == nil {
					if ep.Ports == nil {
						ep.Ports = map[string]int{}
					}
					ep.Ports[name] = p
				}
			}
		}
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Instance < out[j].Instance })
	return out, nil
}

// portList is "name=port,..." sorted by name.
func portList(ports map[string]int) string {
	names := make([]string, 0, len(ports))
	for n := range ports {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%d", n, ports[n])
	}
	return b.String()
}
