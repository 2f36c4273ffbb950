package tokenauth

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Access is a grant on one resource, as in the token spec's `access`
// claim: {"type":"repository","name":"team/app","actions":["pull"]}.
// A scope's resource class (`repository(plugin)`) is not kept: the
// registry checks type and name only, as distribution does.
type Access struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// Claims are a token's claims (the token spec's claim set). Times are
// Unix seconds.
type Claims struct {
	Issuer    string       `json:"iss"`
	Subject   string       `json:"sub"`
	Audience  jwt.Audience `json:"aud"`
	Expiry    int64        `json:"exp"`
	NotBefore int64        `json:"nbf"`
	IssuedAt  int64        `json:"iat"`
	ID        string       `json:"jti"`
	// Access is [] (never null) in access tokens, absent in refresh tokens.
	Access []Access `json:"access,omitzero"`
}

// Leeway is the clock skew allowed between the servers that issue and
// verify a token (they are different servers behind the gateway): a token
// is accepted up to Leeway after exp and from Leeway before nbf.
// (Distribution allows 60 s; tokens here live minutes, so 30 s.)
const Leeway = 30 * time.Second

// Why Verify refused a token; errors.Is tells them apart.
var (
	ErrMalformed   = errors.New("tokenauth: malformed token")
	ErrAlgorithm   = errors.New("tokenauth: signature algorithm not allowed for the key") // alg none, HS256, or not the key's
	ErrUnknownKey  = errors.New("tokenauth: token signed by an unknown key")
	ErrSignature   = errors.New("tokenauth: bad token signature")
	ErrTokenType   = errors.New("tokenauth: wrong kind of token") // a refresh token as an access token or the reverse
	ErrIssuer      = errors.New("tokenauth: token from another issuer")
	ErrAudience    = errors.New("tokenauth: token for another audience")
	ErrExpired     = errors.New("tokenauth: token expired")
	ErrNotYetValid = errors.New("tokenauth: token not valid yet")
)

// Token types (the JWS `typ` header). Refresh tokens also have their own
// audience (refreshAudience), so that a verifier that ignores typ, like
// distribution's, still refuses one as an access token.
const (
	typeAccess  = "JWT"
	typeRefresh = "gaia-refresh+jwt"
)

func refreshAudience(service string) string { return service + "#refresh" }

// Authority issues and verifies the tokens of one service.
type Authority struct {
	Keys    *Keys
	Issuer  string           // iss
	Service string           // aud of access tokens
	Now     func() time.Time // nil: time.Now
}

func (a *Authority) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// Issue signs an access token for subject ("" anonymous) granting access,
// valid for ttl.
func (a *Authority) Issue(subject string, access []Access, ttl time.Duration) (string, *Claims, error) {
	if access == nil {
		access = []Access{}
	}
	return a.issue(typeAccess, a.Service, subject, access, ttl)
}

// IssueRefresh signs a refresh token for subject, valid for ttl.
func (a *Authority) IssueRefresh(subject string, ttl time.Duration) (string, error) {
	tok, _, err := a.issue(typeRefresh, refreshAudience(a.Service), subject, nil, ttl)
	return tok, err
}

func (a *Authority) issue(typ, aud, subject string, access []Access, ttl time.Duration) (string, *Claims, error) {
	now := a.now()
	var id [16]byte
	rand.Read(id[:])
	c := &Claims{
		Issuer: a.Issuer, Subject: subject, Audience: jwt.Audience{aud},
		Expiry: now.Add(ttl).Unix(), NotBefore: now.Unix(), IssuedAt: now.Unix(),
		ID: base64.RawURLEncoding.EncodeToString(id[:]), Access: access,
	}
	signer := a.Keys.signer
	if typ == typeRefresh {
		signer = a.Keys.refresh
	}
	tok, err := jwt.Signed(signer).Claims(c).Serialize()
	if err != nil {
		return "", nil, err
	}
	return tok, c, nil
}

// Verify checks an access token: signature by one of Keys, type, issuer,
// audience Service, and validity time (with Leeway).
func (a *Authority) Verify(token string) (*Claims, error) {
	return a.verify(token, typeAccess, a.Service)
}

// VerifyRefresh checks a refresh token as Verify does an access token.
func (a *Authority) VerifyRefresh(token string) (*Claims, error) {
	return a.verify(token, typeRefresh, refreshAudience(a.Service))
}

func (a *Authority) verify(token, typ, aud string) (*Claims, error) {
	// The header is read before go-jose parses the token so that an
	// algorithm or key we do not have is told apart from garbage.
	h, _, ok := strings.Cut(token, ".")
	if !ok {
		return nil, ErrMalformed
	}
	hb, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		return nil, ErrMalformed
	}
	var header struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}
	if json.Unmarshal(hb, &header) != nil {
		return nil, ErrMalformed
	}
	k, ok := a.Keys.byKID[header.Kid]
	if header.Alg == "" || strings.EqualFold(header.Alg, "none") || ok && jose.SignatureAlgorithm(header.Alg) != k.alg {
		return nil, ErrAlgorithm
	}
	if !ok {
		return nil, ErrUnknownKey
	}
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{k.alg})
	if err != nil || len(tok.Headers) != 1 {
		return nil, ErrMalformed
	}
	var c Claims
	if err := tok.Claims(k.pub, &c); err != nil {
		if errors.Is(err, jose.ErrCryptoFailure) {
			return nil, ErrSignature
		}
		return nil, ErrMalformed
	}
	// Signed, so the header read above is the one verified.
	if header.Typ != typ {
		return nil, ErrTokenType
	}
	if c.Issuer != a.Issuer {
		return nil, ErrIssuer
	}
	if !slices.Contains(c.Audience, aud) {
		if slices.Contains(c.Audience, a.Service) || slices.Contains(c.Audience, refreshAudience(a.Service)) {
			return nil, ErrTokenType
		}
		return nil, ErrAudience
	}
	if err := a.checkTime(&c); err != nil {
		return nil, err
	}
	return &c, nil
}

// checkTime checks a verified token's validity time (with Leeway).
func (a *Authority) checkTime(c *Claims) error {
	now := a.now()
	if now.After(time.Unix(c.Expiry, 0).Add(Leeway)) {
		return ErrExpired
	}
	if now.Before(time.Unix(c.NotBefore, 0).Add(-Leeway)) {
		return ErrNotYetValid
	}
	return nil
}
