package tokenauth

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dauth "github.com/distribution/distribution/v3/registry/auth"
	_ "github.com/distribution/distribution/v3/registry/auth/token" // registers "token"
)

type env struct {
	t       *testing.T
	clock   *clock
	backend *fakeBackend
	auth    *Authority
	srv     *httptest.Server
	mu      sync.Mutex
	events  []LoginEvent
}

func newEnv(t *testing.T, lim LimiterConfig) *env {
	e := &env{t: t, clock: newClock(), backend: newFakeBackend()}
	keys := mustKeys(t, ecKey(t))
	e.auth = authority(keys, e.clock)
	h := NewHandler(Options{Keys: keys, Issuer: "gaia-token", Service: "gaia-registry", TTL: 5 * time.Minute,
		Backend: e.backend, Limiter: NewLimiter(lim, e.clock.Now), Now: e.clock.Now,
		Recorder: func(ev LoginEvent) { e.mu.Lock(); e.events = append(e.events, ev); e.mu.Unlock() }})
	e.srv = httptest.NewServer(h)
	t.Cleanup(e.srv.Close)
	return e
}

type answer struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (e *env) do(req *http.Request) answer {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var a answer
	a.status, a.header = resp.StatusCode, resp.Header
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	a.raw = sb.String()
	json.Unmarshal([]byte(a.raw), &a.body)
	return a
}

func (e *env) get(user, pass string, q url.Values) answer {
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/auth/token?"+q.Encode(), nil)
	if user != "" || pass != "" {
		req.SetBasicAuth(user, pass)
	}
	return e.do(req)
}

func (e *env) post(form url.Values) answer {
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/auth/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return e.do(req)
}

// claims verifies a token of an answer and returns its access as strings.
func (e *env) claims(tok any) (string, []string) {
	s, _ := tok.(string)
	c, err := e.auth.Verify(s)
	if err != nil {
		e.t.Fatalf("token does not verify: %v", err)
	}
	var out []string
	for _, a := range c.Access {
		out = append(out, a.String())
	}
	return c.Subject, out
}

func errCode(a answer) string {
	errs, _ := a.body["errors"].([]any)
	if len(errs) == 0 {
		return ""
	}
	m, _ := errs[0].(map[string]any)
	s, _ := m["code"].(string)
	return s
}

func TestGetFlow(t *testing.T) {
	e := newEnv(t, LimiterConfig{})
	q := url.Values{"service": {"gaia-registry"}, "scope": {"repository:alice/app:pull,push", "repository:public/base:pull,push"}}

	// Anonymous: the backend gives pull on public/ only.
	a := e.get("", "", q)
	if a.status != 200 {
		t.Fatalf("anonymous: %d %s", a.status, a.raw)
	}
	if sub, acc := e.claims(a.body["token"]); sub != "" || strings.Join(acc, " ") != "repository:public/base:pull" {
		t.Errorf("anonymous token: sub %q access %v", sub, acc)
	}
	if a.body["refresh_token"] != nil {
		t.Error("anonymous got a refresh token")
	}

	// alice: her own repository fully, and the public one's pull only.
	q.Set("offline_token", "true")
	a = e.get("alice", "alice-pw", q)
	if a.status != 200 {
		t.Fatalf("alice: %d %s", a.status, a.raw)
	}
	if a.body["token"] != a.body["access_token"] || a.body["expires_in"] != float64(300) {
		t.Errorf("token %v access_token %v expires_in %v", a.body["token"], a.body["access_token"], a.body["expires_in"])
	}
	if it, _ := a.body["issued_at"].(string); it != e.clock.Now().UTC().Format(time.RFC3339) {
		t.Errorf("issued_at %q", it)
	}
	if sub, acc := e.claims(a.body["token"]); sub != "alice" || strings.Join(acc, " ") != "repository:alice/app:pull,push repository:public/base:pull" {
		t.Errorf("alice token: sub %q access %v", sub, acc)
	}
	rt, _ := a.body["refresh_token"].(string)
	if c, err := e.auth.VerifyRefresh(rt); err != nil || c.Subject != "alice" {
		t.Errorf("refresh token: %v, %v", c, err)
	}
	if a.header.Get("Cache-Control") != "no-store" {
		t.Error("token answer may be cached")
	}
	// Basic with empty user and password is anonymous (skopeo).
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/auth/token?"+q.Encode(), nil)
	req.SetBasicAuth("", "")
	if a = e.do(req); a.status != 200 || a.body["refresh_token"] != nil {
		t.Errorf("empty Basic: %d %s", a.status, a.raw)
	}
	if sub, acc := e.claims(a.body["token"]); sub != "" || len(acc) != 1 {
		t.Errorf("empty Basic token: sub %q access %v", sub, acc)
	}

	// No scope: a token without access (docker login).
	a = e.get("alice", "alice-pw", url.Values{"service": {"gaia-registry"}})
	if _, acc := e.claims(a.body["token"]); a.status != 200 || len(acc) != 0 {
		t.Errorf("login without scope: %d access %v", a.status, acc)
	}
	if ev := e.events[len(e.events)-1]; ev.Action != "login" || ev.User != "alice" || ev.Subject != "alice" || ev.RemoteAddr != "127.0.0.1" {
		t.Errorf("last event %+v", ev)
	}
}

