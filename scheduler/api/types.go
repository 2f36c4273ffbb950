// Package api is gaia-scheduler's HTTP API: the user API under /v1/ (pools,
// apps, instances, nodes; JSON, bearer tokens, paged lists, errors naming
// the field) and the node protocol under /v1/node/ (register, long-poll of
// the desired set, batched reports). Reads are served from PostgreSQL by
// any scheduler; writes are the leader's (a Backend): a follower forwards
// user writes to the leader and points nodes to it.
package api

import (
	"fmt"
	"net/http"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// Error is an API error: {"error": {"code", "field", "message"}}.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s: %s: %s", e.Code, e.Field, e.Message)
	}
	return e.Code + ": " + e.Message
}

// Error codes.
const (
	CodeInvalid      = "invalid"
	CodeNotFound     = "not_found"
	CodeConflict     = "conflict"
	CodeUnauthorized = "unauthorized"
	CodeForbidden    = "forbidden"
	CodeNotLeader    = "not_leader"
	CodeUnavailable  = "unavailable"
)

// Invalid is a 400 naming field.
func Invalid(field, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Field: field, Message: fmt.Sprintf(format, args...)}
}

// NotFound is a 404.
func NotFound(format string, args ...any) *Error {
	return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: fmt.Sprintf(format, args...)}
}

// Conflict is a 409 naming field.
func Conflict(field, format string, args ...any) *Error {
	return &Error{Status: http.StatusConflict, Code: CodeConflict, Field: field, Message: fmt.Sprintf(format, args...)}
}

// Unavailable is a 503.
func Unavailable(format string, args ...any) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: fmt.Sprintf(format, args...)}
}

// NotLeader is a 503 from a scheduler that is not (or no longer) the leader.
func NotLeader(format string, args ...any) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: CodeNotLeader, Message: fmt.Sprintf(format, args...)}
}

// LeaderHeader names the leader's base URL in answers of a follower to
// node requests (and in not_leader errors when it is known).
const LeaderHeader = "Gaia-Leader"

// ForwardedHeader marks a write a follower forwarded to the leader: one
// that reaches a follower again is answered not_leader, not forwarded on.
const ForwardedHeader = "Gaia-Forwarded-By"

// ScaleRequest is the body of POST /v1/apps/{name}/scale.
type ScaleRequest struct {
	Instances *int `json:"instances"`
}

// RollbackRequest is the body of POST /v1/apps/{name}/rollback; version 0
// (or no body) is the version before the current one.
type RollbackRequest struct {
	Version int64 `json:"version"`
}

// RegisterRequest is a node's registration.
type RegisterRequest struct {
	Name     string            `json:"name"`
	IDC      string            `json:"idc,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Address  string            `json:"address,omitempty"`
	Capacity resource.Vector   `json:"capacity"`
	Reserved resource.Vector   `json:"reserved"`
}

// RegisterResponse answers a registration.
type RegisterResponse struct {
	NodeID string `json:"nodeID"`
	// PollInterval is the wait to ask for in desired-set polls.
	PollInterval model.Duration `json:"pollInterval"`
}

// DesiredSet is what a node should run: every instance assigned to it,
// each with desired run or stop. Anything the node runs that is not in
// the set is to be stopped too. Version is opaque: send it back in the
// next poll.
type DesiredSet struct {
	Version   string            `json:"version"`
	Instances []DesiredInstance `json:"instances"`
}

// DesiredInstance is one instance as a node runs it.
type DesiredInstance struct {
	ID          string            `json:"id"`
	App         string            `json:"app"`
	Version     int64             `json:"version"`
	Image       string            `json:"image"` // by digest: host/repo@sha256:...
	Command     []string          `json:"command,omitempty"`
	Args        []string          `json:"args,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Resources   resource.Vector   `json:"resources"`
	MemoryLimit resource.Bytes    `json:"memoryLimit,omitempty"`
	CPULimit    int64             `json:"cpuLimit,omitempty"` // millicores: a CFS quota; 0 none
	DiskIOPS    int64             `json:"diskIOPS,omitempty"`
	CPUSet      string            `json:"cpuSet,omitempty"`
	VolumePath  string            `json:"volumePath,omitempty"`
	Ports       []model.Port      `json:"ports,omitempty"` // hostPort filled in
	Health      *model.Health     `json:"health,omitempty"`
	Restart     model.Restart     `json:"restart,omitzero"`
	// Priority is the app's priority (its spec at this version; higher
	// is more important): the agent reclaims memory from, and gives the
	// lower network class to, lower priorities first.
	Priority int           `json:"priority"`
	Desired  model.Desired `json:"desired"`
	// Canary: the instance is one of a canary update's new instances, not
	// yet promoted (the agent tags it "canary" in Consul). A promote, a
	// new version or a rollback changes it on instances already placed:
	// their nodes' sets are published again.
	Canary bool `json:"canary,omitempty"`
}

// Report is a node's batched report: the state of every instance it has.
type Report struct {
	Instances []InstanceReport `json:"instances"`
	Usage     resource.Vector  `json:"usage"`
}

// InstanceReport is one instance's state on its node.
type InstanceReport struct {
	ID       string              `json:"id"`
	State    model.InstanceState `json:"state"`
	Reason   string              `json:"reason,omitempty"`
	ExitCode int                 `json:"exitCode,omitempty"`
	Restarts int                 `json:"restarts,omitempty"`
	Usage    resource.Vector     `json:"usage"`
	Net      model.NetCounters   `json:"net,omitzero"` // traffic classes' counters, where enforced
}
