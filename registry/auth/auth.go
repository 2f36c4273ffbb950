// Package auth is gaia-registry's authentication and authorization
// middleware for the OCI Distribution API.
//
// It works out which access a request needs from its method and path
// (pull, push or delete on a repository, or the catalog) and asks one of
// CNCF distribution's access controllers whether the request has it:
// htpasswd (HTTP Basic against a bcrypt htpasswd file) or token (Bearer
// JWTs from an external token server, as in distribution's token auth
// spec). Refusals are answered with the spec's error JSON and the
// controller's WWW-Authenticate challenge.
package auth

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	dauth "github.com/distribution/distribution/v3/registry/auth"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd" // registers "htpasswd"
	_ "github.com/distribution/distribution/v3/registry/auth/token"    // registers "token"

	"github.com/gaia-registry/gaia/registry/api"
	"github.com/gaia-registry/gaia/registry/iam"
)

// Config is the `auth:` section of gaia-registry's YAML config.
type Config struct {
	// AnonymousPull lets requests without credentials pull (GET/HEAD of
	// manifests, blobs, tags/list, referrers). Pushes, deletes and the
	// catalog still need credentials. The /v2/ check still challenges
	// anonymous requests: the docker CLI sends credentials only after a
	// 401 there, so answering 200 would break `docker login` and push.
	// (With token auth, anonymous docker pulls fetch an anonymous token;
	// with htpasswd, the docker CLI cannot pull anonymously, while
	// containerd, skopeo and crane can.)
	AnonymousPull bool            `yaml:"anonymouspull"`
	Htpasswd      *HtpasswdConfig `yaml:"htpasswd"`
	Token         *TokenConfig    `yaml:"token"`
	Builtin       *BuiltinConfig  `yaml:"builtin"`
}

// HtpasswdConfig configures HTTP Basic auth against an htpasswd file whose
// entries are bcrypt hashes (`htpasswd -nbB user pass`).
type HtpasswdConfig struct {
	Realm string `yaml:"realm"`
	Path  string `yaml:"path"`
}

// TokenConfig configures Bearer token auth. Tokens are JWTs whose signing
// key is either certified by a certificate in RootCertBundle (x5c header,
// or kid equal to the certificate key's JWK thumbprint) or listed by kid
// in the JWKS file. At least one of RootCertBundle and JWKS is required.
type TokenConfig struct {
	Realm          string `yaml:"realm"`   // the token server's URL, sent in challenges
	Service        string `yaml:"service"` // this registry's name: the tokens' audience
	Issuer         string `yaml:"issuer"`  // the tokens' issuer
	RootCertBundle string `yaml:"rootcertbundle"`
	JWKS           string `yaml:"jwks"`
}

// Authenticator authorizes requests; see Wrap.
type Authenticator struct {
	ac            dauth.AccessController // nil: every request is allowed
	anonymousPull bool
	// scoped: grants name the repositories they cover (tokens); an
	// htpasswd user may pull every repository.
	scoped bool
	// builtin: the built-in token service's verifier and the access
	// model that every request is checked against again.
	builtin *builtin
}

// Option configures New.
type Option func(*Authenticator)

// WithStore gives auth.builtin its access model (it needs the database).
func WithStore(store *iam.Store) Option {
	return func(a *Authenticator) {
		if a.builtin != nil {
			a.builtin.store = store
		}
	}
}

// New validates cfg (at most one of htpasswd, token and builtin,
// required fields set, files readable) and returns an Authenticator.
// With none configured every request is allowed. builtin needs WithStore.
func New(cfg Config, opts ...Option) (*Authenticator, error) {
	a, err := build(cfg)
	if err != nil {
		return nil, err
	}
	for _, o := range opts {
		o(a)
	}
	if a.builtin != nil {
		if a.builtin.store == nil {
			return nil, errors.New("auth.builtin: needs the registry's database (database.url)")
		}
		a.ac = a.builtin.verifier
	}
	return a, nil
}

// Validate checks cfg as New does, without what builtin needs at run
// time (the database): for checking a config file.
func (cfg Config) Validate() error {
	_, err := build(cfg)
	return err
}

func build(cfg Config) (*Authenticator, error) {
	a := &Authenticator{anonymousPull: cfg.AnonymousPull}
	n := 0
	for _, set := range []bool{cfg.Htpasswd != nil, cfg.Token != nil, cfg.Builtin != nil} {
		if set {
			n++
		}
	}
	var err error
	switch {
	case n > 1:
		return nil, errors.New("auth: configure at most one of htpasswd, token and builtin")
	case cfg.Htpasswd != nil:
		a.ac, err = newHtpasswd(*cfg.Htpasswd)
	case cfg.Token != nil:
		a.ac, err = newToken(*cfg.Token)
		a.scoped = true
	case cfg.Builtin != nil:
		if cfg.AnonymousPull {
			return nil, errors.New("auth.anonymouspull: not with auth.builtin (make a namespace public instead: anonymous clients then pull it with an anonymous token)")
		}
		a.builtin, err = newBuiltin(*cfg.Builtin)
	}
	if err != nil {
		return nil, err
	}
	return a, nil
}

type userKey struct{}

// holderKey keys a *string that WithUser and Wrap fill in for a caller
// further out (the request log), which holds the outer request and so
// cannot see a context made further in.
type holderKey struct{}

