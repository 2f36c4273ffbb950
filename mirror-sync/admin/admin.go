// Package admin is the mirror rules' REST API (JSON, bearer-token
// authenticated), served by gaia-mirror and driven by `gaiactl mirror`.
//
//	GET    /admin/v1/mirror/rules              list
//	POST   /admin/v1/mirror/rules[?check=1]    create (check: the upstream must answer)
//	GET    /admin/v1/mirror/rules/NAME         show, with the latest runs
//	PUT    /admin/v1/mirror/rules/NAME[?check=1] replace
//	DELETE /admin/v1/mirror/rules/NAME         delete
//	POST   /admin/v1/mirror/rules/NAME/run     run now (202; the run already queued or running if any)
//	GET    /admin/v1/mirror/rules/NAME/runs    history (?limit=N, default 20)
//
// Errors are {"error": {"field": ..., "message": ...}}; passwords never
// leave the server.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gaia-registry/gaia/mirror-sync/rule"
	"github.com/gaia-registry/gaia/mirror-sync/store"
)

// Prefix is where the API lives.
const Prefix = "/admin/v1/mirror/rules"

// Handler serves the API.
type Handler struct {
	Store  *store.Store
	Token  string       // the admin bearer token
	Client *http.Client // for ?check=1 (default: 5 s timeout)
	Log    *slog.Logger
	// Queued, when set, is told of each run queued through the API (the
	// process's own worker wakes instead of waiting for its next poll).
	Queued func()
}

// Status is a rule as `show` returns it.
type Status struct {
	Rule      rule.Rule   `json:"rule"`
	NextRunAt *time.Time  `json:"next_run_at,omitempty"`
	CreatedAt time.Time   `json:"created_at"`
	UpdatedAt time.Time   `json:"updated_at"`
	Runs      []store.Run `json:"runs"`
}

