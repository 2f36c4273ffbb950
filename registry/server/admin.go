package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gaia-registry/gaia/registry/audit"
	"github.com/gaia-registry/gaia/registry/gc"
	"github.com/gaia-registry/gaia/registry/iam"
	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/retention"
	"github.com/gaia-registry/gaia/registry/tokenauth"
)

// AdminPrefix is where the registry's admin API lives (JSON, bearer token
// admin.token): garbage collection's status, retention policies, storage
// usage and quotas, the audit log. gaiactl's gc, retention, storage and
// audit commands use it.
const AdminPrefix = "/admin/v1/"

// AdminConfig is the admin section.
type AdminConfig struct {
	// Token is the bearer token of the admin API; empty: no admin API.
	Token string `yaml:"token"`
}

type adminError struct {
	Error struct {
		Field   string `json:"field,omitempty"`
		Message string `json:"message"`
	} `json:"error"`
}

func adminFail(w http.ResponseWriter, code int, field, msg string) {
	var e adminError
	e.Error.Field, e.Error.Message = field, msg
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(e)
}

func adminJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// adminCaller authenticates an admin API request: the admin token, or
// (with auth.builtin) a user's or robot's Basic credentials. ok false:
// neither.
func (s *Server) adminCaller(r *http.Request) (c adminCaller, ok bool) {
	if tok, isBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); isBearer {
		return adminCaller{system: true}, s.cfg.Admin.Token != "" &&
			subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.Admin.Token)) == 1
	}
	user, pass, isBasic := r.BasicAuth()
	if !isBasic || s.iam == nil {
		return c, false
	}
	// As the token service does: limited failures per user and address,
	// each failure audited.
	addr, _ := s.trusted.Client(r)
	if _, ok := s.logins.Allow(user, addr); !ok {
		return c, false
	}
	subject, err := s.iam.Authenticate(r.Context(), user, pass)
	if err != nil {
		if errors.Is(err, iam.ErrBadCredentials) {
			s.logins.Fail(user, addr)
			s.recordLogin(tokenauth.LoginEvent{Time: time.Now(), Action: "login_failed", User: user, RemoteAddr: addr, Reason: "admin API: bad credentials"})
		} else {
			s.log.Error("admin API: authenticating", "user", user, "err", err)
		}
		return c, false
	}
	admin, err := s.iam.IsAdmin(r.Context(), subject)
	if err != nil {
		s.log.Error("admin API: authenticating", "user", user, "err", err)
		return c, false
	}
	return adminCaller{name: subject, system: admin}, true
}

