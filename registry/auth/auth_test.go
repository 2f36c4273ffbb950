package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/auth/token"
	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/bcrypt"

	"github.com/gaia-registry/gaia/registry/api"
	"github.com/gaia-registry/gaia/registry/iam/ldap"
	"github.com/gaia-registry/gaia/registry/tokenauth"
)

const digest = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b"

func TestRequiredAccess(t *testing.T) {
	for _, tc := range []struct {
		method, target string
		want           []string // type:name:action
	}{
		{"GET", "/v2/", nil},
		{"HEAD", "/v2", nil},
		{"POST", "/v2/", nil},
		{"GET", "/v2/_catalog?n=10", []string{"registry:catalog:*"}},
		{"GET", "/v2/library/ubuntu/manifests/latest", []string{"repository:library/ubuntu:pull"}},
		{"HEAD", "/v2/a/b/c/blobs/" + digest, []string{"repository:a/b/c:pull"}},
		{"GET", "/v2/team/app/tags/list?n=5&last=v1", []string{"repository:team/app:pull"}},
		{"GET", "/v2/team/app/referrers/" + digest + "?artifactType=x", []string{"repository:team/app:pull"}},
		{"PUT", "/v2/team/app/manifests/v1", []string{"repository:team/app:pull", "repository:team/app:push"}},
		{"DELETE", "/v2/team/app/manifests/" + digest, []string{"repository:team/app:delete"}},
		{"DELETE", "/v2/team/app/blobs/" + digest, []string{"repository:team/app:delete"}},
		{"POST", "/v2/team/app/blobs/uploads/", []string{"repository:team/app:pull", "repository:team/app:push"}},
		{"PATCH", "/v2/team/app/blobs/uploads/3f2a-11", []string{"repository:team/app:pull", "repository:team/app:push"}},
		{"PUT", "/v2/team/app/blobs/uploads/3f2a-11?digest=" + digest, []string{"repository:team/app:pull", "repository:team/app:push"}},
		{"GET", "/v2/team/app/blobs/uploads/3f2a-11", []string{"repository:team/app:pull"}},
		{"DELETE", "/v2/team/app/blobs/uploads/3f2a-11", []string{"repository:team/app:delete"}},
		// Names whose components are route words.
		{"GET", "/v2/blobs/manifests/manifests/latest", []string{"repository:blobs/manifests:pull"}},
		{"POST", "/v2/x/blobs/blobs/uploads/", []string{"repository:x/blobs:pull", "repository:x/blobs:push"}},
		{"PATCH", "/v2/uploads/blobs/uploads/id", []string{"repository:uploads:pull", "repository:uploads:push"}},
		{"GET", "/v2/tags/tags/list", []string{"repository:tags:pull"}},
		{"GET", "/v2/tags/referrers/" + digest, []string{"repository:tags:pull"}},
		// Mounting needs pull on the source too.
		{"POST", "/v2/team/app/blobs/uploads/?mount=" + digest + "&from=other/base", []string{
			"repository:team/app:pull", "repository:team/app:push", "repository:other/base:pull"}},
		// Unknown routes need authentication only (the handler refuses
		// them); unexpected methods need push.
		{"GET", "/v2/team/app/whatever", nil},
		{"OPTIONS", "/v2/team/app/manifests/v1", []string{"repository:team/app:pull", "repository:team/app:push"}},
		// Paths are read as the handler reads them: not cleaned.
		{"GET", "/v2/team/../_catalog", nil},
		{"GET", "/v2/_catalog/", nil},
		{"GET", "/v2/team/app/manifests/v1/", nil},
		{"GET", "/v2/team//app/./manifests/v1", []string{"repository:team//app/.:pull"}},
		{"GET", "/v2/team/app/../secret/manifests/v1", []string{"repository:team/app/../secret:pull"}},
	} {
		var got []string
		for _, a := range requiredAccess(httptest.NewRequest(tc.method, tc.target, nil)) {
			got = append(got, a.Type+":"+a.Name+":"+a.Action)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s %s: got %q, want %q", tc.method, tc.target, got, tc.want)
		}
	}
}

// okHandler stands for the registry API: 200 with the user in X-User.
var okHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-User", UserFromContext(r.Context()))
})