// TrackUser returns ctx with a holder for the user that auth lets in
// further down the chain, and a func reading it ("" until then, or for
// anonymous requests).
func TrackUser(ctx context.Context) (context.Context, func() string) {
	h := new(string)
	return context.WithValue(ctx, holderKey{}, h), func() string { return *h }
}

// UserFromContext returns the authenticated user name ("" when anonymous),
// for logs.
func UserFromContext(ctx context.Context) string {
	user, _ := ctx.Value(userKey{}).(string)
	return user
}

// WithUser records an authenticated user name in ctx (UserFromContext),
// for requests authorized otherwise than by Wrap (signed blob URLs).
func WithUser(ctx context.Context, user string) context.Context {
	if h, ok := ctx.Value(holderKey{}).(*string); ok {
		*h = user
	}
	return context.WithValue(ctx, userKey{}, user)
}

// Wrap returns middleware that authorizes each request before next sees
// it, putting the user's name in the request context (UserFromContext)
// and, for a token, the repositories it may pull (api.WithPullable).
func (a *Authenticator) Wrap(next http.Handler) http.Handler {
	if a.ac == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		access := requiredAccess(r)
		if a.anonymousPull && anonymous(r) && pullOnly(r.Method, access) {
			next.ServeHTTP(w, r)
			return
		}
		var grant *dauth.Grant
		var err error
		if a.builtin != nil {
			var subject string
			if subject, err = a.builtin.authorize(r, access); err == nil {
				grant = &dauth.Grant{User: dauth.UserInfo{Name: subject}}
			}
		} else {
			grant, err = a.ac.Authorized(r, access...)
		}
		var challenge dauth.Challenge
		switch {
		case errors.As(err, &challenge):
			challenge.SetHeaders(r, w)
			if access == nil {
				access = []dauth.Access{} // "detail": [] rather than null
			}
			code := errcode.ErrorCodeUnauthorized
			if c, ok := challenge.(interface{ Code() errcode.ErrorCode }); ok {
				code = c.Code()
			}
			errcode.ServeJSON(w, code.WithDetail(access))
		case err != nil || grant == nil:
			slog.ErrorContext(r.Context(), "auth: checking authorization", "method", r.Method, "path", r.URL.Path, "err", err)
			errcode.ServeJSON(w, errcode.ErrorCodeUnknown)
		default:
			ctx := WithUser(r.Context(), grant.User.Name)
			switch {
			case a.builtin != nil:
				ctx = api.WithPullable(ctx, a.builtin.mayPull(ctx, grant.User.Name))
			case a.scoped:
				ctx = api.WithPullable(ctx, func(repo string) bool { return a.mayPull(r, repo) })
			}
			next.ServeHTTP(w, r.WithContext(ctx))
		}
	})
}

// mayPull reports whether r's credentials may pull repo, asking the
// controller (a token's grant names resources, not their actions).
func (a *Authenticator) mayPull(r *http.Request, repo string) bool {
	access := dauth.Access{Resource: dauth.Resource{Type: "repository", Name: repo}, Action: "pull"}
	g, err := a.ac.Authorized(r, access)
	return err == nil && g != nil
}

// anonymous reports whether a request carries no credentials: no
// Authorization header, or (as skopeo and containers/image send after a
// Basic challenge when they have none) Basic auth with an empty user and
// password.
func anonymous(r *http.Request) bool {
	if r.Header.Get("Authorization") == "" {
		return true
	}
	user, pass, ok := r.BasicAuth()
	return ok && user == "" && pass == ""
}

// pullOnly reports whether a request needing access only reads, which
// AnonymousPull lets through without credentials.
func pullOnly(method string, access []dauth.Access) bool {
	if method != http.MethodGet && method != http.MethodHead || len(access) == 0 {
		return false
	}
	for _, a := range access {
		if a.Type != "repository" || a.Action != "pull" {
			return false
		}
	}
	return true
}

// requiredAccess is the access a request needs, from its method and its
// route as the API handler reads it (api.RouteOf: the same parse of the
// same raw path, so auth never checks another repository than the one
// served): none for /v2/ (authentication only), registry:catalog:* for
// the catalog, repository:<name>:<actions> for the rest. Paths that are
// no route need authentication only; the handler refuses them. A blob
// mount (POST with from=) also needs pull on the source repository.
func requiredAccess(r *http.Request) []dauth.Access {
	rt := api.RouteOf(r)
	switch rt.Kind {
	case "", "base":
		return nil
	case "catalog":
		return []dauth.Access{{Resource: dauth.Resource{Type: "registry", Name: "catalog"}, Action: "*"}}
	}
	access := repositoryAccess(r.Method, rt.Name)
	if from := r.URL.Query().Get("from"); r.Method == http.MethodPost && from != "" {
		access = append(access, repositoryAccess(http.MethodGet, from)...)
	}
	return access
}

func repositoryAccess(method, name string) []dauth.Access {
	res := dauth.Resource{Type: "repository", Name: name}
	switch method {
	case http.MethodGet, http.MethodHead:
		return []dauth.Access{{Resource: res, Action: "pull"}}
	case http.MethodDelete:
		return []dauth.Access{{Resource: res, Action: "delete"}}
	default: // POST, PUT, PATCH, and anything unexpected
		return []dauth.Access{{Resource: res, Action: "pull"}, {Resource: res, Action: "push"}}
	}
}