func (s *Server) adminHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Admin.Token == "" && s.iam == nil {
			adminFail(w, http.StatusNotFound, "", "the admin API is off (neither admin.token nor auth.builtin is set)")
			return
		}
		caller, ok := s.adminCaller(r)
		if !ok {
			w.Header().Add("WWW-Authenticate", `Bearer realm="gaia-registry-admin"`)
			if s.iam != nil {
				w.Header().Add("WWW-Authenticate", `Basic realm="gaia-registry-admin"`)
			}
			adminFail(w, http.StatusUnauthorized, "", "the admin token (Authorization: Bearer ...) or a user's credentials (Basic) required")
			return
		}
		ctx := r.Context()
		rest := strings.TrimPrefix(r.URL.Path, AdminPrefix)
		parts := strings.Split(strings.Trim(rest, "/"), "/")
		if s.adminIAM(w, r, parts, caller) {
			return
		}
		if !caller.system {
			adminFail(w, http.StatusForbidden, "", caller.name+" is not a system admin")
			return
		}
		fail := func(err error) {
			var fe *retention.FieldError
			var afe *audit.FieldError
			switch {
			case errors.As(err, &fe):
				adminFail(w, http.StatusBadRequest, fe.Field, fe.Reason)
			case errors.As(err, &afe):
				adminFail(w, http.StatusBadRequest, afe.Field, afe.Reason)
			case errors.Is(err, retention.ErrNotFound):
				adminFail(w, http.StatusNotFound, "", err.Error())
			default:
				s.log.Error("admin API", "path", r.URL.Path, "err", err)
				adminFail(w, http.StatusInternalServerError, "", err.Error())
			}
		}
		switch {
		case len(parts) == 2 && parts[0] == "gc" && parts[1] == "status" && r.Method == http.MethodGet:
			st, err := gc.ReadStatus(ctx, s.pool, s.cfg.GC.ReviewDelay())
			if err != nil {
				fail(err)
				return
			}
			adminJSON(w, st)
		case len(parts) == 1 && parts[0] == "retention" && r.Method == http.MethodGet:
			ps, err := s.retention.List(ctx, "")
			if err != nil {
				fail(err)
				return
			}
			adminJSON(w, ps)
		case len(parts) == 2 && parts[0] == "retention":
			name := parts[1]
			switch r.Method {
			case http.MethodGet:
				ps, err := s.retention.List(ctx, name)
				if err != nil {
					fail(err)
					return
				}
				adminJSON(w, ps[0])
			case http.MethodPut:
				var spec retention.Spec
				dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&spec); err != nil {
					adminFail(w, http.StatusBadRequest, "", "policy: "+err.Error())
					return
				}
				if err := s.retention.Put(ctx, name, spec); err != nil {
					fail(err)
					return
				}
				ps, err := s.retention.List(ctx, name)
				if err != nil {
					fail(err)
					return
				}
				adminJSON(w, ps[0])
			case http.MethodDelete:
				if err := s.retention.Delete(ctx, name); err != nil {
					fail(err)
					return
				}
				w.WriteHeader(http.StatusNoContent)
			default:
				adminFail(w, http.StatusMethodNotAllowed, "", "GET, PUT or DELETE")
			}
		case len(parts) == 3 && parts[0] == "retention" && parts[2] == "run" && r.Method == http.MethodPost:
			dry := r.URL.Query().Get("dryrun") != "" && r.URL.Query().Get("dryrun") != "0"
			res, err := s.retention.Run(ctx, parts[1], dry)
			if err != nil {
				fail(err)
				return
			}
			adminJSON(w, res)
		case len(parts) == 2 && parts[0] == "storage" && parts[1] == "usage" && r.Method == http.MethodGet:
			nss, repos, err := metadata.StorageUsage(ctx, s.pool, r.URL.Query().Get("prefix"))
			if err != nil {
				fail(err)
				return
			}
			adminJSON(w, map[string]any{"namespaces": nss, "repositories": repos})
		case len(parts) == 3 && parts[0] == "storage" && parts[1] == "quotas":
			var bytes int64 = -1
			switch r.Method {
			case http.MethodPut:
				var body struct {
					Bytes *int64 `json:"bytes"`
				}
				if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&body); err != nil || body.Bytes == nil || *body.Bytes < 0 {
					adminFail(w, http.StatusBadRequest, "bytes", "a quota is {\"bytes\": N}, N ≥ 0")
					return
				}
				bytes = *body.Bytes
			case http.MethodDelete:
			default:
				adminFail(w, http.StatusMethodNotAllowed, "", "PUT or DELETE")
				return
			}
			if err := metadata.SetQuota(ctx, s.pool, parts[2], bytes); err != nil {
				fail(err)
				return
			}
			adminJSON(w, map[string]any{"namespace": parts[2], "bytes": bytes})
		case len(parts) == 1 && parts[0] == "audit" && r.Method == http.MethodGet:
			f, err := auditFilter(r.URL.Query(), time.Now())
			if err != nil {
				fail(err)
				return
			}
			evs, next, err := audit.Query(ctx, s.pool, f)
			if err != nil {
				fail(err)
				return
			}
			if evs == nil {
				evs = []audit.Event{} // "events": [] rather than null
			}
			adminJSON(w, map[string]any{"events": evs, "next": next})
		default:
			adminFail(w, http.StatusNotFound, "", "no such admin resource: "+r.Method+" "+r.URL.Path)
		}
	})
}

// auditFilter reads GET /admin/v1/audit's query: namespace, actor,
// action, repository, since and until (RFC 3339, or a duration before
// now: 24h), limit and cursor (a previous answer's next).
func auditFilter(q url.Values, now time.Time) (audit.Filter, error) {
	f := audit.Filter{Namespace: q.Get("namespace"), Actor: q.Get("actor"), Action: q.Get("action"),
		Repository: q.Get("repository"), Cursor: q.Get("cursor")}
	var err error
	for key, dst := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := q.Get(key); v != "" {
			if *dst, err = audit.ParseTime(key, v, now); err != nil {
				return f, err
			}
		}
	}
	if v := q.Get("limit"); v != "" {
		if f.Limit, err = strconv.Atoi(v); err != nil || f.Limit < 1 {
			return f, &audit.FieldError{Field: "limit", Reason: fmt.Sprintf("%q is not a positive number of events (at most %d are returned)", v, audit.MaxLimit)}
		}
	}
	return f, nil
}

// usageCollector exports namespace usage at scrape time (one query).
type usageCollector struct {
	db                      *pgxpool.Pool
	bytes, quota, scrapeErr *prometheus.Desc
}

func newUsageCollector(db *pgxpool.Pool) *usageCollector {
	return &usageCollector{
		db: db,
		bytes: prometheus.NewDesc("gaia_storage_namespace_bytes",
			"Storage a namespace accounts for: kind dedup (each blob once) or logical (what pulling every manifest transfers).",
			[]string{"namespace", "kind"}, nil),
		quota: prometheus.NewDesc("gaia_storage_namespace_quota_bytes", "A namespace's storage quota (deduplicated bytes).",
			[]string{"namespace"}, nil),
		scrapeErr: prometheus.NewDesc("gaia_storage_usage_scrape_error", "1 when the usage could not be read for this scrape.", nil, nil),
	}
}

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.bytes
	ch <- c.quota
	ch <- c.scrapeErr
}

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	all, err := metadata.NamespaceUsage(ctx, c.db, "")
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.scrapeErr, prometheus.GaugeValue, 1)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.scrapeErr, prometheus.GaugeValue, 0)
	for _, u := range all {
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(u.DedupBytes), u.Name, "dedup")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(u.LogicalBytes), u.Name, "logical")
		if u.QuotaBytes != nil {
			ch <- prometheus.MustNewConstMetric(c.quota, prometheus.GaugeValue, float64(*u.QuotaBytes), u.Name)
		}
	}
}