func serve(h http.Handler, method, target, authorization string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	if authorization != "" {
		r.Header.Set("Authorization", authorization)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

type errorBody struct {
	Errors []struct {
		Code    string          `json:"code"`
		Message string          `json:"message"`
		Detail  json.RawMessage `json:"detail"`
	} `json:"errors"`
}

// checkError checks a refusal: status, error code in the spec's JSON
// shape, and that the WWW-Authenticate challenge starts with challenge.
func checkError(t *testing.T, w *httptest.ResponseRecorder, status int, code, challenge string) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d (body %s)", w.Code, status, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var body errorBody
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %s: %v", w.Body, err)
	}
	if len(body.Errors) != 1 || body.Errors[0].Code != code || body.Errors[0].Message == "" {
		t.Fatalf("body %s, want one %s error with a message", w.Body, code)
	}
	if code == "UNAUTHORIZED" && len(body.Errors[0].Detail) == 0 {
		t.Errorf("body %s has no detail", w.Body)
	}
	if got := w.Header().Get("WWW-Authenticate"); !strings.HasPrefix(got, challenge) || (challenge == "") != (got == "") {
		t.Errorf("WWW-Authenticate %q, want prefix %q", got, challenge)
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeHtpasswd(t *testing.T, users ...string) string {
	t.Helper()
	content := "# test users\n\n"
	for i := 0; i < len(users); i += 2 {
		hash, err := bcrypt.GenerateFromPassword([]byte(users[i+1]), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		content += users[i] + ":" + string(hash) + "\n"
	}
	return writeFile(t, "htpasswd", content)
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func newHandler(t *testing.T, cfg Config) http.Handler {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a.Wrap(okHandler)
}

type httpCase struct {
	name, method, target, authorization string
	status                              int    // 200 or the refusal's
	user                                string // on 200
	challenge                           string // WWW-Authenticate prefix on 401
}

func run(t *testing.T, h http.Handler, cases []httpCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := serve(h, tc.method, tc.target, tc.authorization)
			if tc.status != http.StatusOK {
				checkError(t, w, tc.status, "UNAUTHORIZED", tc.challenge)
				return
			}
			if w.Code != http.StatusOK {
				t.Fatalf("status %d, want 200 (WWW-Authenticate %q, body %s)", w.Code, w.Header().Get("WWW-Authenticate"), w.Body)
			}
			if got := w.Header().Get("X-User"); got != tc.user {
				t.Errorf("user %q, want %q", got, tc.user)
			}
		})
	}
}

func TestHtpasswd(t *testing.T) {
	path := writeHtpasswd(t, "alice", "wonderland", "bob", "builder")
	const challenge = `Basic realm="test-realm"`
	for _, anonymous := range []bool{false, true} {
		h := newHandler(t, Config{AnonymousPull: anonymous, Htpasswd: &HtpasswdConfig{Realm: "test-realm", Path: path}})
		// Without credentials, what AnonymousPull decides.
		anon := func(status int) int {
			if anonymous {
				return status
			}
			return http.StatusUnauthorized
		}
		name := map[bool]string{false: "authenticated", true: "anonymouspull"}[anonymous]
		t.Run(name, func(t *testing.T) {
			run(t, h, []httpCase{
				{"login", "GET", "/v2/", basic("alice", "wonderland"), 200, "alice", ""},
				{"pull", "GET", "/v2/team/app/manifests/latest", basic("bob", "builder"), 200, "bob", ""},
				{"push", "POST", "/v2/team/app/blobs/uploads/", basic("alice", "wonderland"), 200, "alice", ""},
				{"mount", "POST", "/v2/team/app/blobs/uploads/?mount=" + digest + "&from=a/b", basic("alice", "wonderland"), 200, "alice", ""},
				{"delete", "DELETE", "/v2/team/app/manifests/" + digest, basic("alice", "wonderland"), 200, "alice", ""},
				{"catalog", "GET", "/v2/_catalog", basic("alice", "wonderland"), 200, "alice", ""},
				{"bad password", "GET", "/v2/", basic("alice", "queen"), 401, "", challenge},
				{"bad password pull", "GET", "/v2/team/app/manifests/latest", basic("alice", "queen"), 401, "", challenge},
				{"unknown user", "GET", "/v2/team/app/manifests/latest", basic("carol", "wonderland"), 401, "", challenge},
				{"bearer", "GET", "/v2/team/app/manifests/latest", "Bearer abc", 401, "", challenge},
				{"no creds login", "GET", "/v2/", "", 401, "", challenge}, // always challenged: docker sends credentials only after a 401 here
				{"no creds pull", "GET", "/v2/team/app/manifests/latest", "", anon(200), "", challenge},
				{"empty basic creds pull", "GET", "/v2/team/app/manifests/latest", basic("", ""), anon(200), "", challenge}, // skopeo --no-creds
				{"empty basic creds push", "POST", "/v2/team/app/blobs/uploads/", basic("", ""), 401, "", challenge},
				{"no creds head blob", "HEAD", "/v2/team/app/blobs/" + digest, "", anon(200), "", challenge},
				{"no creds tags", "GET", "/v2/team/app/tags/list", "", anon(200), "", challenge},
				{"no creds referrers", "GET", "/v2/team/app/referrers/" + digest, "", anon(200), "", challenge},
				{"no creds push", "POST", "/v2/team/app/blobs/uploads/", "", 401, "", challenge},
				{"no creds put", "PUT", "/v2/team/app/manifests/v1", "", 401, "", challenge},
				{"no creds delete", "DELETE", "/v2/team/app/manifests/" + digest, "", 401, "", challenge},
				{"no creds catalog", "GET", "/v2/_catalog", "", 401, "", challenge},
			})
		})
	}
}

// configs/registry-auth.yml parses and its example user works.
func TestExampleConfig(t *testing.T) {
	b, err := os.ReadFile("../../configs/registry-auth.yml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Auth Config `yaml:"auth"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if !doc.Auth.AnonymousPull || doc.Auth.Htpasswd == nil || doc.Auth.Token != nil {
		t.Fatalf("auth: %+v", doc.Auth)
	}
	doc.Auth.Htpasswd.Path = filepath.Join("../..", doc.Auth.Htpasswd.Path) // relative to the repository
	run(t, newHandler(t, doc.Auth), []httpCase{
		{"admin push", "PUT", "/v2/a/manifests/v1", basic("admin", "gaia-admin"), 200, "admin", ""},
		{"anonymous pull", "GET", "/v2/a/manifests/v1", "", 200, "", ""},
		{"anonymous push", "PUT", "/v2/a/manifests/v1", "", 401, "", `Basic realm="gaia-registry"`},
	})
}

// A controller failure that is not a refusal is a 500 without internals.
func TestHtpasswdInternalError(t *testing.T) {
	path := writeHtpasswd(t, "alice", "wonderland")
	h := newHandler(t, Config{Htpasswd: &HtpasswdConfig{Realm: "r", Path: path}})
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	w := serve(h, "GET", "/v2/", basic("alice", "wonderland"))
	checkError(t, w, http.StatusInternalServerError, "UNKNOWN", "")
	if strings.Contains(w.Body.String(), path) {
		t.Errorf("body %s shows the htpasswd path", w.Body)
	}
}

func TestNoAuthConfigured(t *testing.T) {
	h := newHandler(t, Config{AnonymousPull: true})
	run(t, h, []httpCase{
		{"catalog", "GET", "/v2/_catalog", "", 200, "", ""},
		{"push", "PUT", "/v2/a/manifests/v1", "", 200, "", ""},
		{"ignored creds", "DELETE", "/v2/a/manifests/v1", basic("x", "y"), 200, "", ""},
	})
}

// signer is a token server's key with its self-signed certificate.
type signer struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newSigner(t *testing.T) signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "test token signer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return signer{key, cert}
}

