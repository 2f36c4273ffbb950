package tokenauth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

func authority(keys *Keys, c *clock) *Authority {
	return &Authority{Keys: keys, Issuer: "gaia-token", Service: "gaia-registry", Now: c.Now}
}

var pullTeam = []Access{{Type: "repository", Name: "team/app", Actions: []string{"pull"}}}

func TestVerifyRefusals(t *testing.T) {
	c := newClock()
	a := authority(mustKeys(t, ecKey(t)), c)
	tok, _, err := a.Issue("alice", pullTeam, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.Verify(tok)
	if err != nil || got.Subject != "alice" || len(got.Access) != 1 || got.Access[0].Name != "team/app" {
		t.Fatalf("Verify = %+v, %v", got, err)
	}

	parts := strings.Split(tok, ".")
	b64 := base64.RawURLEncoding
	payload, _ := b64.DecodeString(parts[1])
	tampered := parts[0] + "." + b64.EncodeToString([]byte(strings.Replace(string(payload), `"pull"`, `"push"`, 1))) + "." + parts[2]
	header, _ := b64.DecodeString(parts[0])
	none := b64.EncodeToString([]byte(strings.Replace(string(header), `"ES256"`, `"none"`, 1))) + "." + parts[1] + "."
	hs := b64.EncodeToString([]byte(strings.Replace(string(header), `"ES256"`, `"HS256"`, 1))) + "." + parts[1] + "." + parts[2]

	other := authority(mustKeys(t, ecKey(t)), c) // same names, another key
	unknown, _, _ := other.Issue("alice", pullTeam, 5*time.Minute)
	wrongAud := *a
	wrongAud.Service = "another-registry"
	audTok, _, _ := wrongAud.Issue("alice", pullTeam, 5*time.Minute)
	wrongIss := *a
	wrongIss.Issuer = "someone-else"
	issTok, _, _ := wrongIss.Issue("alice", pullTeam, 5*time.Minute)
	refresh, _ := a.IssueRefresh("alice", time.Hour)

	for _, tc := range []struct {
		name, tok string
		want      error
	}{
		{"tampered payload", tampered, ErrSignature},
		{"alg none", none, ErrAlgorithm},
		{"alg HS256 with our kid", hs, ErrAlgorithm},
		{"unknown key", unknown, ErrUnknownKey},
		{"wrong audience", audTok, ErrAudience},
		{"wrong issuer", issTok, ErrIssuer},
		{"refresh token as access token", refresh, ErrTokenType},
		{"garbage", "not-a-token", ErrMalformed},
		{"bad header", "e30K!.x.y", ErrMalformed},
	} {
		if _, err := a.Verify(tc.tok); !errors.Is(err, tc.want) {
			t.Errorf("%s: Verify err = %v; want %v", tc.name, err, tc.want)
		}
	}
	if _, err := a.VerifyRefresh(tok); !errors.Is(err, ErrTokenType) {
		t.Errorf("access token as refresh token: err = %v; want %v", err, ErrTokenType)
	}
	if _, err := a.VerifyRefresh(refresh); err != nil {
		t.Errorf("VerifyRefresh: %v", err)
	}

	// Validity times, with Leeway.
	c.Add(5*time.Minute + Leeway)
	if _, err := a.Verify(tok); err != nil {
		t.Errorf("within leeway after exp: %v", err)
	}
	c.Add(time.Second)
	if _, err := a.Verify(tok); !errors.Is(err, ErrExpired) {
		t.Errorf("after exp+leeway: err = %v; want %v", err, ErrExpired)
	}
	early, _, _ := a.Issue("alice", pullTeam, 5*time.Minute)
	c.Add(-Leeway - time.Second)
	if _, err := a.Verify(early); !errors.Is(err, ErrNotYetValid) {
		t.Errorf("before nbf-leeway: err = %v; want %v", err, ErrNotYetValid)
	}
}

func TestKeyRotation(t *testing.T) {
	c := newClock()
	oldK, newK := ecKey(t), ecKey(t)
	byOld, _, _ := authority(mustKeys(t, oldK), c).Issue("alice", pullTeam, time.Minute)
	rolling := authority(mustKeys(t, newK, oldK), c)
	byNew, _, _ := rolling.Issue("alice", pullTeam, time.Minute)
	for name, tok := range map[string]string{"old key": byOld, "new key": byNew} {
		if _, err := rolling.Verify(tok); err != nil {
			t.Errorf("during rollover, token by the %s: %v", name, err)
		}
	}
	after := authority(mustKeys(t, newK), c)
	if _, err := after.Verify(byOld); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("old key removed: err = %v; want %v", err, ErrUnknownKey)
	}
	if _, err := after.Verify(byNew); err != nil {
		t.Errorf("new key alone: %v", err)
	}
	// The second key verifies but does not sign.
	var h struct{ Kid string }
	hb, _ := base64.RawURLEncoding.DecodeString(strings.Split(byNew, ".")[0])
	json.Unmarshal(hb, &h)
	if h.Kid != rolling.Keys.KeyID() || h.Kid == mustKeys(t, oldK).KeyID() {
		t.Errorf("signed with kid %q; want the first key's %q", h.Kid, rolling.Keys.KeyID())
	}
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadKeys(t *testing.T) {
	dir := t.TempDir()
	ec := ecKey(t)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecPKCS8, _ := x509.MarshalPKCS8PrivateKey(ec)
	ecSEC1, _ := x509.MarshalECPrivateKey(ecKey(t))
	rsaPKCS8, _ := x509.MarshalPKCS8PrivateKey(rk)
	rsaPKCS1 := x509.MarshalPKCS1PrivateKey(func() *rsa.PrivateKey { k, _ := rsa.GenerateKey(rand.Reader, 2048); return k }())
	gen, err := GenerateKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	genPath := filepath.Join(dir, "gen.pem")
	os.WriteFile(genPath, gen, 0o600)
	paths := []string{
		writePEM(t, dir, "ec8.pem", "PRIVATE KEY", ecPKCS8),
		writePEM(t, dir, "sec1.pem", "EC PRIVATE KEY", ecSEC1),
		writePEM(t, dir, "rsa8.pem", "PRIVATE KEY", rsaPKCS8),
		writePEM(t, dir, "rsa1.pem", "RSA PRIVATE KEY", rsaPKCS1),
		genPath,
	}
	keys, err := LoadKeys(paths)
	if err != nil {
		t.Fatal(err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(keys.JWKS(), &set); err != nil || len(set.Keys) != len(paths) {
		t.Fatalf("JWKS = %d keys, %v; want %d", len(set.Keys), err, len(paths))
	}
	for _, k := range set.Keys {
		if !k.IsPublic() {
			t.Errorf("JWKS key %s is not public", k.KeyID)
		}
		// kid is the key's RFC 7638 thumbprint.
		tp, _ := k.Thumbprint(crypto.SHA256)
		if k.KeyID != base64.RawURLEncoding.EncodeToString(tp) {
			t.Errorf("kid %s is not the thumbprint %s", k.KeyID, base64.RawURLEncoding.EncodeToString(tp))
		}
	}
	if set.Keys[2].Algorithm != "RS256" || set.Keys[0].Algorithm != "ES256" {
		t.Errorf("algorithms %s, %s; want ES256, RS256", set.Keys[0].Algorithm, set.Keys[2].Algorithm)
	}
	// An RSA key signs tokens as well.
	c := newClock()
	rsaFirst, err := LoadKeys([]string{paths[3], paths[0]})
	if err != nil {
		t.Fatal(err)
	}
	a := authority(rsaFirst, c)
	tok, _, _ := a.Issue("alice", nil, time.Minute)
	if _, err := a.Verify(tok); err != nil {
		t.Errorf("RS256 token: %v", err)
	}

	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("not a key"), 0o600)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallPath := writePEM(t, dir, "small.pem", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(small))
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p224DER, _ := x509.MarshalPKCS8PrivateKey(p224)
	p224Path := writePEM(t, dir, "p224.pem", "PRIVATE KEY", p224DER)
	for _, p := range []string{bad, smallPath, p224Path, filepath.Join(dir, "missing.pem")} {
		if _, err := LoadKeys([]string{paths[0], p}); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("LoadKeys(%s) err = %v; want an error naming the file", p, err)
		}
	}
	if _, err := LoadKeys([]string{paths[0], paths[0]}); err == nil {
		t.Error("the same key twice: no error")
	}
}

func TestScopes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // Access.String(), "" = refused
	}{
		{"repository:team/app:pull,push", "repository:team/app:pull,push"},
		{"repository:app:pull", "repository:app:pull"},
		{"repository(plugin):team/app:pull", "repository:team/app:pull"},
		{"registry:catalog:*", "registry:catalog:*"},
		{"repository:team/app:pull,pull", "repository:team/app:pull"},
		{"repository:a/b/c:delete", "repository:a/b/c:delete"},
		{"repository:localhost:5000/app:pull", ""}, // another registry's name
		{"repository:Team/App:pull", ""},
		{"repository:team/app", ""},
		{"repository::pull", ""},
		{"repository:team/app:", ""},
		{"repository:team/app:pull,,push", ""},
		{"repository:team/app:PULL", ""},
		{"Repo:team/app:pull", ""},
		{"repository(:team/app:pull", ""},
		{"pull", ""},
	} {
		a, err := ParseScope(tc.in)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("ParseScope(%q) = %v; want an error", tc.in, a)
		case tc.want != "" && (err != nil || a.String() != tc.want):
			t.Errorf("ParseScope(%q) = %v, %v; want %s", tc.in, a, err, tc.want)
		}
	}
	got, err := ParseScopes([]string{"repository:a:pull repository:b:push", "", "repository:a:push"})
	if err != nil || len(got) != 2 || got[0].String() != "repository:a:pull,push" || got[1].String() != "repository:b:push" {
		t.Errorf("ParseScopes = %v, %v", got, err)
	}
}

