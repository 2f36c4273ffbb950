package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
	"github.com/gaia-registry/gaia/scheduler/store"
)

// Backend makes the writes; the leader implements it. Its errors are
// *Error (or store.ErrDeposed, answered not_leader).
type Backend interface {
	PutPool(ctx context.Context, p model.Pool, create bool) (*model.Pool, error)
	DeletePool(ctx context.Context, name string) error
	SubmitApp(ctx context.Context, spec model.AppSpec) (*model.App, error)
	UpdateApp(ctx context.Context, name string, spec model.AppSpec) (*model.App, error)
	ScaleApp(ctx context.Context, name string, instances int) (*model.App, error)
	// AppAction is restart, promote, stop or start.
	AppAction(ctx context.Context, name, action string) (*model.App, error)
	RollbackApp(ctx context.Context, name string, version int64) (*model.App, error)
	DeleteApp(ctx context.Context, name string) error
	StopInstance(ctx context.Context, id string) error
	DrainNode(ctx context.Context, name string) (*model.Node, error)

	RegisterNode(ctx context.Context, n model.Node) (*RegisterResponse, error)
	// Desired answers at once when the node's set's version is not
	// version, else waits up to wait for a change (changed false: 304).
	Desired(ctx context.Context, node, version string, wait time.Duration) (body []byte, changed bool, err error)
	Report(ctx context.Context, node string, r *Report) error
}

// Leadership says who leads.
type Leadership interface {
	// Leading reports whether this process is the leader now.
	Leading() bool
	// LeaderURL is the leader's base URL ("" when none is known).
	LeaderURL(ctx context.Context) string
}

// Options configure New.
type Options struct {
	Store      *store.Store
	Backend    Backend
	Leadership Leadership
	// AdminToken may do everything; SubmitTokens (name → token) may read,
	// and submit and manage apps in the pools whose submitters (or whose
	// ancestors' submitters) list the name; NodeToken is the node
	// credential of the node protocol.
	AdminToken   string
	SubmitTokens map[string]string
	NodeToken    string
	// MaxWait bounds a desired-set poll's wait (default 60s).
	MaxWait time.Duration
	// Self names this process in forwarded requests.
	Self string
	Log  *slog.Logger
}

type handler struct {
	o   Options
	mux *http.ServeMux
}

// DefaultLimit and MaxLimit bound list pages.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// New returns the API's handler (paths /v1/...).
func New(o Options) http.Handler {
	if o.MaxWait == 0 {
		o.MaxWait = time.Minute
	}
	h := &handler{o: o, mux: http.NewServeMux()}
	m := h.mux
	// reads
	m.HandleFunc("GET /v1/pools", h.user(h.listPools))
	m.HandleFunc("GET /v1/pools/{name}", h.user(h.getPool))
	m.HandleFunc("GET /v1/apps", h.user(h.listApps))
	m.HandleFunc("GET /v1/apps/{name}", h.user(h.getApp))
	m.HandleFunc("GET /v1/apps/{name}/instances", h.user(h.listInstances))
	m.HandleFunc("GET /v1/apps/{name}/versions", h.user(h.listVersions))
	m.HandleFunc("GET /v1/instances/{id}", h.user(h.getInstance))
	m.HandleFunc("GET /v1/nodes", h.user(h.listNodes))
	m.HandleFunc("GET /v1/nodes/{name}", h.user(h.getNode))
	// writes
	m.HandleFunc("POST /v1/pools", h.write(h.createPool))
	m.HandleFunc("PUT /v1/pools/{name}", h.write(h.putPool))
	m.HandleFunc("DELETE /v1/pools/{name}", h.write(h.deletePool))
	m.HandleFunc("POST /v1/apps", h.write(h.submitApp))
	m.HandleFunc("DELETE /v1/apps/{name}", h.write(h.deleteApp))
	m.HandleFunc("POST /v1/apps/{name}/{action}", h.write(h.appAction))
	m.HandleFunc("POST /v1/instances/{id}/stop", h.write(h.stopInstance))
	m.HandleFunc("POST /v1/nodes/{name}/drain", h.write(h.drainNode))
	// node protocol
	m.HandleFunc("POST /v1/node/register", h.node(h.register))
	m.HandleFunc("GET /v1/node/{name}/desired", h.node(h.desired))
	m.HandleFunc("POST /v1/node/{name}/report", h.node(h.report))
	m.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: fmt.Sprintf("no API route %s %s", r.Method, r.URL.Path)})
	})
	return m
}

