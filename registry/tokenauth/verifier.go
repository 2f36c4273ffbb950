package tokenauth

import (
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	dauth "github.com/distribution/distribution/v3/registry/auth"
)

// Verifier is the registry's side: it checks the Bearer tokens of API
// requests, as distribution's token access controller does.
type Verifier struct {
	Authority *Authority // Keys, Issuer, Service (the audience)
	Realm     string     // the token service's URL, sent in challenges

	// verified caches what Authority.Verify said of the tokens it
	// accepted, by the whole token string: a client sends the same token
	// with every request of its lifetime, and checking its signature
	// (ES256) costs more than serving a manifest. Only the time checks are
	// redone on a hit; a token that fails is never cached. Revocation is
	// not affected: registry/auth rechecks the subject's access on every
	// request.
	mu       sync.Mutex
	verified map[string]*Claims
}

// maxVerified bounds the cache (tokens are about 1 KiB): when full, the
// expired entries go, then all of them if that is not enough. A
// variable for tests.
var maxVerified = 10000

// verify is Authority.Verify through the cache.
func (v *Verifier) verify(raw string) (*Claims, error) {
	v.mu.Lock()
	c := v.verified[raw]
	v.mu.Unlock()
	if c != nil {
		if err := v.Authority.checkTime(c); err != nil {
			return nil, err
		}
		return c, nil
	}
	c, err := v.Authority.Verify(raw)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.verified) >= maxVerified {
		for k, old := range v.verified {
			if v.Authority.checkTime(old) != nil {
				delete(v.verified, k)
			}
		}
		if len(v.verified) >= maxVerified {
			clear(v.verified)
		}
	}
	if v.verified == nil {
		v.verified = map[string]*Claims{}
	}
	v.verified[raw] = c
	return c, nil
}

// Authorize checks r's Bearer token and that its access claim covers
// every required access ("*" covers any action). It returns the token's
// subject and grants, or a *Challenge.
func (v *Verifier) Authorize(r *http.Request, required []Access) (subject string, granted []Access, err error) {
	c, err := v.AuthorizeClaims(r, required)
	if err != nil {
		return "", nil, err
	}
	return c.Subject, c.Access, nil
}

// AuthorizeClaims is Authorize returning the token's claims (shared with
// the cache: not to be changed).
func (v *Verifier) AuthorizeClaims(r *http.Request, required []Access) (*Claims, error) {
	ch := &Challenge{realm: v.Realm, service: v.Authority.Service, required: mergeAccess(required)}
	prefix, raw, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || raw == "" || !strings.EqualFold(prefix, "bearer") {
		ch.Err = ErrTokenRequired
		return nil, ch
	}
	c, err := v.verify(raw)
	if err != nil {
		ch.Err = err
		return nil, ch
	}
	for _, req := range required {
		for _, act := range req.Actions {
			if !covers(c.Access, req.Type, req.Name, act) {
				ch.Err = ErrInsufficientScope
				return nil, ch
			}
		}
	}
	return c, nil
}

// Deny is the challenge for a valid token whose subject may not have
// required (any more): insufficient_scope, DENIED.
func (v *Verifier) Deny(required []Access) *Challenge {
	return &Challenge{Err: ErrInsufficientScope, realm: v.Realm, service: v.Authority.Service, required: mergeAccess(required)}
}

// Authorized makes a Verifier a distribution auth.AccessController (the
// interface registry/auth's middleware drives): the Grant names the
// token's resources; the error is a *Challenge.
func (v *Verifier) Authorized(r *http.Request, access ...dauth.Access) (*dauth.Grant, error) {
	var required []Access
	for _, a := range access {
		required = append(required, Access{Type: a.Type, Name: a.Name, Actions: []string{a.Action}})
	}
	subject, granted, err := v.Authorize(r, required)
	if err != nil {
		return nil, err
	}
	g := &dauth.Grant{User: dauth.UserInfo{Name: subject}}
	for _, a := range granted {
		g.Resources = append(g.Resources, dauth.Resource{Type: a.Type, Name: a.Name})
	}
	return g, nil
}

func covers(granted []Access, typ, name, action string) bool {
	for _, g := range granted {
		if g.Type != typ || g.Name != name {
			continue
		}
		for _, a := range g.Actions {
			if a == action || a == "*" {
				return true
			}
		}
	}
	return false
}

// mergeAccess folds accesses to the same resource into one, in order.
func mergeAccess(in []Access) []Access {
	var out []Access
	idx := map[[2]string]int{}
	for _, a := range in {
		k := [2]string{a.Type, a.Name}
		i, ok := idx[k]
		if !ok {
			idx[k] = len(out)
			out = append(out, Access{Type: a.Type, Name: a.Name})
			i = len(out) - 1
		}
		for _, act := range a.Actions {
			out[i].addAction(act)
		}
	}
	return out
}

// Why a request has no valid grant, besides Verify's errors.
var (
	ErrTokenRequired     = fmt.Errorf("tokenauth: authorization token required")
	ErrInsufficientScope = fmt.Errorf("tokenauth: insufficient scope")
)

// Challenge is Authorize's refusal: a distribution auth.Challenge.
// Like distribution's token controller's, its challenge is
// `WWW-Authenticate: Bearer realm=...,service=...,scope=...`, plus
// error="invalid_token" for a token that did not verify and
// error="insufficient_scope" for a valid token lacking the access (docker's
// client turns that one into DENIED, and asks no new token). Code says
// which spec error the body should carry: UNAUTHORIZED when there is no
// valid token, DENIED when the token is valid but lacks the access
// (distribution says UNAUTHORIZED in both bodies; DENIED is what docker
// reports either way, and tells a user that logging in again won't help).
type Challenge struct {
	Err      error // ErrTokenRequired, ErrInsufficientScope, or one of Verify's
	realm    string
	service  string
	required []Access
}

func (c *Challenge) Error() string { return c.Err.Error() }
func (c *Challenge) Unwrap() error { return c.Err }

// Status is the HTTP status to answer: Code's (401 UNAUTHORIZED, 403
// DENIED; distribution answers 401 for both, docker reports either as
// denied).
func (c *Challenge) Status() int { return c.Code().Descriptor().HTTPStatusCode }

// Code is the spec error for the body.
func (c *Challenge) Code() errcode.ErrorCode {
	if c.Err == ErrInsufficientScope {
		return errcode.ErrorCodeDenied
	}
	return errcode.ErrorCodeUnauthorized
}

// SetHeaders writes the WWW-Authenticate challenge.
func (c *Challenge) SetHeaders(r *http.Request, w http.ResponseWriter) {
	s := fmt.Sprintf("Bearer realm=%q,service=%q", c.realm, c.service)
	var scopes []string
	for _, a := range c.required {
		scopes = append(scopes, a.String())
	}
	if len(scopes) > 0 {
		s += fmt.Sprintf(",scope=%q", strings.Join(scopes, " "))
	}
	switch c.Err {
	case ErrTokenRequired:
	case ErrInsufficientScope:
		s += `,error="insufficient_scope"`
	default:
		s += `,error="invalid_token"`
	}
	w.Header().Add("WWW-Authenticate", s)
}
