package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"time"

	dauth "github.com/distribution/distribution/v3/registry/auth"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gaia-registry/gaia/registry/forwarded"
	"github.com/gaia-registry/gaia/registry/iam"
	"github.com/gaia-registry/gaia/registry/iam/ldap"
	"github.com/gaia-registry/gaia/registry/tokenauth"
)

// BuiltinConfig is auth.builtin: the built-in token service (every server
// serves /auth/token) over the access model of registry/iam.
type BuiltinConfig struct {
	Realm         string                  `yaml:"realm"`   // the token URL sent in challenges
	Service       string                  `yaml:"service"` // the tokens' audience
	Issuer        string                  `yaml:"issuer"`
	SigningKeys   []string                `yaml:"signingkeys"` // PEM private keys; the first signs
	TokenTTL      time.Duration           `yaml:"tokenttl"`
	RefreshTTL    time.Duration           `yaml:"refreshttl"`
	DecisionCache time.Duration           `yaml:"decisioncache"` // the bound on a revocation taking effect
	LoginLimit    tokenauth.LimiterConfig `yaml:"loginlimit"`
	LDAP          *ldap.Config            `yaml:"ldap"` // users and groups from a directory
}

// NewStore is the access model auth.builtin reads, over db (the
// registry's database), with its LDAP directory when configured (its
// metrics registered on reg). bcryptCost 0 is bcrypt's default.
func (c BuiltinConfig) NewStore(db *pgxpool.Pool, reg prometheus.Registerer, bcryptCost int) (*iam.Store, error) {
	opts := iam.Options{CacheTTL: c.DecisionCache, BcryptCost: bcryptCost}
	if c.LDAP != nil {
		dir, err := ldap.New(*c.LDAP)
		if err != nil {
			return nil, err
		}
		if reg != nil {
			reg.MustRegister(dir)
		}
		opts.Directory = iam.LDAP(dir)
	}
	return iam.New(db, opts), nil
}

type builtin struct {
	cfg      BuiltinConfig
	verifier *tokenauth.Verifier
	store    *iam.Store
	logins   *tokenauth.Limiter // failed logins, shared by the token service and the admin API
}

func newBuiltin(c BuiltinConfig) (*builtin, error) {
	for _, kv := range [][2]string{{"realm", c.Realm}, {"service", c.Service}, {"issuer", c.Issuer}} {
		if kv[1] == "" {
			return nil, fmt.Errorf("auth.builtin.%s: required", kv[0])
		}
	}
	if len(c.SigningKeys) == 0 {
		return nil, errors.New("auth.builtin.signingkeys: at least one PEM private key (gaia-registry keygen --out FILE makes one)")
	}
	for _, kv := range []struct {
		key string
		d   time.Duration
	}{{"tokenttl", c.TokenTTL}, {"refreshttl", c.RefreshTTL}, {"decisioncache", c.DecisionCache}} {
		if kv.d < 0 {
			return nil, fmt.Errorf("auth.builtin.%s: %s is negative", kv.key, kv.d)
		}
	}
	if c.LDAP != nil {
		if err := c.LDAP.Validate(); err != nil {
			return nil, err
		}
	}
	keys, err := tokenauth.LoadKeys(c.SigningKeys)
	if err != nil {
		return nil, fmt.Errorf("auth.builtin.signingkeys: %w", err)
	}
	return &builtin{cfg: c, verifier: &tokenauth.Verifier{
		Authority: &tokenauth.Authority{Keys: keys, Issuer: c.Issuer, Service: c.Service},
		Realm:     c.Realm,
	}, logins: tokenauth.NewLimiter(c.LoginLimit, nil)}, nil
}

