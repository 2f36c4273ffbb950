package nodeagent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"

	"github.com/gaia-registry/gaia/scheduler/resource"
)

// Container labels: an agent touches only containers whose LabelNode is
// its node's name.
const (
	LabelNode     = "gaia.node"
	LabelApp      = "gaia.app"
	LabelInstance = "gaia.instance"
	LabelVersion  = "gaia.version"
	// LabelSpec is a hash of the instance's spec: a container whose hash
	// differs from the desired one is replaced, not adopted.
	LabelSpec = "gaia.spec"
)

// ContainerName is the Docker name of an instance's container: dockerd
// refuses a second container of that name, so no instance runs twice.
func ContainerName(instance string) string { return "gaia-" + instance }

// specHash identifies what the container was made from (all of the
// instance but its desired state).
func specHash(d *DesiredInstance) string {
	c := *d
	c.Desired = ""
	c.Canary = false // a promote re-tags the instance in Consul, never replaces it
	b, _ := json.Marshal(c)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// PullRef is the reference the agent pulls and runs for image: the image's
// repository and digest at the IDC's gateway (the registry host an image
// reference may name is replaced by gateway; gateway "" keeps it).
func PullRef(image, gateway string) string {
	if gateway == "" {
		return image
	}
	if first, rest, ok := strings.Cut(image, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		image = rest
	}
	return strings.TrimRight(gateway, "/") + "/" + image
}

// envName is GAIA_PORT_<NAME>'s NAME: upper case, anything but letters and
// digits an underscore.
func envName(name string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(name) {
		if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// containerSpec is the container an instance runs as.
func containerSpec(d *DesiredInstance, ref, node, hostIP, publishIP string) (*container.Config, *container.HostConfig, error) {
	env := map[string]string{}
	for k, v := range d.Env {
		env[k] = v
	}
	env["GAIA_APP"] = d.App
	env["GAIA_INSTANCE"] = d.ID
	env["GAIA_HOST_IP"] = hostIP
	exposed := nat.PortSet{}
	bindings := nat.PortMap{}
	for _, p := range d.Ports {
		if p.HostPort <= 0 {
			return nil, nil, fmt.Errorf("port %q has no host port assigned", p.Name)
		}
		proto := p.Protocol
		if proto == "" {
			proto = "tcp"
		}
		port, err := nat.NewPort(proto, strconv.Itoa(p.ContainerPort))
		if err != nil {
			return nil, nil, fmt.Errorf("port %q: %w", p.Name, err)
		}
		exposed[port] = struct{}{}
		bindings[port] = append(bindings[port], nat.PortBinding{HostIP: publishIP, HostPort: strconv.Itoa(p.HostPort)})
		env["GAIA_PORT_"+envName(p.Name)] = strconv.Itoa(p.HostPort)
	}
	var envList []string
	for k, v := range env {
		envList = append(envList, k+"="+v)
	}
	sort.Strings(envList)
	labels := map[string]string{}
	for k, v := range d.Labels {
		labels[k] = v
	}
	labels[LabelNode] = node
	labels[LabelApp] = d.App
	labels[LabelInstance] = d.ID
	labels[LabelVersion] = strconv.FormatInt(d.Version, 10)
	labels[LabelSpec] = specHash(d)
	cfg := &container.Config{
		Image:        ref,
		Env:          envList,
		Labels:       labels,
		ExposedPorts: exposed,
		Hostname:     d.ID,
	}
	if len(d.Command) > 0 {
		cfg.Entrypoint = d.Command
	}
	if len(d.Args) > 0 {
		cfg.Cmd = d.Args
	}
	hc := &container.HostConfig{
		NetworkMode:   "bridge",
		PortBindings:  bindings,
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled}, // the agent applies the app's policy
		LogConfig:     container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "10m", "max-file": "3"}},
		Resources:     resources(d),
	}
	return cfg, hc, nil
}

// resources: CPU shares from the request (1024 per core), a CFS quota when
// a CPU ceiling is set; the memory request as the reservation (soft
// limit), the ceiling (memoryLimit, else the request) as the hard limit,
// without swap; the app's cpuset when it asks for one.
func resources(d *DesiredInstance) container.Resources {
	var r container.Resources
	if cpu := d.Resources[resource.CPU]; cpu > 0 {
		r.CPUShares = max(cpu*1024/1000, 2)
	}
	if d.CPULimit > 0 {
		r.CPUPeriod = 100000
		r.CPUQuota = max(d.CPULimit*100, 1000)
	}
	r.CpusetCpus = d.CPUSet
	if mem := d.Resources[resource.Memory]; mem > 0 {
		r.MemoryReservation = mem
		r.Memory = max(mem, int64(d.MemoryLimit))
	} else if d.MemoryLimit > 0 {
		r.Memory = int64(d.MemoryLimit)
	}
	if r.Memory > 0 {
		r.MemorySwap = r.Memory
	}
	return r
}