type apiError struct {
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func fail(w http.ResponseWriter, status int, field, msg string) {
	writeJSON(w, status, map[string]apiError{"error": {Field: field, Message: msg}})
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	auth := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if h.Token == "" || !ok || subtle.ConstantTimeCompare([]byte(tok), []byte(h.Token)) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="gaia-mirror-admin"`)
		fail(w, http.StatusUnauthorized, "", "admin token required (Authorization: Bearer ...)")
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, Prefix)
	if !ok {
		fail(w, http.StatusNotFound, "", "no such endpoint")
		return
	}
	parts := strings.Split(strings.Trim(rest, "/"), "/")
	ctx := r.Context()
	switch {
	case rest == "" || rest == "/":
		switch r.Method {
		case http.MethodGet:
			h.list(ctx, w)
		case http.MethodPost:
			h.put(w, r, "", true)
		default:
			fail(w, http.StatusMethodNotAllowed, "", "GET or POST")
		}
	case len(parts) == 1:
		name := parts[0]
		switch r.Method {
		case http.MethodGet:
			h.show(ctx, w, name)
		case http.MethodPut:
			h.put(w, r, name, false)
		case http.MethodDelete:
			if err := h.Store.Delete(ctx, name); err != nil {
				h.storeErr(w, err)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		default:
			fail(w, http.StatusMethodNotAllowed, "", "GET, PUT or DELETE")
		}
	case len(parts) == 2 && parts[1] == "run" && r.Method == http.MethodPost:
		run, created, err := h.Store.RunNow(ctx, parts[0])
		if err != nil {
			h.storeErr(w, err)
			return
		}
		status := http.StatusAccepted
		if !created {
			status = http.StatusOK // already queued or running: that one
		} else if h.Queued != nil {
			h.Queued()
		}
		writeJSON(w, status, run)
	case len(parts) == 2 && parts[1] == "runs" && r.Method == http.MethodGet:
		limit := 20
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 1000 {
				fail(w, http.StatusBadRequest, "limit", "1-1000")
				return
			}
			limit = n
		}
		if _, err := h.Store.Get(ctx, parts[0]); err != nil {
			h.storeErr(w, err)
			return
		}
		runs, err := h.Store.Runs(ctx, parts[0], limit)
		if err != nil {
			h.storeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, runs)
	default:
		fail(w, http.StatusNotFound, "", "no such endpoint")
	}
}

func (h *Handler) storeErr(w http.ResponseWriter, err error) {
	var fe *rule.FieldError
	switch {
	case errors.As(err, &fe): // the rule changed under the update (its upstream moved)
		fail(w, http.StatusBadRequest, fe.Field, fe.Reason)
	case errors.Is(err, store.ErrNotFound):
		fail(w, http.StatusNotFound, "name", err.Error())
	case errors.Is(err, store.ErrExists):
		fail(w, http.StatusConflict, "name", err.Error())
	default:
		if h.Log != nil {
			h.Log.Error("mirror admin", "err", err)
		}
		fail(w, http.StatusInternalServerError, "", "internal error")
	}
}

func (h *Handler) list(ctx context.Context, w http.ResponseWriter) {
	entries, err := h.Store.List(ctx)
	if err != nil {
		h.storeErr(w, err)
		return
	}
	out := make([]Status, 0, len(entries))
	for _, e := range entries {
		out = append(out, Status{Rule: e.Rule.Redacted(), NextRunAt: e.NextRunAt, CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt, Runs: []store.Run{}})
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) show(ctx context.Context, w http.ResponseWriter, name string) {
	e, err := h.Store.Get(ctx, name)
	if err != nil {
		h.storeErr(w, err)
		return
	}
	runs, err := h.Store.Runs(ctx, name, 5)
	if err != nil {
		h.storeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, Status{Rule: e.Rule.Redacted(), NextRunAt: e.NextRunAt, CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt, Runs: runs})
}

// put creates (name empty) or replaces the rule in the body.
func (h *Handler) put(w http.ResponseWriter, r *http.Request, name string, create bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		fail(w, http.StatusBadRequest, "", "reading the body: "+err.Error())
		return
	}
	ru, err := rule.Decode(body)
	var fe *rule.FieldError
	if err == nil {
		if !create && ru.Name == "" {
			ru.Name = name
		}
		if !create && ru.Name != name {
			fail(w, http.StatusBadRequest, "name", fmt.Sprintf("the body names %q, the URL %q: rename by delete and create", ru.Name, name))
			return
		}
		if !create {
			// The API never shows the password: an update without it keeps
			// the stored one (for the same user and upstream host).
			if old, gerr := h.Store.Get(r.Context(), name); gerr == nil {
				err = ru.CarryPassword(&old.Rule)
			}
		}
		if err == nil {
			err = ru.Validate()
		}
	}
	if errors.As(err, &fe) {
		fail(w, http.StatusBadRequest, fe.Field, fe.Reason)
		return
	} else if err != nil {
		fail(w, http.StatusBadRequest, "", err.Error())
		return
	}
	if r.URL.Query().Get("check") != "" {
		if err := h.check(r.Context(), ru); err != nil {
			fail(w, http.StatusBadRequest, "upstream.url", err.Error())
			return
		}
	}
	if create {
		err = h.Store.Create(r.Context(), ru)
	} else {
		err = h.Store.Update(r.Context(), ru)
	}
	if err != nil {
		h.storeErr(w, err)
		return
	}
	e, err := h.Store.Get(r.Context(), ru.Name)
	if err != nil {
		h.storeErr(w, err)
		return
	}
	status := http.StatusOK
	if create {
		status = http.StatusCreated
	}
	writeJSON(w, status, Status{Rule: e.Rule.Redacted(), NextRunAt: e.NextRunAt, CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt, Runs: []store.Run{}})
}

// check asks the upstream's /v2/: a registry answers 200 or 401.
func (h *Handler) check(ctx context.Context, ru *rule.Rule) error {
	client := h.Client
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(ru.Upstream.URL, "/")+"/v2/", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("upstream unreachable: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("upstream /v2/ answered %s: not a registry?", resp.Status)
	}
	return nil
}
