// Package tokenauth is gaia-registry's built-in token service: signing
// keys (Keys), JWTs in distribution's token format (Authority), the
// /auth/token endpoint of the token spec with its OAuth2 POST flow
// (NewHandler), a failed-login Limiter, and the registry side that checks
// Bearer tokens (Verifier). Who may have what is a Backend's business
// (registry/iam implements it).
package tokenauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gaia-registry/gaia/registry/forwarded"
)

// Backend is what the token service asks about users; iam.Store
// implements it.
type Backend interface {
	// Authenticate checks Basic credentials. ErrBadCredentials (wrapped or not) for a wrong
	// user/password/expired robot; any other error is a server error (500).
	Authenticate(ctx context.Context, user, password string) (subject string, err error)
	// Valid reports whether subject (from a refresh token) may still get tokens
	// (user still exists / robot not deleted or expired): ErrBadCredentials if not.
	// A robot whose secret was rotated after issuedAt is not.
	Valid(ctx context.Context, subject string, issuedAt time.Time) error
	// Grant returns the subset of requested the subject ("" = anonymous) may have now.
	Grant(ctx context.Context, subject string, requested []Access) ([]Access, error)
}

// ErrBadCredentials is a Backend's refusal of credentials or a subject.
var ErrBadCredentials = errors.New("tokenauth: bad credentials")

// LoginEvent is an authentication with credentials, for the audit log:
// each password login (GET with Basic auth, POST grant_type=password),
// successful or not, and each refresh token refused because its subject
// is no longer valid. Attempts refused by the Limiter are not events (a
// flood would flood the log; they are counted in
// gaia_token_logins_limited_total). Passwords are never in one.
type LoginEvent struct {
	Time       time.Time
	Action     string // "login" or "login_failed"
	User       string // the user name given (the subject's, for a refresh token)
	Subject    string // the authenticated subject ("" when failed)
	RemoteAddr string // the client's address (behind trusted proxies, X-Forwarded-For's)
	Reason     string // why it failed
}

// Options configure NewHandler.
type Options struct {
	Keys       *Keys
	Issuer     string        // iss of the tokens
	Service    string        // aud of the tokens: requests must name it in `service`
	TTL        time.Duration // access token lifetime (default 5m)
	RefreshTTL time.Duration // refresh token lifetime (default 720h)
	Backend    Backend
	Limiter    *Limiter         // nil: NewLimiter(LimiterConfig{}, nil)
	Recorder   func(LoginEvent) // nil: none; must not block
	Trusted    forwarded.Trusted
	Now        func() time.Time      // nil: time.Now
	Registerer prometheus.Registerer // nil: metrics not registered
}

type handler struct {
	o       Options
	auth    *Authority
	issued  *prometheus.CounterVec
	failed  *prometheus.CounterVec
	limited prometheus.Counter
}

// NewHandler serves the token service: GET and POST /auth/token, and GET
// /auth/jwks (the public keys, for registries that verify our tokens).
// It answers whatever path it is given under those two names' last
// element, so mount it at /auth/.
func NewHandler(o Options) http.Handler {
	if o.TTL <= 0 {
		o.TTL = 5 * time.Minute
	}
	if o.RefreshTTL <= 0 {
		o.RefreshTTL = 720 * time.Hour
	}
	if o.Limiter == nil {
		o.Limiter = NewLimiter(LimiterConfig{}, nil)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	h := &handler{
		o:    o,
		auth: &Authority{Keys: o.Keys, Issuer: o.Issuer, Service: o.Service, Now: o.Now},
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_token_issued_total",
			Help: "Access tokens issued by the built-in token service, by grant (anonymous, basic, password, refresh_token).",
		}, []string{"grant"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_token_login_failures_total",
			Help: "Refused logins and refresh tokens, by reason (bad_credentials, invalid_refresh_token, subject_invalid).",
		}, []string{"reason"}),
		limited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gaia_token_logins_limited_total",
			Help: "Login attempts refused with 429 by the failed-login limiter, without asking the backend.",
		}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(h.issued, h.failed, h.limited)
	}
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	switch {
	case strings.HasSuffix(r.URL.Path, "/jwks") && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		w.Header().Set("Content-Type", "application/json")
		w.Write(h.o.Keys.JWKS())
	case strings.HasSuffix(r.URL.Path, "/token") && r.Method == http.MethodGet:
		h.get(w, r)
	case strings.HasSuffix(r.URL.Path, "/token") && r.Method == http.MethodPost:
		h.post(w, r)
	case strings.HasSuffix(r.URL.Path, "/token") || strings.HasSuffix(r.URL.Path, "/jwks"):
		w.Header().Set("Allow", "GET, POST")
		errcode.ServeJSON(w, errcode.ErrorCodeUnsupported)
	default:
		http.NotFound(w, r)
	}
}

// specError answers with the spec's error JSON and status.
func specError(w http.ResponseWriter, status int, code errcode.ErrorCode, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(errcode.Errors{code.WithMessage(msg)})
}