func TestGetErrors(t *testing.T) {
	e := newEnv(t, LimiterConfig{})
	for _, tc := range []struct {
		name       string
		user, pass string
		q          url.Values
		status     int
		code       string
	}{
		{"wrong service", "", "", url.Values{"service": {"other"}}, 400, "UNSUPPORTED"},
		{"no service", "", "", url.Values{}, 400, "UNSUPPORTED"},
		{"malformed scope", "", "", url.Values{"service": {"gaia-registry"}, "scope": {"repository:Bad:pull"}}, 400, "UNSUPPORTED"},
		{"scope without actions", "", "", url.Values{"service": {"gaia-registry"}, "scope": {"repository:a"}}, 400, "UNSUPPORTED"},
		{"wrong password", "alice", "nope", url.Values{"service": {"gaia-registry"}}, 401, "UNAUTHORIZED"},
		{"unknown user", "mallory", "x", url.Values{"service": {"gaia-registry"}}, 401, "UNAUTHORIZED"},
	} {
		a := e.get(tc.user, tc.pass, tc.q)
		if a.status != tc.status || errCode(a) != tc.code {
			t.Errorf("%s: %d %s; want %d %s", tc.name, a.status, a.raw, tc.status, tc.code)
		}
		if tc.status == 401 && a.header.Get("WWW-Authenticate") != `Basic realm="gaia-registry"` {
			t.Errorf("%s: WWW-Authenticate %q", tc.name, a.header.Get("WWW-Authenticate"))
		}
	}
	if len(e.events) != 2 || e.events[0].Action != "login_failed" || e.events[0].User != "alice" || e.events[1].User != "mallory" {
		t.Errorf("events %+v", e.events)
	}
	for _, ev := range e.events {
		if strings.Contains(ev.Reason, "nope") {
			t.Errorf("event carries the password: %+v", ev)
		}
	}
}