// caller is who a user request comes from.
type caller struct {
	admin bool
	name  string // a submit token's name
}

func bearer(r *http.Request) string {
	a := r.Header.Get("Authorization")
	if t, ok := strings.CutPrefix(a, "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	return ""
}

func same(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func (h *handler) authUser(r *http.Request) (*caller, *Error) {
	t := bearer(r)
	if t == "" {
		return nil, &Error{Status: http.StatusUnauthorized, Code: CodeUnauthorized, Message: "no bearer token (Authorization: Bearer TOKEN)"}
	}
	if same(t, h.o.AdminToken) {
		return &caller{admin: true}, nil
	}
	for name, tok := range h.o.SubmitTokens {
		if same(t, tok) {
			return &caller{name: name}, nil
		}
	}
	return nil, &Error{Status: http.StatusUnauthorized, Code: CodeUnauthorized, Message: "unknown token"}
}

type userFunc func(w http.ResponseWriter, r *http.Request, c *caller) (any, error)

func (h *handler) user(f userFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, aerr := h.authUser(r)
		if aerr != nil {
			writeError(w, aerr)
			return
		}
		v, err := f(w, r, c)
		h.answer(w, r, v, err)
	}
}

// write is user for writes: on a follower the request goes to the leader.
func (h *handler) write(f userFunc) http.HandlerFunc {
	inner := h.user(f)
	return func(w http.ResponseWriter, r *http.Request) {
		if _, aerr := h.authUser(r); aerr != nil {
			writeError(w, aerr)
			return
		}
		if h.o.Leadership.Leading() {
			inner(w, r)
			return
		}
		h.forward(w, r)
	}
}

func (h *handler) forward(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get(ForwardedHeader) != "" {
		writeError(w, NotLeader("forwarded by %s, but this scheduler does not lead either (an election under way): retry", r.Header.Get(ForwardedHeader)))
		return
	}
	leader := h.o.Leadership.LeaderURL(r.Context())
	if leader == "" {
		writeError(w, NotLeader("no leader elected at the moment: retry"))
		return
	}
	u, err := url.Parse(leader)
	if err != nil {
		writeError(w, NotLeader("leader address %q: %v", leader, err))
		return
	}
	p := httputil.NewSingleHostReverseProxy(u)
	p.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		writeError(w, NotLeader("forwarding to the leader at %s: %v", leader, err))
	}
	r.Header.Set(ForwardedHeader, h.o.Self)
	p.ServeHTTP(w, r)
}

func (h *handler) node(f func(w http.ResponseWriter, r *http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !same(bearer(r), h.o.NodeToken) {
			writeError(w, &Error{Status: http.StatusUnauthorized, Code: CodeUnauthorized, Message: "not the node credential"})
			return
		}
		if !h.o.Leadership.Leading() {
			if l := h.o.Leadership.LeaderURL(r.Context()); l != "" {
				w.Header().Set(LeaderHeader, l)
			}
			writeError(w, NotLeader("nodes talk to the leader: see the %s header", LeaderHeader))
			return
		}
		v, err := f(w, r)
		h.answer(w, r, v, err)
	}
}

type noContent struct{ status int }

