package server

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/gaia-registry/gaia/registry/api"
	"github.com/gaia-registry/gaia/registry/audit"
	"github.com/gaia-registry/gaia/registry/auth"
	"github.com/gaia-registry/gaia/registry/forwarded"
)

// AuditConfig is the audit section: the audit log (registry/audit).
type AuditConfig struct {
	Retention time.Duration `yaml:"retention"` // events are kept this long (default 720h)
	Buffer    int           `yaml:"buffer"`    // events queued for writing at most (default 10000); more are dropped
}

func (a AuditConfig) validate() error {
	if a.Retention < 0 {
		return errors.New("audit.retention: must be positive (default 720h)")
	}
	if a.Retention > 0 && a.Retention < time.Hour {
		return fmt.Errorf("audit.retention: %s is under an hour; events are kept in daily partitions", a.Retention)
	}
	if a.Buffer < 0 {
		return errors.New("audit.buffer: must be positive (default 10000)")
	}
	return nil
}

// auditRequests records the API's audited actions once they succeed
// (2xx): a manifest GET is a pull (a HEAD is not), a manifest PUT a push,
// a DELETE of a manifest, tag or blob a delete. It sits behind auth (the
// user is known) and before the handlers, so no handler records anything
// itself; Record only queues, so the request never waits on the log.
func auditRequests(next http.Handler, rec audit.Recorder, trusted forwarded.Trusted) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rt := api.RouteOf(r)
		var action string
		switch {
		case rt.Kind == "manifest" && r.Method == http.MethodGet:
			action = audit.ActionPull
		case rt.Kind == "manifest" && r.Method == http.MethodPut:
			action = audit.ActionPush
		case (rt.Kind == "manifest" || rt.Kind == "blob") && r.Method == http.MethodDelete:
			action = audit.ActionDelete
		default:
			next.ServeHTTP(w, r)
			return
		}
		sw := &recorder{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		if sw.status < 200 || sw.status > 299 {
			return
		}
		user := auth.UserFromContext(r.Context())
		remote, _ := trusted.Client(r)
		ev := audit.Event{
			Actor: user, ActorKind: audit.ActorKind(user), Action: action,
			Namespace: audit.NamespaceOf(rt.Name), Repository: rt.Name, Reference: rt.Ref, Remote: remote,
		}
		detail := map[string]any{}
		if d := w.Header().Get("Docker-Content-Digest"); d != "" && d != rt.Ref {
			detail["digest"] = d // what a tag named
		}
		if action == audit.ActionDelete {
			switch {
			case rt.Kind == "blob":
				detail["object"] = "blob"
			case strings.Contains(rt.Ref, ":"):
				detail["object"] = "manifest"
			default:
				detail["object"] = "tag"
			}
		}
		if len(detail) > 0 {
			ev.Detail = detail
		}
		rec.Record(ev)
	})
}