func TestPostFlows(t *testing.T) {
	e := newEnv(t, LimiterConfig{})
	a := e.post(url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"}, "client_id": {"containerd-client"},
		"service": {"gaia-registry"}, "scope": {"repository:alice/app:pull,push repository:bob/app:pull"}, "access_type": {"offline"}})
	if a.status != 200 {
		t.Fatalf("password grant: %d %s", a.status, a.raw)
	}
	if a.body["scope"] != "repository:alice/app:pull,push" || a.body["expires_in"] != float64(300) || a.body["issued_at"] == nil {
		t.Errorf("password grant answer %s", a.raw)
	}
	e.claims(a.body["access_token"])
	rt, _ := a.body["refresh_token"].(string)
	if rt == "" {
		t.Fatal("no refresh token for access_type=offline")
	}

	refresh := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {"docker"}, "service": {"gaia-registry"}, "scope": {"repository:alice/app:pull"}}
	a = e.post(refresh)
	if a.status != 200 || a.body["scope"] != "repository:alice/app:pull" || a.body["refresh_token"] != rt {
		t.Fatalf("refresh grant: %d %s", a.status, a.raw)
	}
	if sub, _ := e.claims(a.body["access_token"]); sub != "alice" {
		t.Errorf("refreshed token for %q", sub)
	}

	// An access token is no refresh token.
	access, _ := a.body["access_token"].(string)
	asRefresh := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {access}, "service": {"gaia-registry"}}
	if a = e.post(asRefresh); a.status != 401 || a.body["error"] != "invalid_grant" {
		t.Errorf("access token as refresh token: %d %s", a.status, a.raw)
	}

	// alice deleted: her refresh token no longer works.
	e.backend.mu.Lock()
	e.backend.deleted["alice"] = true
	e.backend.mu.Unlock()
	if a = e.post(refresh); a.status != 401 || a.body["error"] != "invalid_grant" || errCode(a) != "UNAUTHORIZED" {
		t.Errorf("refresh of a deleted subject: %d %s", a.status, a.raw)
	}
	if ev := e.events[len(e.events)-1]; ev.Action != "login_failed" || ev.User != "alice" {
		t.Errorf("last event %+v", ev)
	}

	for _, tc := range []struct {
		name   string
		form   url.Values
		status int
		oauth  string
	}{
		{"wrong password", url.Values{"grant_type": {"password"}, "username": {"bob"}, "password": {"x"}, "service": {"gaia-registry"}}, 401, "invalid_grant"},
		{"no password", url.Values{"grant_type": {"password"}, "username": {"bob"}, "service": {"gaia-registry"}}, 400, "invalid_request"},
		{"no grant_type", url.Values{"service": {"gaia-registry"}}, 400, "invalid_request"},
		{"client_credentials", url.Values{"grant_type": {"client_credentials"}, "service": {"gaia-registry"}}, 400, "unsupported_grant_type"},
		{"wrong service", url.Values{"grant_type": {"password"}, "username": {"bob"}, "password": {"bob-pw"}, "service": {"x"}}, 400, "invalid_request"},
		{"bad scope", url.Values{"grant_type": {"password"}, "username": {"bob"}, "password": {"bob-pw"}, "service": {"gaia-registry"}, "scope": {"repository:x"}}, 400, "invalid_scope"},
		{"garbage refresh token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"x.y.z"}, "service": {"gaia-registry"}}, 401, "invalid_grant"},
	} {
		if a := e.post(tc.form); a.status != tc.status || a.body["error"] != tc.oauth {
			t.Errorf("%s: %d %s; want %d %s", tc.name, a.status, a.raw, tc.status, tc.oauth)
		}
	}
}

// TestLimiterIsolation: a flood of wrong passwords for one user is cut
// off before the backend while another user logs in as usual.
func TestLimiterIsolation(t *testing.T) {
	e := newEnv(t, LimiterConfig{PairFailures: 5, AddressFailures: 1000, Window: time.Minute})
	q := url.Values{"service": {"gaia-registry"}}
	for i := 0; i < 5; i++ {
		if a := e.get("alice", "guess", q); a.status != 401 {
			t.Fatalf("guess %d: %d", i+1, a.status)
		}
	}
	before := e.backend.authN.Load()
	for i := 0; i < 50; i++ {
		a := e.get("alice", "guess", q)
		if a.status != 429 || errCode(a) != "TOOMANYREQUESTS" || a.header.Get("Retry-After") != "12" {
			t.Fatalf("flood %d: %d %s Retry-After %q", i, a.status, a.raw, a.header.Get("Retry-After"))
		}
	}
	// Even the right password waits: the limiter answers before checking.
	if a := e.get("alice", "alice-pw", q); a.status != 429 {
		t.Errorf("alice limited, right password: %d", a.status)
	}
	if a := e.post(url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"guess"}, "service": {"gaia-registry"}}); a.status != 429 {
		t.Errorf("alice limited, POST: %d %s", a.status, a.raw)
	}
	if n := e.backend.authN.Load() - before; n != 0 {
		t.Errorf("backend asked %d times while limited", n)
	}
	if a := e.get("bob", "bob-pw", q); a.status != 200 {
		t.Errorf("bob during alice's flood: %d %s", a.status, a.raw)
	}
	e.clock.Add(12 * time.Second)
	if a := e.get("alice", "alice-pw", q); a.status != 200 {
		t.Errorf("alice after Retry-After: %d %s", a.status, a.raw)
	}
	if len(e.events) != 7 { // 5 failures, bob's and alice's logins; limited attempts are not events
		t.Errorf("%d events; want 7", len(e.events))
	}
}

