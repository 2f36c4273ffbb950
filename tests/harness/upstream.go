package harness

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
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// StockVersion is the CNCF distribution release the tests and benchmarks
// use as the reference registry (and as a mirror's upstream).
const StockVersion = "v3.1.2"

// StockRegistryBinary builds the stock distribution registry from the Go
// module proxy, once (cached beside the conformance suite).
func StockRegistryBinary(t testing.TB) string {
	t.Helper()
	return GoTool(t, "github.com/distribution/distribution/v3/cmd/registry", StockVersion)
}

// TokenServer is a Docker-style token server (like auth.docker.io): it
// hands out ES256 JWTs, signed by a self-signed certificate a registry
// trusts through auth.token.rootcertbundle. Anonymous callers get pull;
// users get what Users grants them ("pull" or "pull,push").
type TokenServer struct {
	URL      string // realm: URL + "/token"
	CertFile string // PEM bundle for the registry
	Service  string
	Issuer   string
	Users    map[string][2]string // name → {password, actions}
	Issued   atomic.Int64         // tokens handed out

	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

// StartTokenServer starts a TokenServer for service on loopback.
func StartTokenServer(t testing.TB, service string, users map[string][2]string) *TokenServer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "gaia test token issuer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ts := &TokenServer{Service: service, Issuer: "gaia-test-issuer", Users: users, key: key, cert: cert}
	ts.CertFile = filepath.Join(t.TempDir(), "token-cert.pem")
	if err := os.WriteFile(ts.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(ts.serve))
	t.Cleanup(srv.Close)
	ts.URL = srv.URL
	return ts
}

// Realm is the token endpoint a registry's challenge names.
func (ts *TokenServer) Realm() string { return ts.URL + "/token" }

func (ts *TokenServer) serve(w http.ResponseWriter, r *http.Request) {
	allowed := "pull"
	subject := ""
	if u, p, ok := r.BasicAuth(); ok {
		entry, known := ts.Users[u]
		if !known || entry[0] != p {
			http.Error(w, `{"details":"incorrect username or password"}`, http.StatusUnauthorized)
			return
		}
		subject, allowed = u, entry[1]
	}
	var access []map[string]any
	for _, scope := range r.URL.Query()["scope"] {
		typ, rest, _ := strings.Cut(scope, ":")
		i := strings.LastIndex(rest, ":")
		if i < 0 {
			continue
		}
		var granted []string
		for _, a := range strings.Split(rest[i+1:], ",") {
			if strings.Contains(","+allowed+",", ","+a+",") || (a == "*" && typ == "registry" && subject != "") {
				granted = append(granted, a)
			}
		}
		access = append(access, map[string]any{"type": typ, "name": rest[:i], "actions": granted})
	}
	now := time.Now()
	claims := map[string]any{
		"iss": ts.Issuer, "sub": subject, "aud": ts.Service, "jti": fmt.Sprint(ts.Issued.Add(1)),
		"iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(time.Hour).Unix(),
		"access": access,
	}
	header := map[string]any{"alg": "ES256", "typ": "JWT", "x5c": []string{base64.StdEncoding.EncodeToString(ts.cert.Raw)}}
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	input := enc(header) + "." + enc(claims)
	hash := sha256.Sum256([]byte(input))
	rr, sv, err := ecdsa.Sign(rand.Reader, ts.key, hash[:])
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	sig := make([]byte, 64)
	rr.FillBytes(sig[:32])
	sv.FillBytes(sig[32:])
	token := input + "." + base64.RawURLEncoding.EncodeToString(sig)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": token, "access_token": token, "expires_in": 3600})
}

// StartStockRegistry runs the stock distribution registry on addr with
// filesystem storage, and token auth against ts when ts is not nil.
func StartStockRegistry(t testing.TB, addr string, ts *TokenServer) *Registry {
	t.Helper()
	bin := StockRegistryBinary(t)
	dir := t.TempDir()
	auth := ""
	if ts != nil {
		auth = fmt.Sprintf("auth:\n  token: {realm: %q, service: %q, issuer: %q, rootcertbundle: %q}\n",
			ts.Realm(), ts.Service, ts.Issuer, ts.CertFile)
	}
	cfg := fmt.Sprintf(`version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: %q}
  delete: {enabled: true}
http: {addr: %s}
%s`, filepath.Join(dir, "storage"), addr, auth)
	path := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r := StartProcess(t, bin, []string{"serve", path}, []string{"OTEL_TRACES_EXPORTER=none"}, addr, "/v2/",
		func(code int) bool { return code == http.StatusOK || code == http.StatusUnauthorized })
	r.SignalExitOK = true // distribution exits "terminated" on SIGTERM
	return r
}
