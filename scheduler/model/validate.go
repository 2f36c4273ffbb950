package model

import (
	"errors"
	"fmt"
	"math"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/gaia-registry/gaia/scheduler/resource"
)

// FieldError is a validation error naming the field by its JSON path
// ("resources.memory", "ports[1].containerPort").
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + ": " + e.Message
}

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// AsFieldError turns an error from decoding a spec (resource.DimError) or
// from Validate into a *FieldError; prefix is the path of the field the
// decoded value sits at (e.g. "resources"). Other errors come back with
// Field "".
func AsFieldError(err error, prefix string) *FieldError {
	if err == nil {
		return nil
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return fe
	}
	var de *resource.DimError
	if errors.As(err, &de) {
		f := de.Dim
		if prefix != "" {
			f = prefix + "." + f
		}
		return &FieldError{Field: f, Message: de.Err.Error()}
	}
	return &FieldError{Message: err.Error()}
}

var (
	dnsLabel    = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	poolSegment = regexp.MustCompile(`^[A-Za-z0-9_-]{1,63}$`)
	envKey      = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// ValidPoolName reports whether name is "root" or "root.a.b" with segments
// of letters, digits, '_' and '-'.
func ValidPoolName(name string) error {
	if name == "" {
		return errors.New("required")
	}
	segs := strings.Split(name, ".")
	if segs[0] != RootPool {
		return fmt.Errorf("%q: pool names start with %q (e.g. root.ads.search)", name, RootPool)
	}
	for _, s := range segs[1:] {
		if !poolSegment.MatchString(s) {
			return fmt.Errorf("%q: each dotted part is 1-63 letters, digits, '_' or '-'", name)
		}
	}
	return nil
}

// ValidAppName reports whether name is a DNS label.
func ValidAppName(name string) error {
	if name == "" {
		return errors.New("required")
	}
	if !dnsLabel.MatchString(name) {
		return fmt.Errorf("%q: must be a DNS label: 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// Validate checks a pool on its own (not against its parent or siblings).
// A non-nil error is a *FieldError.
func (p *Pool) Validate() error {
	if err := ValidPoolName(p.Name); err != nil {
		return fieldErr("name", "%v", err)
	}
	if p.Weight < 0 || math.IsNaN(p.Weight) || math.IsInf(p.Weight, 0) {
		return fieldErr("weight", "must be a positive number (default 1)")
	}
	if err := nonNegative("min", p.Min); err != nil {
		return err
	}
	if err := nonNegative("max", p.Max); err != nil {
		return err
	}
	for _, d := range resource.Dims {
		if p.Max[d] > 0 && p.Min[d] > p.Max[d] {
			return fieldErr("min."+d.String(), "%s is above max %s", resource.Format(d, p.Min[d]), resource.Format(d, p.Max[d]))
		}
	}
	if p.MaxInstances < 0 {
		return fieldErr("maxInstances", "must be 0 (unlimited) or more")
	}
	switch p.Policy {
	case "", PolicyDRF, PolicyFair, PolicyFIFO:
	default:
		return fieldErr("policy", "%q: want drf, fair or fifo", p.Policy)
	}
	if p.MinSharePreemptionTimeout < 0 {
		return fieldErr("minSharePreemptionTimeout", "must not be negative")
	}
	if p.FairSharePreemptionTimeout < 0 {
		return fieldErr("fairSharePreemptionTimeout", "must not be negative")
	}
	if p.FairSharePreemptionThreshold < 0 || p.FairSharePreemptionThreshold > 1 || math.IsNaN(p.FairSharePreemptionThreshold) {
		return fieldErr("fairSharePreemptionThreshold", "must be between 0 and 1 (default 0.5)")
	}
	for i, s := range p.Submitters {
		if strings.TrimSpace(s) == "" {
			return fieldErr(fmt.Sprintf("submitters[%d]", i), "empty token name")
		}
	}
	return nil
}

func nonNegative(field string, v resource.Vector) error {
	for _, d := range resource.Dims {
		if v[d] < 0 {
			return fieldErr(field+"."+d.String(), "must not be negative")
		}
	}
	return nil
}

// Validate checks a spec on its own (not whether its pool or image
// exists). A non-nil error is a *FieldError.
func (s *AppSpec) Validate() error {
	if err := ValidAppName(s.Name); err != nil {
		return fieldErr("name", "%v", err)
	}
	if err := ValidPoolName(s.Pool); err != nil {
		return fieldErr("pool", "%v", err)
	}
	if strings.TrimSpace(s.Image) == "" {
		return fieldErr("image", "required")
	}
	for k := range s.Env {
		if !envKey.MatchString(k) {
			return fieldErr("env."+k, "not a valid environment variable name")
		}
	}
	if s.Instances < 0 {
		return fieldErr("instances", "must be 0 or more")
	}
	if err := nonNegative("resources", s.Resources); err != nil {
		return err
	}
	if s.Resources[resource.CPU] <= 0 {
		return fieldErr("resources.cpu", "required: every instance asks for some cpu (e.g. 500m)")
	}
	if s.Resources[resource.Memory] <= 0 {
		return fieldErr("resources.memory", "required: every instance asks for some memory (e.g. 512Mi)")
	}
	if s.CPULimit < 0 || s.CPULimit != 0 && int64(s.CPULimit) < s.Resources[resource.CPU] {
		return fieldErr("cpuLimit", "%s is below resources.cpu %s", resource.Format(resource.CPU, int64(s.CPULimit)), resource.Format(resource.CPU, s.Resources[resource.CPU]))
	}
	if s.DiskIOPS < 0 {
		return fieldErr("diskIOPS", "must not be negative")
	}
	if s.CPUSet != "" && !validCPUSet(s.CPUSet) {
		return fieldErr("cpuSet", "%q is not a CPU list (e.g. 0-3,6)", s.CPUSet)
	}
	if p := s.VolumePath; p != "" {
		if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
			return fieldErr("volumePath", "%q is not an absolute, clean path below / (e.g. /data)", p)
		}
		for _, r := range []string{"/proc", "/sys", "/dev", "/.gaia-gate", "/.gaia-gate.d"} {
			if p == r || strings.HasPrefix(p, r+"/") {
				return fieldErr("volumePath", "%q is under %s, which the container runtime or the node agent owns", p, r)
			}
		}
		if s.Resources[resource.Disk] <= 0 {
			return fieldErr("volumePath", "set, but resources.disk is 0: there is no volume to mount")
		}
	}
	if s.MemoryLimit != 0 && int64(s.MemoryLimit) < s.Resources[resource.Memory] {
		return fieldErr("memoryLimit", "%s is below resources.memory %s", resource.Format(resource.Memory, int64(s.MemoryLimit)), resource.Format(resource.Memory, s.Resources[resource.Memory]))
	}
	names := map[string]bool{}
	hostPorts := map[string]int{}
	for i, p := range s.Ports {
		f := fmt.Sprintf("ports[%d]", i)
		if err := ValidAppName(p.Name); err != nil {
			return fieldErr(f+".name", "%v", err)
		}
		if names[p.Name] {
			return fieldErr(f+".name", "%q is used twice", p.Name)
		}
		names[p.Name] = true
		if p.ContainerPort < 1 || p.ContainerPort > 65535 {
			return fieldErr(f+".containerPort", "must be 1-65535")
		}
		switch p.Protocol {
		case "", TCP, UDP:
		default:
			return fieldErr(f+".protocol", "%q: want tcp or udp", p.Protocol)
		}
		if p.HostPort < 0 || p.HostPort > 65535 {
			return fieldErr(f+".hostPort", "must be 0 (any) or 1-65535")
		}
		if p.HostPort != 0 {
			key := fmt.Sprintf("%d", p.HostPort)
			if j, dup := hostPorts[key]; dup {
				return fieldErr(f+".hostPort", "%d is already ports[%d]'s", p.HostPort, j)
			}
			hostPorts[key] = i
		}
	}
	if h := s.Health; h != nil {
		switch h.Type {
		case HealthTCP, HealthHTTP:
			if h.Port == "" {
				return fieldErr("health.port", "required for a %s check: the name of one of ports", h.Type)
			}
			if !names[h.Port] {
				return fieldErr("health.port", "%q is not one of ports' names", h.Port)
			}
			if h.Type == HealthHTTP && !strings.HasPrefix(h.Path, "/") {
				return fieldErr("health.path", "an http check needs a path starting with /")
			}
		case HealthExec:
			if len(h.Command) == 0 {
				return fieldErr("health.command", "required for an exec check")
			}
		default:
			return fieldErr("health.type", "%q: want tcp, http or exec", h.Type)
		}
		if h.Interval < 0 {
			return fieldErr("health.interval", "must not be negative")
		}
		if h.Timeout < 0 {
			return fieldErr("health.timeout", "must not be negative")
		}
		if h.Grace < 0 {
			return fieldErr("health.grace", "must not be negative")
		}
	}
	if s.Restart.Attempts < 0 {
		return fieldErr("restart.attempts", "must be 0 or more")
	}
	if s.Restart.Interval < 0 {
		return fieldErr("restart.interval", "must not be negative")
	}
	if s.Restart.Delay < 0 {
		return fieldErr("restart.delay", "must not be negative")
	}
	if s.Restart.Backoff < 0 || math.IsNaN(s.Restart.Backoff) || (s.Restart.Backoff > 0 && s.Restart.Backoff < 1) {
		return fieldErr("restart.backoff", "must be 1 or more (the factor the delay grows by; 0 means 1)")
	}
	for k := range s.Constraints.Labels {
		if k == "" {
			return fieldErr("constraints.labels", "empty label name")
		}
	}
	if s.Spread < 0 {
		return fieldErr("spread", "must be 0 (no limit) or more")
	}
	u := s.Update
	if u.MaxParallel < 0 {
		return fieldErr("update.maxParallel", "must be 0 (default 1) or more")
	}
	if u.Canary < 0 {
		return fieldErr("update.canary", "must be 0 or more")
	}
	if u.MinHealthyTime < 0 {
		return fieldErr("update.minHealthyTime", "must not be negative")
	}
	if u.HealthyDeadline < 0 {
		return fieldErr("update.healthyDeadline", "must not be negative")
	}
	return nil
}

// Validate checks a node as registered. A non-nil error is a *FieldError.
func (n *Node) Validate() error {
	if strings.TrimSpace(n.Name) == "" {
		return fieldErr("name", "required")
	}
	if err := nonNegative("capacity", n.Capacity); err != nil {
		return err
	}
	if err := nonNegative("reserved", n.Reserved); err != nil {
		return err
	}
	switch n.State {
	case "", NodeReady, NodeDraining, NodeDown:
	default:
		return fieldErr("state", "%q: want ready, draining or down", n.State)
	}
	return nil
}

// validCPUSet: a cpuset.cpus list, "N" or "N-M" (N ≤ M) items separated
// by commas.
func validCPUSet(s string) bool {
	for _, item := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(item, "-")
		a, err := strconv.ParseUint(lo, 10, 16)
		if err != nil {
			return false
		}
		if isRange {
			b, err := strconv.ParseUint(hi, 10, 16)
			if err != nil || b < a {
				return false
			}
		}
	}
	return true
}