func TestVerifier(t *testing.T) {
	c := newClock()
	a := authority(mustKeys(t, ecKey(t)), c)
	v := &Verifier{Authority: a, Realm: "https://reg.example/auth/token"}
	tok, _, _ := a.Issue("alice", []Access{{Type: "repository", Name: "team/app", Actions: []string{"pull"}}}, time.Minute)
	refresh, _ := a.IssueRefresh("alice", time.Hour)
	push := []Access{{Type: "repository", Name: "team/app", Actions: []string{"pull"}}, {Type: "repository", Name: "team/app", Actions: []string{"push"}}}
	const base = `Bearer realm="https://reg.example/auth/token",service="gaia-registry",scope="repository:team/app:pull,push"`
	for _, tc := range []struct {
		name, auth string
		required   []Access
		header     string
		code       string
	}{
		{"no token", "", push, base, "UNAUTHORIZED"},
		{"basic", "Basic YTpi", push, base, "UNAUTHORIZED"},
		{"insufficient", "Bearer " + tok, push, base + `,error="insufficient_scope"`, "DENIED"},
		{"garbage", "Bearer x", push, base + `,error="invalid_token"`, "UNAUTHORIZED"},
		{"refresh token", "Bearer " + refresh, push, base + `,error="invalid_token"`, "UNAUTHORIZED"},
		{"no scope needed, no token", "", nil, `Bearer realm="https://reg.example/auth/token",service="gaia-registry"`, "UNAUTHORIZED"},
	} {
		r := httptest.NewRequest(http.MethodPost, "/v2/team/app/blobs/uploads/", nil)
		if tc.auth != "" {
			r.Header.Set("Authorization", tc.auth)
		}
		_, _, err := v.Authorize(r, tc.required)
		ch, ok := err.(*Challenge)
		if !ok {
			t.Errorf("%s: err %v; want a *Challenge", tc.name, err)
			continue
		}
		w := httptest.NewRecorder()
		ch.SetHeaders(r, w)
		if got := w.Header().Get("WWW-Authenticate"); got != tc.header || ch.Code().String() != tc.code || ch.Status() != ch.Code().Descriptor().HTTPStatusCode {
			t.Errorf("%s: %q %s %d; want %q %s", tc.name, got, ch.Code(), ch.Status(), tc.header, tc.code)
		}
	}
	r := httptest.NewRequest(http.MethodGet, "/v2/team/app/manifests/latest", nil)
	r.Header.Set("Authorization", "bearer "+tok)
	sub, granted, err := v.Authorize(r, push[:1])
	if err != nil || sub != "alice" || len(granted) != 1 {
		t.Errorf("pull with a pull token: %q %v %v", sub, granted, err)
	}
	// As a distribution AccessController.
	g, err := v.Authorized(r, dauth.Access{Resource: dauth.Resource{Type: "repository", Name: "team/app"}, Action: "pull"})
	if err != nil || g.User.Name != "alice" || len(g.Resources) != 1 || g.Resources[0].Name != "team/app" {
		t.Errorf("Authorized = %+v, %v", g, err)
	}
	if _, err := v.Authorized(r, dauth.Access{Resource: dauth.Resource{Type: "repository", Name: "team/app"}, Action: "push"}); !isChallenge(err) {
		t.Errorf("Authorized push: %v; want a challenge", err)
	}
}

func isChallenge(err error) bool {
	_, ok := err.(dauth.Challenge)
	return ok
}