func (s signer) pem() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.cert.Raw}))
}

// x5c is the JWT header naming the key by its certificate chain.
func (s signer) x5c() map[string]any {
	return map[string]any{"x5c": []string{base64.StdEncoding.EncodeToString(s.cert.Raw)}}
}

// kid is the JWT header naming the key by ID: for rootcertbundle keys,
// distribution's JWK thumbprint of the certificate's key.
func (s signer) kid() map[string]any {
	return map[string]any{"kid": token.GetJWKThumbprint(s.key.Public())}
}

// sign returns an ES256 JWT in compact serialization.
func (s signer) sign(t *testing.T, header, claims map[string]any) string {
	t.Helper()
	header["alg"], header["typ"] = "ES256", "JWT"
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	input := enc(header) + "." + enc(claims)
	hash := sha256.Sum256([]byte(input))
	r, sv, err := ecdsa.Sign(rand.Reader, s.key, hash[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	sv.FillBytes(sig[32:])
	return "Bearer " + input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// claims are valid claims for user "bob" granting scopes such as
// "repository:team/app:pull,push".
func claims(scopes ...string) map[string]any {
	now := time.Now()
	access := []map[string]any{}
	for _, s := range scopes {
		typ, rest, _ := strings.Cut(s, ":")
		i := strings.LastIndex(rest, ":")
		access = append(access, map[string]any{"type": typ, "name": rest[:i], "actions": strings.Split(rest[i+1:], ",")})
	}
	return map[string]any{
		"iss": "test-issuer", "sub": "bob", "aud": "gaia", "jti": "1",
		"iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(time.Hour).Unix(),
		"access": access,
	}
}

func with(c map[string]any, key string, v any) map[string]any {
	c[key] = v
	return c
}

func TestToken(t *testing.T) {
	s, other := newSigner(t), newSigner(t)
	cfg := TokenConfig{
		Realm: "https://auth.example.test/token", Service: "gaia", Issuer: "test-issuer",
		RootCertBundle: writeFile(t, "bundle.pem", s.pem()),
	}
	const bearer = `Bearer realm="https://auth.example.test/token",service="gaia"`
	const manifest = "/v2/team/app/manifests/v1"
	pull := s.sign(t, s.x5c(), claims("repository:team/app:pull"))
	push := s.sign(t, s.kid(), claims("repository:team/app:pull,push"))

	for _, anonymous := range []bool{false, true} {
		h := newHandler(t, Config{AnonymousPull: anonymous, Token: &cfg})
		anon := func(status int) int {
			if anonymous {
				return status
			}
			return http.StatusUnauthorized
		}
		name := map[bool]string{false: "authenticated", true: "anonymouspull"}[anonymous]
		t.Run(name, func(t *testing.T) {
			run(t, h, []httpCase{
				{"login", "GET", "/v2/", s.sign(t, s.x5c(), claims()), 200, "bob", ""},
				{"pull x5c", "GET", manifest, pull, 200, "bob", ""},
				{"push kid", "PUT", manifest, push, 200, "bob", ""},
				{"pull with push token", "HEAD", "/v2/team/app/blobs/" + digest, push, 200, "bob", ""},
				{"wildcard", "DELETE", manifest, s.sign(t, s.kid(), claims("repository:team/app:*")), 200, "bob", ""},
				{"catalog", "GET", "/v2/_catalog", s.sign(t, s.kid(), claims("registry:catalog:*")), 200, "bob", ""},
				{"mount", "POST", "/v2/team/app/blobs/uploads/?mount=" + digest + "&from=other/base",
					s.sign(t, s.kid(), claims("repository:team/app:pull,push", "repository:other/base:pull")), 200, "bob", ""},
				{"push with pull token", "PUT", manifest, pull, 401, "", bearer + `,scope="repository:team/app:`},
				{"delete with push token", "DELETE", manifest, push, 401, "", bearer + `,scope="repository:team/app:delete",error="insufficient_scope"`},
				{"other repository", "GET", "/v2/team/other/manifests/v1", pull, 401, "", bearer + `,scope="repository:team/other:pull",error="insufficient_scope"`},
				{"catalog without scope", "GET", "/v2/_catalog", pull, 401, "", bearer + `,scope="registry:catalog:*",error="insufficient_scope"`},
				{"mount without source", "POST", "/v2/team/app/blobs/uploads/?mount=" + digest + "&from=other/base", push, 401, "", bearer + `,scope=`},
				{"expired", "GET", manifest, s.sign(t, s.x5c(), with(claims("repository:team/app:pull"), "exp", time.Now().Add(-time.Hour).Unix())),
					401, "", bearer + `,scope="repository:team/app:pull",error="invalid_token"`},
				{"not yet valid", "GET", manifest, s.sign(t, s.x5c(), with(claims("repository:team/app:pull"), "nbf", time.Now().Add(time.Hour).Unix())),
					401, "", bearer + `,scope="repository:team/app:pull",error="invalid_token"`},
				{"wrong issuer", "GET", manifest, s.sign(t, s.x5c(), with(claims("repository:team/app:pull"), "iss", "evil")),
					401, "", bearer + `,scope="repository:team/app:pull",error="invalid_token"`},
				{"wrong audience", "GET", manifest, s.sign(t, s.x5c(), with(claims("repository:team/app:pull"), "aud", "elsewhere")),
					401, "", bearer + `,scope="repository:team/app:pull",error="invalid_token"`},
				{"untrusted certificate", "GET", manifest, other.sign(t, other.x5c(), claims("repository:team/app:pull")), 401, "", bearer},
				{"untrusted kid", "GET", manifest, other.sign(t, other.kid(), claims("repository:team/app:pull")), 401, "", bearer},
				{"bad signature", "GET", manifest, other.sign(t, s.kid(), claims("repository:team/app:pull")), 401, "", bearer},
				{"garbage", "GET", manifest, "Bearer not-a-jwt", 401, "", bearer + `,scope="repository:team/app:pull",error="invalid_token"`},
				{"basic", "GET", manifest, basic("bob", "x"), 401, "", bearer + `,scope="repository:team/app:pull"`},
				{"no token login", "GET", "/v2/", "", 401, "", bearer},
				{"no token pull", "GET", manifest, "", anon(200), "", bearer + `,scope="repository:team/app:pull"`},
				{"no token tags", "GET", "/v2/team/app/tags/list", "", anon(200), "", bearer + `,scope="repository:team/app:pull"`},
				{"no token push", "PUT", manifest, "", 401, "", bearer + `,scope="repository:team/app:`},
				{"no token catalog", "GET", "/v2/_catalog", "", 401, "", bearer + `,scope="registry:catalog:*"`},
			})
		})
	}
}

// Wrap tells the handler which repositories the credentials may pull (a
// mount without `from` links only from those): a token's repositories
// with pull, every repository for an htpasswd user.
func TestPullableRepositories(t *testing.T) {
	s := newSigner(t)
	tokenCfg := Config{Token: &TokenConfig{Realm: "https://auth.example.test/token", Service: "gaia", Issuer: "test-issuer",
		RootCertBundle: writeFile(t, "bundle.pem", s.pem())}}
	htpasswdCfg := Config{Htpasswd: &HtpasswdConfig{Realm: "r", Path: writeHtpasswd(t, "alice", "wonderland")}}
	mount := "/v2/team/app/blobs/uploads/?mount=" + digest
	for _, tc := range []struct {
		name, authorization string
		cfg                 Config
		want                []string
		all                 bool
	}{
		{"token", s.sign(t, s.kid(), claims("repository:team/app:pull,push", "repository:team/base:pull",
			"repository:team/other:push", "repository:team/wild:*", "registry:catalog:*")), tokenCfg,
			[]string{"team/app", "team/base", "team/wild"}, false},
		{"token for the target only", s.sign(t, s.kid(), claims("repository:team/app:pull,push")), tokenCfg, []string{"team/app"}, false},
		{"htpasswd", basic("alice", "wonderland"), htpasswdCfg, nil, true},
		{"no auth", "", Config{}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			var all, served bool
			h := a.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				may := api.MayPull(r.Context())
				all, served = may == nil, true
				for _, repo := range []string{"other/x", "team/app", "team/base", "team/other", "team/wild"} {
					if may != nil && may(repo) {
						got = append(got, repo)
					}
				}
			}))
			w := serve(h, "POST", mount, tc.authorization)
			if !served {
				t.Fatalf("refused: %d %s", w.Code, w.Body)
			}
			slices.Sort(got)
			if all != tc.all || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("pullable %v (all %v), want %v (all %v)", got, all, tc.want, tc.all)
			}
		})
	}
}