// authorize checks r's token for access and asks the access model
// whether its subject still has it: a token outlives the membership,
// robot or robot secret it was issued for by up to its lifetime, a
// decision by at most the decision cache. It returns the subject.
func (b *builtin) authorize(r *http.Request, access []dauth.Access) (string, error) {
	var required []tokenauth.Access
	for _, a := range access {
		required = append(required, tokenauth.Access{Type: a.Type, Name: a.Name, Actions: []string{a.Action}})
	}
	c, err := b.verifier.AuthorizeClaims(r, required)
	if err != nil {
		return "", err
	}
	if c.Subject == "" {
		// Anonymous tokens: what public namespaces allow, checked below.
	} else if err := b.store.Valid(r.Context(), c.Subject, time.Unix(c.IssuedAt, 0)); errors.Is(err, iam.ErrBadCredentials) {
		return "", b.verifier.Deny(required)
	} else if err != nil {
		return "", err
	}
	for _, acc := range access {
		if acc.Type != "repository" {
			continue
		}
		allowed, err := b.store.Actions(r.Context(), c.Subject, acc.Name)
		if err != nil {
			return "", err
		}
		if !slices.Contains(allowed, acc.Action) {
			return "", b.verifier.Deny(required)
		}
	}
	return c.Subject, nil
}

// mayPull is the predicate api.WithPullable wants for subject.
func (b *builtin) mayPull(ctx context.Context, subject string) func(repo string) bool {
	return func(repo string) bool {
		allowed, err := b.store.Actions(ctx, subject, repo)
		if err != nil {
			slog.ErrorContext(ctx, "auth: checking pull access", "subject", subject, "repository", repo, "err", err)
			return false
		}
		return slices.Contains(allowed, iam.Pull)
	}
}

// TokenHandler is the token service of auth.builtin, to mount at /auth/
// (nil without builtin). record gets every login and failed login.
func (a *Authenticator) TokenHandler(record func(tokenauth.LoginEvent), trusted forwarded.Trusted, reg prometheus.Registerer) http.Handler {
	if a.builtin == nil {
		return nil
	}
	b := a.builtin
	return tokenauth.NewHandler(tokenauth.Options{
		Keys: b.verifier.Authority.Keys, Issuer: b.cfg.Issuer, Service: b.cfg.Service,
		TTL: b.cfg.TokenTTL, RefreshTTL: b.cfg.RefreshTTL,
		Backend:  backend{b.store},
		Limiter:  b.logins,
		Recorder: record, Trusted: trusted, Registerer: reg,
	})
}

// LoginLimiter is auth.builtin's failed-login limiter (nil without it):
// every place that checks a password uses it.
func (a *Authenticator) LoginLimiter() *tokenauth.Limiter {
	if a.builtin == nil {
		return nil
	}
	return a.builtin.logins
}

// backend is iam.Store as the token service's Backend.
type backend struct{ store *iam.Store }

// badCredentials is both packages' "bad credentials".
type badCredentials struct{ err error }

func (e badCredentials) Error() string { return e.err.Error() }
func (e badCredentials) Is(target error) bool {
	return target == tokenauth.ErrBadCredentials || target == iam.ErrBadCredentials
}

func mapErr(err error) error {
	if errors.Is(err, iam.ErrBadCredentials) {
		return badCredentials{err}
	}
	return err
}

func (b backend) Authenticate(ctx context.Context, user, password string) (string, error) {
	subject, err := b.store.Authenticate(ctx, user, password)
	return subject, mapErr(err)
}

func (b backend) Valid(ctx context.Context, subject string, issuedAt time.Time) error {
	return mapErr(b.store.Valid(ctx, subject, issuedAt))
}

// Grant gives each requested repository access the actions the subject
// has there now ("*" asks for all of them), and the catalog to anyone
// (it lists only what the caller may pull).
func (b backend) Grant(ctx context.Context, subject string, requested []tokenauth.Access) ([]tokenauth.Access, error) {
	var out []tokenauth.Access
	for _, req := range requested {
		switch {
		case req.Type == "registry" && req.Name == "catalog":
			out = append(out, req)
		case req.Type == "repository":
			allowed, err := b.store.Actions(ctx, subject, req.Name)
			if err != nil {
				return nil, err
			}
			var acts []string
			for _, act := range allowed {
				if slices.Contains(req.Actions, act) || slices.Contains(req.Actions, "*") {
					acts = append(acts, act)
				}
			}
			if len(acts) > 0 {
				out = append(out, tokenauth.Access{Type: req.Type, Name: req.Name, Actions: acts})
			}
		}
	}
	return out, nil
}