// TestDistributionInterop: distribution's own token access controller,
// given our JWKS, accepts our access tokens and refuses our refresh
// tokens: an external stock registry can use this token service.
func TestDistributionInterop(t *testing.T) {
	e := newEnv(t, LimiterConfig{})
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/auth/jwks", nil)
	jwks := e.do(req)
	if jwks.status != 200 {
		t.Fatalf("GET /auth/jwks: %d", jwks.status)
	}
	path := filepath.Join(t.TempDir(), "jwks.json")
	os.WriteFile(path, []byte(jwks.raw), 0o600)
	ac, err := dauth.GetAccessController("token", map[string]any{
		"realm": e.srv.URL + "/auth/token", "issuer": "gaia-token", "service": "gaia-registry", "jwks": path,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Real time here: distribution's controller reads the wall clock.
	e.clock.mu.Lock()
	e.clock.t = time.Now()
	e.clock.mu.Unlock()
	a := e.get("alice", "alice-pw", url.Values{"service": {"gaia-registry"}, "scope": {"repository:alice/app:pull,push"}, "offline_token": {"true"}})
	tok, _ := a.body["token"].(string)
	r := httptest.NewRequest(http.MethodPut, "/v2/alice/app/manifests/v1", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	res := dauth.Resource{Type: "repository", Name: "alice/app"}
	g, err := ac.Authorized(r, dauth.Access{Resource: res, Action: "pull"}, dauth.Access{Resource: res, Action: "push"})
	if err != nil || g.User.Name != "alice" {
		t.Fatalf("distribution refused our token: %v", err)
	}
	if _, err := ac.Authorized(r, dauth.Access{Resource: res, Action: "delete"}); !isChallenge(err) {
		t.Errorf("distribution granted delete: %v", err)
	}
	rt, _ := a.body["refresh_token"].(string)
	r.Header.Set("Authorization", "Bearer "+rt)
	// Without any access required (GET /v2/) only the audience tells
	// a refresh token from an access token.
	if _, err := ac.Authorized(r); !isChallenge(err) {
		t.Errorf("distribution accepted a refresh token as an access token: %v", err)
	}
}

func BenchmarkIssue(b *testing.B) {
	a := &Authority{Keys: mustKeys(b, ecKey(b)), Issuer: "gaia-token", Service: "gaia-registry"}
	for b.Loop() {
		if _, _, err := a.Issue("alice", pullTeam, 5*time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	a := &Authority{Keys: mustKeys(b, ecKey(b)), Issuer: "gaia-token", Service: "gaia-registry"}
	tok, _, _ := a.Issue("alice", pullTeam, 5*time.Minute)
	for b.Loop() {
		if _, err := a.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// TestVerifierCache: a token seen before is not parsed and verified again
// (the signature check is most of a manifest GET's cost), yet a cached
// token still expires on time, a tampered copy of it is still refused,
// and the cache stays bounded.
func TestVerifierCache(t *testing.T) {
	c := newClock()
	a := authority(mustKeys(t, ecKey(t)), c)
	v := &Verifier{Authority: a, Realm: "https://reg.example/auth/token"}
	tok, _, _ := a.Issue("alice", pullTeam, time.Minute)
	req := func(tok string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v2/team/app/manifests/latest", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		return r
	}
	r := req(tok)
	if sub, _, err := v.Authorize(r, pullTeam); err != nil || sub != "alice" {
		t.Fatalf("first use: %q %v", sub, err)
	}
	// Verifying an ES256 JWT allocates about a hundred times (parsing
	// header and claims); a cache hit only the merged required access.
	if n := testing.AllocsPerRun(50, func() {
		if _, _, err := v.Authorize(r, pullTeam); err != nil {
			t.Fatal(err)
		}
	}); n > 10 {
		t.Errorf("a token seen before: %.0f allocations per request; want it served from the cache (≤ 10)", n)
	}

	parts := strings.Split(tok, ".")
	sig := []byte(parts[2])
	sig[5] = map[bool]byte{true: 'B', false: 'A'}[sig[5] == 'A'] // another base64url digit
	forged := parts[0] + "." + parts[1] + "." + string(sig)
	if _, _, err := v.Authorize(req(forged), pullTeam); !errors.Is(err, ErrSignature) {
		t.Errorf("a tampered copy of a cached token: %v; want %v", err, ErrSignature)
	}

	c.Add(time.Minute + Leeway + time.Second)
	if _, _, err := v.Authorize(r, pullTeam); !errors.Is(err, ErrExpired) {
		t.Errorf("a cached token after its expiry: %v; want %v", err, ErrExpired)
	}

	defer func(n int) { maxVerified = n }(maxVerified)
	maxVerified = 3
	for i := range 10 {
		tok, _, _ := a.Issue(fmt.Sprint("user-", i), pullTeam, time.Minute)
		if _, _, err := v.Authorize(req(tok), pullTeam); err != nil {
			t.Fatal(err)
		}
		if len(v.verified) > maxVerified {
			t.Fatalf("%d tokens cached; want at most %d", len(v.verified), maxVerified)
		}
	}
}
