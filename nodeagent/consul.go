package nodeagent

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	consul "github.com/hashicorp/consul/api"

	"github.com/gaia-registry/gaia/scheduler/model"
)

// Consul registration of an instance: service name = the app's name, ID =
// the instance's ID, address = the node's address, port = the first named
// port's host port, Meta = every named port ("port_<name>": host port,
// "containerport_<name>": container port/protocol), the app's version and
// the node; tag "canary" on canary instances; the app's health check
// (tcp and http run by Consul against address:port, exec a TTL check the
// agent passes or fails with its own exec check's result).

// metaKey makes a Consul Meta key of a port name (letters, digits, - and _).
func metaKey(prefix, name string) string {
	var b strings.Builder
	b.WriteString(prefix)
	for _, r := range name {
		if r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// ttlCheckID is the ID of an exec-checked instance's TTL check.
func ttlCheckID(instance string) string { return "gaia-health:" + instance }

func serviceRegistration(d *DesiredInstance, node, address string) *consul.AgentServiceRegistration {
	reg := &consul.AgentServiceRegistration{
		ID:      d.ID,
		Name:    d.App,
		Address: address,
		Meta: map[string]string{
			"version":  strconv.FormatInt(d.Version, 10),
			"node":     node,
			"instance": d.ID,
		},
		Tags: []string{"gaia", "version=" + strconv.FormatInt(d.Version, 10)},
	}
	if d.Canary {
		reg.Tags = append(reg.Tags, "canary")
	}
	for i, p := range d.Ports {
		if i == 0 {
			reg.Port = p.HostPort
		}
		proto := p.Protocol
		if proto == "" {
			proto = "tcp"
		}
		reg.Meta[metaKey("port_", p.Name)] = strconv.Itoa(p.HostPort)
		reg.Meta[metaKey("containerport_", p.Name)] = fmt.Sprintf("%d/%s", p.ContainerPort, proto)
	}
	if h := d.Health; h != nil {
		c := &consul.AgentServiceCheck{Name: d.App + " health (" + h.Type + ")"}
		interval, timeout := healthInterval(h), healthTimeout(h)
		hp := hostPortOf(d, h.Port)
		switch h.Type {
		case model.HealthTCP:
			c.TCP = net.JoinHostPort(address, strconv.Itoa(hp))
			c.Interval, c.Timeout = interval.String(), timeout.String()
		case model.HealthHTTP:
			path := h.Path
			if !strings.HasPrefix(path, "/") {
				path = "/" + path
			}
			c.HTTP = "http://" + net.JoinHostPort(address, strconv.Itoa(hp)) + path
			c.Interval, c.Timeout = interval.String(), timeout.String()
		default:
			c.CheckID = ttlCheckID(d.ID)
			c.TTL = (3 * interval).String()
		}
		reg.Check = c
	}
	return reg
}

// hostPortOf is the host port of the named port (the first port when name
// is empty), 0 when there is none.
func hostPortOf(d *DesiredInstance, name string) int {
	for _, p := range d.Ports {
		if name == "" || p.Name == name {
			return p.HostPort
		}
	}
	return 0
}