func (h *handler) answer(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err != nil {
		var e *Error
		switch {
		case errors.As(err, &e):
		case errors.Is(err, store.ErrNotFound):
			e = NotFound("%v", err)
		case errors.Is(err, store.ErrDeposed):
			e = NotLeader("this scheduler was deposed while writing: retry")
		case store.Unavailable(err):
			e = Unavailable("PostgreSQL is unavailable: %v", err)
		case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
			return
		default:
			h.o.Log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			e = &Error{Status: http.StatusInternalServerError, Code: "internal", Message: err.Error()}
		}
		writeError(w, e)
		return
	}
	switch v := v.(type) {
	case noContent:
		w.WriteHeader(v.status)
	case []byte:
		w.Header().Set("Content-Type", "application/json")
		w.Write(v)
	default:
		status := http.StatusOK
		if r.Method == http.MethodPost && (r.URL.Path == "/v1/apps" || r.URL.Path == "/v1/pools") {
			status = http.StatusCreated
		}
		writeJSON(w, status, v)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *Error) {
	writeJSON(w, e.Status, map[string]*Error{"error": e})
}

// paging reads ?limit=N&after=CURSOR.
func paging(r *http.Request) (string, int, error) {
	limit := DefaultLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxLimit {
			return "", 0, Invalid("limit", "%q is not a number from 1 to %d", s, MaxLimit)
		}
		limit = n
	}
	return r.URL.Query().Get("after"), limit, nil
}

// decode reads a JSON body strictly; errors name the field.
func decode(r *http.Request, v any, prefix string) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err, prefix)
	}
	return nil
}

func decodeError(err error, prefix string) *Error {
	join := func(f string) string {
		if prefix == "" {
			return f
		}
		if f == "" {
			return prefix
		}
		return prefix + "." + f
	}
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	var de *resource.DimError
	switch {
	case errors.As(err, &te):
		return Invalid(join(te.Field), "want a %s, got %s", te.Type, te.Value)
	case errors.As(err, &de):
		// the vector's own field is not known here: resources is the one
		// vector of an app spec; pools name min or max in the message
		field := "resources"
		if prefix == "pool" {
			field = "min|max"
		}
		return Invalid(field+"."+de.Dim, "%v", de.Err)
	case errors.As(err, &se):
		return Invalid(prefix, "malformed JSON at byte %d: %v", se.Offset, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return Invalid(prefix, "malformed JSON: the body ends mid-value")
	case errors.Is(err, io.EOF):
		return Invalid(prefix, "empty body: a JSON object is required")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return Invalid(join(f), "unknown field")
	}
	if fe := model.AsFieldError(err, ""); fe != nil && fe.Field != "" {
		return Invalid(fe.Field, "%s", fe.Message)
	}
	return Invalid(prefix, "%v", err)
}

// fieldError turns a Validate error into an *Error.
func fieldError(err error) error {
	if err == nil {
		return nil
	}
	var fe *model.FieldError
	if errors.As(err, &fe) {
		return Invalid(fe.Field, "%s", fe.Message)
	}
	return Invalid("", "%v", err)
}

// mayUse reports whether c may submit to and manage apps of pool: admin,
// or a submit token named in the submitters of the pool or an ancestor.
func (h *handler) mayUse(ctx context.Context, c *caller, pool string) error {
	if c.admin {
		return nil
	}
	for p := pool; p != ""; p = model.ParentPool(p) {
		pl, err := h.o.Store.Pool(ctx, p)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		for _, s := range pl.Submitters {
			if s == c.name {
				return nil
			}
		}
	}
	return &Error{Status: http.StatusForbidden, Code: CodeForbidden, Field: "pool",
		Message: fmt.Sprintf("token %q may not submit to pool %q (not among its submitters)", c.name, pool)}
}

func adminOnly(c *caller) error {
	if !c.admin {
		return &Error{Status: http.StatusForbidden, Code: CodeForbidden, Message: "needs the admin token"}
	}
	return nil
}