// oauthError answers an OAuth2 error (RFC 6749 5.2). The body also has
// the spec's "errors" list: docker's client reads only that, containerd
// only the status.
func oauthError(w http.ResponseWriter, status int, oauthCode string, code errcode.ErrorCode, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct {
		Error       string          `json:"error"`
		Description string          `json:"error_description"`
		Errors      []errcode.Error `json:"errors"`
	}{oauthCode, msg, []errcode.Error{code.WithMessage(msg)}})
}

func (h *handler) record(ev LoginEvent) {
	if h.o.Recorder != nil {
		ev.Time = h.o.Now()
		h.o.Recorder(ev)
	}
}

// errLimited and errBackend are login's refusals other than bad credentials.
type errLimited struct{ retryAfter time.Duration }

func (e errLimited) Error() string { return "too many failed logins" }

var errBackend = errors.New("backend")

// login authenticates user/password through the limiter.
func (h *handler) login(r *http.Request, addr, user, password string) (string, error) {
	if retry, ok := h.o.Limiter.Allow(user, addr); !ok {
		h.limited.Inc()
		return "", errLimited{retry}
	}
	subject, err := h.o.Backend.Authenticate(r.Context(), user, password)
	switch {
	case errors.Is(err, ErrBadCredentials):
		h.o.Limiter.Fail(user, addr)
		h.failed.WithLabelValues("bad_credentials").Inc()
		h.record(LoginEvent{Action: "login_failed", User: user, RemoteAddr: addr, Reason: "bad credentials"})
		return "", ErrBadCredentials
	case err != nil:
		slog.ErrorContext(r.Context(), "token: authenticating", "user", user, "err", err)
		return "", errBackend
	}
	h.record(LoginEvent{Action: "login", User: user, Subject: subject, RemoteAddr: addr})
	return subject, nil
}

func retryAfter(w http.ResponseWriter, d time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(d.Seconds()))))
}

// get is the token spec's GET: Basic credentials (optional), service,
// scope (repeated), offline_token.
func (h *handler) get(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("service") != h.o.Service {
		specError(w, http.StatusBadRequest, errcode.ErrorCodeUnsupported, fmt.Sprintf("service %q: this token service is %q", q.Get("service"), h.o.Service))
		return
	}
	requested, err := ParseScopes(q["scope"])
	if err != nil {
		specError(w, http.StatusBadRequest, errcode.ErrorCodeUnsupported, err.Error())
		return
	}
	addr, _ := h.o.Trusted.Client(r)
	subject, grant := "", "anonymous"
	// Basic with an empty user and password is what skopeo sends when it
	// has no credentials: anonymous.
	if user, pass, ok := r.BasicAuth(); ok && (user != "" || pass != "") {
		grant = "basic"
		subject, err = h.login(r, addr, user, pass)
		var lim errLimited
		switch {
		case errors.As(err, &lim):
			retryAfter(w, lim.retryAfter)
			specError(w, http.StatusTooManyRequests, errcode.ErrorCodeTooManyRequests, "too many failed logins; retry later")
			return
		case errors.Is(err, ErrBadCredentials):
			w.Header().Set("WWW-Authenticate", fmt.Sprintf("Basic realm=%q", h.o.Service))
			specError(w, http.StatusUnauthorized, errcode.ErrorCodeUnauthorized, "invalid username or password")
			return
		case err != nil:
			specError(w, http.StatusInternalServerError, errcode.ErrorCodeUnknown, "authentication failed")
			return
		}
	}
	tok, c, err := h.issue(r.Context(), subject, requested, grant)
	if err != nil {
		specError(w, http.StatusInternalServerError, errcode.ErrorCodeUnknown, "issuing the token failed")
		return
	}
	resp := tokenResponse{Token: tok, AccessToken: tok, ExpiresIn: int(c.Expiry - c.IssuedAt), IssuedAt: time.Unix(c.IssuedAt, 0).UTC().Format(time.RFC3339)}
	if q.Get("offline_token") == "true" && grant == "basic" {
		if resp.RefreshToken, err = h.auth.IssueRefresh(subject, h.o.RefreshTTL); err != nil {
			specError(w, http.StatusInternalServerError, errcode.ErrorCodeUnknown, "issuing the token failed")
			return
		}
	}
	writeJSON(w, resp)
}