// The challenge of a request without a token names what it needs, no error.
func TestTokenChallengeExact(t *testing.T) {
	s := newSigner(t)
	h := newHandler(t, Config{Token: &TokenConfig{Realm: "https://auth.example.test/token", Service: "gaia", Issuer: "i",
		RootCertBundle: writeFile(t, "bundle.pem", s.pem())}})
	w := serve(h, "GET", "/v2/library/ubuntu/manifests/latest", "")
	want := `Bearer realm="https://auth.example.test/token",service="gaia",scope="repository:library/ubuntu:pull"`
	checkError(t, w, 401, "UNAUTHORIZED", want)
	if got := w.Header().Get("WWW-Authenticate"); got != want {
		t.Errorf("WWW-Authenticate %q, want %q", got, want)
	}
}

func TestTokenJWKS(t *testing.T) {
	s := newSigner(t)
	point, err := s.key.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	jwks := `{"keys":[{"kty":"EC","crv":"P-256","kid":"key-1","x":"` + b64(point[1:33]) + `","y":"` + b64(point[33:]) + `"}]}`
	h := newHandler(t, Config{Token: &TokenConfig{Realm: "https://auth.example.test/token", Service: "gaia", Issuer: "test-issuer",
		JWKS: writeFile(t, "jwks.json", jwks)}})
	run(t, h, []httpCase{
		{"known kid", "GET", "/v2/a/manifests/v1", s.sign(t, map[string]any{"kid": "key-1"}, claims("repository:a:pull")), 200, "bob", ""},
		{"unknown kid", "GET", "/v2/a/manifests/v1", s.sign(t, map[string]any{"kid": "key-2"}, claims("repository:a:pull")), 401, "", "Bearer "},
	})
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	htpasswd := writeHtpasswd(t, "alice", "x")
	bundle := writeFile(t, "bundle.pem", newSigner(t).pem())
	notPEM := writeFile(t, "notpem", "hello\n")
	md5 := writeFile(t, "md5", "# users\nalice:$apr1$abc$def\n")
	pemKey, err := tokenauth.GenerateKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	key := writeFile(t, "key.pem", string(pemKey))
	builtin := func(mod func(*BuiltinConfig)) Config {
		c := BuiltinConfig{Realm: "r", Service: "s", Issuer: "i", SigningKeys: []string{key}}
		mod(&c)
		return Config{Builtin: &c}
	}
	token := func(mod func(*TokenConfig)) Config {
		c := TokenConfig{Realm: "r", Service: "s", Issuer: "i", RootCertBundle: bundle}
		mod(&c)
		return Config{Token: &c}
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"both", Config{Htpasswd: &HtpasswdConfig{Realm: "r", Path: htpasswd}, Token: &TokenConfig{}}, "auth: configure at most one of htpasswd, token and builtin"},
		{"builtin and token", Config{Builtin: &BuiltinConfig{}, Token: &TokenConfig{}}, "auth: configure at most one of htpasswd, token and builtin"},
		{"builtin realm", builtin(func(c *BuiltinConfig) { c.Realm = "" }), "auth.builtin.realm: required"},
		{"builtin service", builtin(func(c *BuiltinConfig) { c.Service = "" }), "auth.builtin.service: required"},
		{"builtin keys", builtin(func(c *BuiltinConfig) { c.SigningKeys = nil }), "auth.builtin.signingkeys: at least one"},
		{"builtin key missing", builtin(func(c *BuiltinConfig) { c.SigningKeys = []string{missing} }), "auth.builtin.signingkeys: "},
		{"builtin key not PEM", builtin(func(c *BuiltinConfig) { c.SigningKeys = []string{notPEM} }), "auth.builtin.signingkeys: "},
		{"builtin negative ttl", builtin(func(c *BuiltinConfig) { c.TokenTTL = -time.Second }), "auth.builtin.tokenttl: -1s is negative"},
		{"builtin ldap", builtin(func(c *BuiltinConfig) { c.LDAP = &ldap.Config{} }), "auth.builtin.ldap.url: "},
		{"builtin anonymouspull", Config{AnonymousPull: true, Builtin: &BuiltinConfig{Realm: "r", Service: "s", Issuer: "i", SigningKeys: []string{key}}}, "auth.anonymouspull: not with auth.builtin"},
		{"builtin without a store", builtin(func(*BuiltinConfig) {}), "auth.builtin: needs the registry's database"},
		{"htpasswd realm", Config{Htpasswd: &HtpasswdConfig{Path: htpasswd}}, "auth.htpasswd.realm: required"},
		{"htpasswd path", Config{Htpasswd: &HtpasswdConfig{Realm: "r"}}, "auth.htpasswd.path: required"},
		{"htpasswd missing", Config{Htpasswd: &HtpasswdConfig{Realm: "r", Path: missing}}, "auth.htpasswd.path: open " + missing + ": no such file or directory"},
		{"htpasswd not bcrypt", Config{Htpasswd: &HtpasswdConfig{Realm: "r", Path: md5}}, "auth.htpasswd.path: " + md5 + " line 2: want user:bcrypt-hash"},
		{"token realm", token(func(c *TokenConfig) { c.Realm = "" }), "auth.token.realm: required"},
		{"token service", token(func(c *TokenConfig) { c.Service = "" }), "auth.token.service: required"},
		{"token issuer", token(func(c *TokenConfig) { c.Issuer = "" }), "auth.token.issuer: required"},
		{"token keys", token(func(c *TokenConfig) { c.RootCertBundle = "" }), "auth.token.rootcertbundle: required (or auth.token.jwks)"},
		{"token bundle missing", token(func(c *TokenConfig) { c.RootCertBundle = missing }), "auth.token.rootcertbundle: open " + missing + ": no such file or directory"},
		{"token bundle empty", token(func(c *TokenConfig) { c.RootCertBundle = notPEM }), "auth.token.rootcertbundle: " + notPEM + ": no PEM certificates"},
		{"token jwks missing", token(func(c *TokenConfig) { c.JWKS = missing }), "auth.token.jwks: open " + missing + ": no such file or directory"},
		{"token jwks bad", token(func(c *TokenConfig) { c.JWKS = notPEM }), "auth.token: failed to parse jwks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("got error %v, want %q", err, tc.want)
			}
		})
	}
	// Distribution's controller would have created the missing htpasswd file.
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: %v, want it still missing", missing, err)
	}
}

