// Package audit is the registry's audit log: who did what (push, pull,
// delete, logins, membership and robot changes), when and from where,
// kept in PostgreSQL (table audit_events, migration 0011_audit) in daily
// partitions that retention drops whole.
//
// Events are written off the request path: Record only queues (and drops,
// counting, when the queue is full), and a Writer's Run copies batches
// into the database. Query reads them back newest first, keyset-paged.
package audit

import (
	"strings"
	"time"
)

// Actions.
const (
	ActionPush            = "push"
	ActionPull            = "pull"
	ActionDelete          = "delete"
	ActionLogin           = "login"
	ActionLoginFailed     = "login_failed"
	ActionMemberAdd       = "member_add"
	ActionMemberRemove    = "member_remove"
	ActionMemberUpdate    = "member_update"
	ActionRobotCreate     = "robot_create"
	ActionRobotDelete     = "robot_delete"
	ActionRobotRotate     = "robot_rotate"
	ActionUserCreate      = "user_create"
	ActionUserDelete      = "user_delete"
	ActionNamespaceCreate = "namespace_create"
	ActionNamespaceDelete = "namespace_delete"
	ActionNamespaceUpdate = "namespace_update"
)

// Actor kinds.
const (
	KindUser      = "user"
	KindRobot     = "robot"
	KindAnonymous = "anonymous"
	KindAdmin     = "admin"
)

// Event is one audit record.
type Event struct {
	ID         int64          `json:"id,omitempty"` // assigned when stored
	At         time.Time      `json:"at"`           // zero: when Record was called
	Actor      string         `json:"actor"`        // user or robot name; "" anonymous
	ActorKind  string         `json:"actor_kind"`   // Kind*; "": ActorKind(Actor)
	Action     string         `json:"action"`       // Action*
	Namespace  string         `json:"namespace,omitempty"`
	Repository string         `json:"repository,omitempty"`
	Reference  string         `json:"reference,omitempty"` // tag or digest
	Remote     string         `json:"remote,omitempty"`    // the client's address
	Detail     map[string]any `json:"detail,omitempty"`
}

// Recorder takes events. Record never blocks the caller.
type Recorder interface {
	Record(Event)
}

// Nop records nothing.
type Nop struct{}

// Record drops ev.
func (Nop) Record(Event) {}

// ActorKind guesses the kind of an actor from its name alone: "" is
// anonymous, robot$... a robot, anyone else a user.
func ActorKind(actor string) string {
	switch {
	case actor == "":
		return KindAnonymous
	case strings.HasPrefix(actor, "robot$"):
		return KindRobot
	default:
		return KindUser
	}
}

// NamespaceOf is a repository's namespace: its first path component.
func NamespaceOf(repository string) string {
	ns, _, _ := strings.Cut(repository, "/")
	return ns
}

// FieldError names the query field at fault.
type FieldError struct{ Field, Reason string }

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }
