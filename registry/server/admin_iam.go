package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gaia-registry/gaia/registry/audit"
	"github.com/gaia-registry/gaia/registry/iam"
	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/tokenauth"
)

// adminCaller is who calls the admin API: the admin token or a system
// admin (system), or a user who may manage only the namespaces they are
// an admin of.
type adminCaller struct {
	name   string // "" for the admin token
	system bool
}

// mayManage reports whether the caller may manage namespace ns's members
// and robots.
func (s *Server) mayManage(r *http.Request, c adminCaller, ns string) (bool, error) {
	if c.system {
		return true, nil
	}
	role, err := s.iam.NamespaceRole(r.Context(), c.name, ns)
	return role == iam.RoleAdmin, err
}

// decodeAdmin reads a JSON body, refusing unknown fields.
func decodeAdmin(w http.ResponseWriter, r *http.Request, what string, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		adminFail(w, http.StatusBadRequest, "", what+": "+err.Error())
		return false
	}
	return true
}

// notAllowed answers 405 for a resource that exists but not for this
// method, naming those it allows.
func notAllowed(w http.ResponseWriter, allow ...string) {
	w.Header().Set("Allow", strings.Join(allow, ", "))
	adminFail(w, http.StatusMethodNotAllowed, "", "allowed: "+strings.Join(allow, ", "))
}

// noSuchResource answers 404 for a path the admin API does not serve.
func noSuchResource(w http.ResponseWriter, r *http.Request) {
	adminFail(w, http.StatusNotFound, "", "no such admin resource: "+r.Method+" "+r.URL.Path)
}

// quotaArg checks a namespace's quota_bytes: N ≥ 0, or -1 (none) where
// removing is allowed.
func quotaArg(w http.ResponseWriter, q *int64, mayRemove bool) bool {
	if q == nil || *q >= 0 || (mayRemove && *q == -1) {
		return true
	}
	msg := "a quota in bytes, ≥ 0"
	if mayRemove {
		msg += ", or -1 to remove it"
	}
	adminFail(w, http.StatusBadRequest, "quota_bytes", msg)
	return false
}

// pageArgs reads ?n= and ?last= of a paged list.
func pageArgs(w http.ResponseWriter, r *http.Request) (last string, n int, ok bool) {
	q := r.URL.Query()
	if v := q.Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > iam.MaxPage {
			adminFail(w, http.StatusBadRequest, "n", fmt.Sprintf("a page size from 1 to %d", iam.MaxPage))
			return "", 0, false
		}
	}
	return q.Get("last"), n, true
}

// adminPage answers a page of a list under key, with the next page's
// cursor in the body and in a Link header (as the registry's own lists).
func adminPage(w http.ResponseWriter, r *http.Request, key string, items any, next string) {
	body := map[string]any{key: items}
	if next != "" {
		body["next"] = next
		q := r.URL.Query()
		q.Set("last", next)
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, q.Encode()))
	}
	adminJSON(w, body)
}

// iamFail answers an iam error with the status it means.
func (s *Server) iamFail(w http.ResponseWriter, r *http.Request, err error) {
	var fe *iam.FieldError
	switch {
	case errors.As(err, &fe):
		status := http.StatusBadRequest
		if fe.Conflict {
			status = http.StatusConflict
		}
		adminFail(w, status, fe.Field, fe.Reason)
	case errors.Is(err, iam.ErrNotFound):
		adminFail(w, http.StatusNotFound, "", "not found: "+r.URL.Path)
	default:
		s.log.Error("admin API", "path", r.URL.Path, "err", err)
		adminFail(w, http.StatusInternalServerError, "", err.Error())
	}
}

// adminIAM serves users, namespaces, members and robots; false: parts is
// not one of its routes.
func (s *Server) adminIAM(w http.ResponseWriter, r *http.Request, parts []string, c adminCaller) bool {
	if len(parts) == 0 || (parts[0] != "users" && parts[0] != "namespaces" && parts[0] != "robots") {
		return false
	}
	if s.iam == nil {
		adminFail(w, http.StatusNotFound, "", "users, namespaces and robots need auth.builtin")
		return true
	}
	for i, p := range parts {
		if u, err := url.PathUnescape(p); err == nil {
			parts[i] = u
		}
	}
	ctx := r.Context()
	denied := func() { adminFail(w, http.StatusForbidden, "", c.name+" may not "+r.Method+" "+r.URL.Path) }
	switch {
	case parts[0] == "users":
		if !c.system {
			denied()
			return true
		}
		s.adminUsers(w, r, parts, c)
	case parts[0] == "robots":
		// System-wide robots: /robots, /robots/{name}, /robots/{name}/rotate
		// (also for a namespace's robots, by their full name).
		ns := ""
		if len(parts) >= 2 {
			rb, err := s.iam.GetRobot(ctx, parts[1])
			switch {
			case err == nil:
				ns = rb.Namespace
			case errors.Is(err, iam.ErrNotFound) && !c.system:
				// Only to whom may manage where it would be: no one
				// learns which robots other namespaces have.
				ns = robotNamespace(parts[1])
			default:
				s.iamFail(w, r, err)
				return true
			}
		}
		if ok, err := s.mayManage(r, c, ns); err != nil || !ok || (ns == "" && !c.system) {
			if err != nil {
				s.iamFail(w, r, err)
			} else {
				denied()
			}
			return true
		}
		s.adminRobots(w, r, ns, parts[1:], c, false)
	case len(parts) == 1:
		if r.Method != http.MethodGet && r.Method != http.MethodPost {
			notAllowed(w, "GET", "POST")
			return true
		}
		if !c.system {
			// Not even the list: private namespaces' names are theirs.
			denied()
			return true
		}
		switch r.Method {
		case http.MethodGet:
			last, n, ok := pageArgs(w, r)
			if !ok {
				return true
			}
			nss, next, err := s.iam.ListNamespaces(ctx, last, n)
			if err != nil {
				s.iamFail(w, r, err)
				return true
			}
			adminPage(w, r, "namespaces", nss, next)
		case http.MethodPost:
			var body struct {
				Name        string `json:"name"`
				Public      bool   `json:"public"`
				Description string `json:"description"`
				Owner       string `json:"owner"`
				QuotaBytes  *int64 `json:"quota_bytes"`
			}
			if !decodeAdmin(w, r, "namespace", &body) || !quotaArg(w, body.QuotaBytes, false) {
				return true
			}
			ns, err := s.iam.CreateNamespace(ctx, body.Name, body.Public, body.Description, body.Owner)
			if err == nil && body.QuotaBytes != nil {
				err = metadata.SetQuota(ctx, s.pool, body.Name, *body.QuotaBytes)
			}
			if err != nil {
				s.iamFail(w, r, err)
				return true
			}
			s.recordAdmin(r, c, "namespace_create", ns.Name, map[string]any{"public": ns.Public, "owner": body.Owner})
			w.WriteHeader(http.StatusCreated)
			adminJSON(w, ns)
		}
	default:
		ns := parts[1]
		ok, err := s.mayManage(r, c, ns)
		if err != nil {
			s.iamFail(w, r, err)
			return true
		}
		if !ok {
			denied()
			return true
		}
		switch {
		case len(parts) == 2:
			s.adminNamespace(w, r, ns, c)
		case parts[2] == "members":
			s.adminMembers(w, r, ns, parts[3:], c)
		case parts[2] == "robots":
			s.adminRobots(w, r, ns, parts[3:], c, true)
		default:
			noSuchResource(w, r)
		}
	}
	return true
}

func (s *Server) adminUsers(w http.ResponseWriter, r *http.Request, parts []string, c adminCaller) {
	ctx := r.Context()
	switch {
	case len(parts) == 1 && r.Method == http.MethodGet:
		last, n, ok := pageArgs(w, r)
		if !ok {
			return
		}
		users, next, err := s.iam.ListUsers(ctx, last, n)
		if err != nil {
			s.iamFail(w, r, err)
			return
		}
		adminPage(w, r, "users", users, next)
	case len(parts) == 1 && r.Method == http.MethodPost:
		var body struct {
			Name     string `json:"name"`
			Password string `json:"password"`
			Admin    bool   `json:"admin"`
		}
		if !decodeAdmin(w, r, "user", &body) {
			return
		}
		u, err := s.iam.CreateUser(ctx, body.Name, body.Password, body.Admin)
		if err != nil {
			s.iamFail(w, r, err)
			return
		}
		s.recordAdmin(r, c, "user_create", "", map[string]any{"user": u.Name, "admin": u.Admin})
		w.WriteHeader(http.StatusCreated)
		adminJSON(w, u)
	case len(parts) == 2 && r.Method == http.MethodGet:
		u, err := s.iam.GetUser(ctx, parts[1])
		if err != nil {
			s.iamFail(w, r, err)
			return
		}
		adminJSON(w, u)
	case len(parts) == 2 && r.Method == http.MethodPatch:
		var body struct {
			Password string `json:"password"`
			Admin    *bool  `json:"admin"`
		}
		if !decodeAdmin(w, r, "user", &body) {
			return
		}
		u, err := s.iam.UpdateUser(ctx, parts[1], body.Password, body.Admin)
		if err != nil {
			s.iamFail(w, r, err)
			return
		}
		s.recordAdmin(r, c, "user_update", "", map[string]any{"user": u.Name, "admin": u.Admin, "password_changed": body.Password != ""})
		adminJSON(w, u)
	case len(parts) == 2 && r.Method == http.MethodDelete:
		if err := s.iam.DeleteUser(ctx, parts[1]); err != nil {
			s.iamFail(w, r, err)
			return
		}
		s.recordAdmin(r, c, "user_delete", "", map[string]any{"user": parts[1]})
		w.WriteHeader(http.StatusNoContent)
	case len(parts) == 1:
		notAllowed(w, "GET", "POST")
	case len(parts) == 2:
		notAllowed(w, "GET", "PATCH", "DELETE")
	default:
		noSuchResource(w, r)
	}
}

func (s *Server) adminNamespace(w http.ResponseWriter, r *http.Request, name string, c adminCaller) {
	ctx := r.Context()
	switch r.Method {
	case http.MethodGet:
		ns, err := s.iam.GetNamespace(ctx, name)
		if err != nil {
			s.iamFail(w, r, err)
			return
		}
		adminJSON(w, ns)
	case http.MethodPatch:
		var body struct {
			Public      *bool   `json:"public"`
			Description *string `json:"description"`
			QuotaBytes  *int64  `json:"quota_bytes"` // -1 removes the quota
		}
		if !decodeAdmin(w, r, "namespace", &body) || !quotaArg(w, body.QuotaBytes, true) {
			return
		}
		if (body.Public != nil || body.QuotaBytes != nil) && !c.system {
			adminFail(w, http.StatusForbidden, "", "only a system admin changes a namespace's visibility or quota")
			return
		}
		ns, err := s.iam.UpdateNamespace(ctx, name, body.Public, body.Description)
		if err == nil && body.QuotaBytes != nil {
			err = metadata.SetQuota(ctx, s.pool, name, *body.QuotaBytes)
		}
		if err != nil {
			s.iamFail(w, r, err)
			return
		}
		s.recordAdmin(r, c, "namespace_update", name, map[string]any{"public": ns.Public, "quota_bytes": body.QuotaBytes})
		adminJSON(w, ns)
	case http.MethodDelete:
		if !c.system {
			adminFail(w, http.StatusForbidden, "", "only a system admin deletes a namespace")
			return
		}
		if err := s.iam.DeleteNamespace(ctx, name); err != nil {
			s.iamFail(w, r, err)
			return
		}
		s.recordAdmin(r, c, "namespace_delete", name, nil)
		w.WriteHeader(http.StatusNoContent)
	default:
		notAllowed(w, "GET", "PATCH", "DELETE")
	}
}

// adminMembers: GET .../members, PUT|DELETE .../members/{user|group}/{name}.
func (s *Server) adminMembers(w http.ResponseWriter, r *http.Request, ns string, rest []string, c adminCaller) {
	ctx := r.Context()
	switch {
	case len(rest) == 0 && r.Method == http.MethodGet:
		last, n, ok := pageArgs(w, r)
		if !ok {
			return
		}
		ms, next, err := s.iam.ListMembers(ctx, ns, last, n)
		if err != nil {
			s.iamFail(w, r, err)
			return
		}
		adminPage(w, r, "members", ms, next)
	case len(rest) == 2 && r.Method == http.MethodPut:
		var body struct {
			Role string `json:"role"`
		}
		if !decodeAdmin(w, r, "member", &body) {
			return
		}
		m := iam.Member{Kind: rest[0], Name: rest[1], Role: body.Role}
		existed, err := s.iam.SetMember(ctx, ns, m)
		if err != nil {
			s.iamFail(w, r, err)
			return
		}
		action := "member_add"
		if existed {
			action = "member_update"
		}
		s.recordAdmin(r, c, action, ns, map[string]any{"kind": m.Kind, "member": m.Name, "role": m.Role})
		adminJSON(w, m)
	case len(rest) == 2 && r.Method == http.MethodDelete:
		if err := s.iam.RemoveMember(ctx, ns, rest[0], rest[1]); err != nil {
			s.iamFail(w, r, err)
			return
		}
		s.recordAdmin(r, c, "member_remove", ns, map[string]any{"kind": rest[0], "member": rest[1]})
		w.WriteHeader(http.StatusNoContent)
	case len(rest) == 0:
		notAllowed(w, "GET")
	case len(rest) == 2:
		notAllowed(w, "PUT", "DELETE")
	default:
		noSuchResource(w, r)
	}
}

// robotNamespace is the namespace a robot's full name puts it in ("" for
// a system-wide one).
func robotNamespace(name string) string {
	ns, _, found := strings.Cut(strings.TrimPrefix(name, iam.RobotPrefix), "+")
	if !found {
		return ""
	}
	return ns
}

// adminRobots serves the robots of namespace ns ("": system-wide ones):
// GET and POST on the list; GET, DELETE and POST .../rotate on one, by
// full name (by full or short name under /namespaces/{ns}/robots, which
// reaches that namespace's robots only: underNS).
func (s *Server) adminRobots(w http.ResponseWriter, r *http.Request, ns string, rest []string, c adminCaller, underNS bool) {
	ctx := r.Context()
	if underNS && len(rest) > 0 {
		if !iam.IsRobot(rest[0]) {
			rest[0] = iam.RobotName(ns, rest[0])
		}
		if robotNamespace(rest[0]) != ns {
			adminFail(w, http.StatusNotFound, "", rest[0]+" is not a robot of namespace "+ns)
			return
		}
	}
	switch {
	case len(rest) == 0 && r.Method == http.MethodGet:
		last, n, ok := pageArgs(w, r)
		if !ok {
			return
		}
		robots, next, err := s.iam.ListRobots(ctx, ns, last, n)
		if err != nil {
			s.iamFail(w, r, err)
			return
		}
		adminPage(w, r, "robots", robots, next)
	case len(rest) == 0 && r.Method == http.MethodPost:
		var spec iam.RobotSpec
		if !decodeAdmin(w, r, "robot", &spec) {
			return
		}
		rb, secret, err := s.iam.CreateRobot(ctx, ns, spec)
		if err != nil {
			s.iamFail(w, r, err)
			return
		}
		s.recordAdmin(r, c, "robot_create", ns, map[string]any{"robot": rb.Name, "permissions": rb.Permissions})
		w.WriteHeader(http.StatusCreated)
		adminJSON(w, map[string]any{"robot": rb, "secret": secret})
	case len(rest) == 1 && r.Method == http.MethodGet:
		rb, err := s.iam.GetRobot(ctx, rest[0])
		if err != nil {
			s.iamFail(w, r, err)
			return
		}
		adminJSON(w, rb)
	case len(rest) == 1 && r.Method == http.MethodDelete:
		if err := s.iam.DeleteRobot(ctx, rest[0]); err != nil {
			s.iamFail(w, r, err)
			return
		}
		s.recordAdmin(r, c, "robot_delete", ns, map[string]any{"robot": rest[0]})
		w.WriteHeader(http.StatusNoContent)
	case len(rest) == 2 && rest[1] == "rotate" && r.Method == http.MethodPost:
		secret, err := s.iam.RotateRobot(ctx, rest[0])
		if err != nil {
			s.iamFail(w, r, err)
			return
		}
		s.recordAdmin(r, c, "robot_rotate", ns, map[string]any{"robot": rest[0]})
		adminJSON(w, map[string]any{"name": rest[0], "secret": secret, "rotated_at": time.Now().UTC()})
	case len(rest) == 0:
		notAllowed(w, "GET", "POST")
	case len(rest) == 1:
		notAllowed(w, "GET", "DELETE")
	case len(rest) == 2 && rest[1] == "rotate":
		notAllowed(w, "POST")
	default:
		noSuchResource(w, r)
	}
}

// recordAdmin puts a change to users, namespaces, members or robots in
// the audit log.
func (s *Server) recordAdmin(r *http.Request, c adminCaller, action, ns string, detail map[string]any) {
	remote, _ := s.trusted.Client(r)
	ev := audit.Event{Actor: c.name, Action: action, Namespace: ns, Remote: remote, Detail: detail}
	if c.name == "" {
		ev.Actor, ev.ActorKind = "(admin token)", audit.KindAdmin
	}
	s.audit.Record(ev)
}

// recordLogin puts a login or failed login at the token service in the
// audit log.
func (s *Server) recordLogin(ev tokenauth.LoginEvent) {
	var detail map[string]any
	if ev.Reason != "" {
		detail = map[string]any{"reason": ev.Reason}
	}
	s.audit.Record(audit.Event{At: ev.Time, Actor: ev.User, Action: ev.Action, Remote: ev.RemoteAddr, Detail: detail})
}