// TestAuthChecksTheRouteServed: auth and the handler read one parse of the
// raw path (api.RouteOf). Auth once cleaned the path and the handler did
// not, so a token for team/secret let "team/app/../secret" through to the
// handler: harmless only while the name grammar refused it. Now a request
// reaches the handler only for a route auth checked.
func TestAuthChecksTheRouteServed(t *testing.T) {
	s := newSigner(t)
	a, err := New(Config{Token: &TokenConfig{Realm: "https://auth.example.test/token", Service: "gaia", Issuer: "test-issuer",
		RootCertBundle: writeFile(t, "bundle.pem", s.pem())}})
	if err != nil {
		t.Fatal(err)
	}
	var served *api.Route
	h := a.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rt := api.RouteOf(r)
		served = &rt
	}))
	for _, tc := range []struct {
		target, scope string // scope: what the cleaned path names
	}{
		{"/v2/team/app/../secret/manifests/v1", "repository:team/secret:pull"},
		{"/v2/team//secret/./manifests/v1", "repository:team/secret:pull"},
		{"/v2/team/secret/tags/list/", "repository:team/secret:pull"},
		{"/v2/team/../_catalog", "registry:catalog:*"},
		{"/v2/team/secret/manifests/v1", "repository:team/secret:pull"},
	} {
		served = nil
		w := serve(h, "GET", tc.target, s.sign(t, s.kid(), claims(tc.scope)))
		if served == nil {
			checkError(t, w, 401, "UNAUTHORIZED", "Bearer ")
			continue
		}
		switch typ, name, _ := strings.Cut(strings.TrimSuffix(tc.scope, ":pull"), ":"); {
		case served.Kind == "" || served.Kind == "base":
			// authentication only; the handler refuses an unknown route
		case served.Kind == "catalog" && typ == "registry":
		case served.Name == name && typ == "repository":
		default:
			t.Errorf("GET %s with %s: auth let the handler serve %+v", tc.target, tc.scope, *served)
		}
	}
	// The plain path is served: the table is not all refusals.
	served = nil
	serve(h, "GET", "/v2/team/secret/manifests/v1", s.sign(t, s.kid(), claims("repository:team/secret:pull")))
	if served == nil || served.Name != "team/secret" {
		t.Fatalf("a granted pull was not served: %+v", served)
	}
}