type tokenResponse struct {
	Token        string `json:"token,omitempty"`
	AccessToken  string `json:"access_token"`
	Scope        string `json:"scope,omitempty"`
	ExpiresIn    int    `json:"expires_in"`
	IssuedAt     string `json:"issued_at"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// issue asks the backend what subject may have of requested and signs it.
func (h *handler) issue(ctx context.Context, subject string, requested []Access, grant string) (string, *Claims, error) {
	granted := []Access{}
	if len(requested) > 0 {
		g, err := h.o.Backend.Grant(ctx, subject, requested)
		if err != nil {
			slog.ErrorContext(ctx, "token: granting", "subject", subject, "err", err)
			return "", nil, err
		}
		// Keep only grants with actions: an entry without any is noise.
		for _, a := range g {
			if len(a.Actions) > 0 {
				granted = append(granted, a)
			}
		}
	}
	tok, c, err := h.auth.Issue(subject, granted, h.o.TTL)
	if err != nil {
		slog.ErrorContext(ctx, "token: signing", "err", err)
		return "", nil, err
	}
	h.issued.WithLabelValues(grant).Inc()
	return tok, c, nil
}

// post is the OAuth2 token endpoint docker (with an identity token) and
// containerd use: grant_type password or refresh_token. Errors are 400,
// or 401 for credentials/refresh tokens refused: containerd falls back
// to GET on either, docker's client reports the errors list.
func (h *handler) post(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", errcode.ErrorCodeUnsupported, "bad form: "+err.Error())
		return
	}
	f := r.PostForm
	if f.Get("service") != h.o.Service {
		oauthError(w, http.StatusBadRequest, "invalid_request", errcode.ErrorCodeUnsupported, fmt.Sprintf("service %q: this token service is %q", f.Get("service"), h.o.Service))
		return
	}
	requested, err := ParseScopes(f["scope"])
	if err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_scope", errcode.ErrorCodeUnsupported, err.Error())
		return
	}
	addr, _ := h.o.Trusted.Client(r)
	var subject, refresh string
	switch gt := f.Get("grant_type"); gt {
	case "password":
		user, pass := f.Get("username"), f.Get("password")
		if user == "" || pass == "" {
			oauthError(w, http.StatusBadRequest, "invalid_request", errcode.ErrorCodeUnsupported, "username and password are required")
			return
		}
		subject, err = h.login(r, addr, user, pass)
		var lim errLimited
		switch {
		case errors.As(err, &lim):
			retryAfter(w, lim.retryAfter)
			oauthError(w, http.StatusTooManyRequests, "invalid_grant", errcode.ErrorCodeTooManyRequests, "too many failed logins; retry later")
			return
		case errors.Is(err, ErrBadCredentials):
			oauthError(w, http.StatusUnauthorized, "invalid_grant", errcode.ErrorCodeUnauthorized, "invalid username or password")
			return
		case err != nil:
			oauthError(w, http.StatusInternalServerError, "server_error", errcode.ErrorCodeUnknown, "authentication failed")
			return
		}
		if f.Get("access_type") == "offline" {
			if refresh, err = h.auth.IssueRefresh(subject, h.o.RefreshTTL); err != nil {
				oauthError(w, http.StatusInternalServerError, "server_error", errcode.ErrorCodeUnknown, "issuing the token failed")
				return
			}
		}
	case "refresh_token":
		refresh = f.Get("refresh_token")
		if refresh == "" {
			oauthError(w, http.StatusBadRequest, "invalid_request", errcode.ErrorCodeUnsupported, "refresh_token is required")
			return
		}
		c, err := h.auth.VerifyRefresh(refresh)
		if err != nil {
			h.failed.WithLabelValues("invalid_refresh_token").Inc()
			oauthError(w, http.StatusUnauthorized, "invalid_grant", errcode.ErrorCodeUnauthorized, "invalid refresh token: "+strings.TrimPrefix(err.Error(), "tokenauth: "))
			return
		}
		subject = c.Subject
		if err := h.o.Backend.Valid(r.Context(), subject, time.Unix(c.IssuedAt, 0)); errors.Is(err, ErrBadCredentials) {
			h.failed.WithLabelValues("subject_invalid").Inc()
			h.record(LoginEvent{Action: "login_failed", User: subject, RemoteAddr: addr, Reason: "refresh token of a subject no longer valid"})
			oauthError(w, http.StatusUnauthorized, "invalid_grant", errcode.ErrorCodeUnauthorized, "refresh token no longer valid")
			return
		} else if err != nil {
			slog.ErrorContext(r.Context(), "token: checking a refresh token's subject", "subject", subject, "err", err)
			oauthError(w, http.StatusInternalServerError, "server_error", errcode.ErrorCodeUnknown, "checking the refresh token failed")
			return
		}
		// The same refresh token is handed back: issuing a new one at each
		// use would make a session endless.
	case "":
		oauthError(w, http.StatusBadRequest, "invalid_request", errcode.ErrorCodeUnsupported, "grant_type is required")
		return
	default:
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", errcode.ErrorCodeUnsupported, fmt.Sprintf("grant_type %q: want password or refresh_token", gt))
		return
	}
	tok, c, err := h.issue(r.Context(), subject, requested, f.Get("grant_type"))
	if err != nil {
		oauthError(w, http.StatusInternalServerError, "server_error", errcode.ErrorCodeUnknown, "issuing the token failed")
		return
	}
	scopes := make([]string, len(c.Access))
	for i, a := range c.Access {
		scopes[i] = a.String()
	}
	writeJSON(w, tokenResponse{AccessToken: tok, Scope: strings.Join(scopes, " "), ExpiresIn: int(c.Expiry - c.IssuedAt),
		IssuedAt: time.Unix(c.IssuedAt, 0).UTC().Format(time.RFC3339), RefreshToken: refresh})
}