func TestLimiter(t *testing.T) {
	c := newClock()
	l := NewLimiter(LimiterConfig{PairFailures: 3, AddressFailures: 5, Window: time.Minute, MaxKeys: 50}, c.Now)
	for i := 0; i < 3; i++ {
		if _, ok := l.Allow("alice", "10.0.0.1"); !ok {
			t.Fatalf("attempt %d refused", i+1)
		}
		l.Fail("alice", "10.0.0.1")
	}
	retry, ok := l.Allow("alice", "10.0.0.1")
	if ok || retry != 20*time.Second {
		t.Fatalf("after 3 failures: Allow = %v, %v; want refused, retry after 20s", retry, ok)
	}
	if _, ok := l.Allow("bob", "10.0.0.1"); !ok {
		t.Error("another user from the same address refused")
	}
	if _, ok := l.Allow("alice", "10.0.0.2"); !ok {
		t.Error("the same user from another address refused")
	}
	c.Add(20 * time.Second)
	if _, ok := l.Allow("alice", "10.0.0.1"); !ok {
		t.Error("still refused after Retry-After")
	}
	// The address's own allowance: 5 failures whatever the user.
	// (2 left after alice's 3, +1.67 refilled in 20s: 3 more empty it.)
	l.Fail("bob", "10.0.0.1")
	l.Fail("carol", "10.0.0.1")
	l.Fail("erin", "10.0.0.1")
	if _, ok := l.Allow("dave", "10.0.0.1"); ok {
		t.Error("address with 5 failures: a new user still allowed")
	}
	if _, ok := l.Allow("dave", "10.0.0.3"); !ok {
		t.Error("another address refused")
	}
	// Bounded memory.
	for i := 0; i < 200; i++ {
		l.Fail("u", "10.1.0."+string(rune('a'+i%26))+string(rune('a'+i/26)))
		if n := l.tracked(); n > 50 {
			t.Fatalf("tracking %d keys; cap 50", n)
		}
	}
}
