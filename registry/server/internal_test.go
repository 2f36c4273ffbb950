package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"

	"github.com/gaia-registry/gaia/registry/internaltoken"
	"github.com/gaia-registry/gaia/tests/harness"
)

// Old single-token configs keep loading; two tokens (rotation) load; bad
// values fail naming the key; the token never goes to a peer over plain
// http off loopback.
func TestClusterConfig(t *testing.T) {
	base := minimal + "cluster:\n  idc: a\n  peers: {b: %s}\n  internaltoken: %s\n"
	cfg, err := LoadConfig(writeConfig(t, fmt.Sprintf(base, "https://gw-b.example", "old-single-token")), nil)
	if err != nil || cfg.Cluster.InternalToken.Current() != "old-single-token" || len(cfg.Cluster.InternalToken) != 1 {
		t.Fatalf("a single token: %v %q", err, cfg.Cluster.InternalToken)
	}
	cfg, err = LoadConfig(writeConfig(t, fmt.Sprintf(base, "http://127.0.0.1:6001", "[new-token, old-token]")), nil)
	if err != nil || cfg.Cluster.InternalToken.Current() != "new-token" || !cfg.Cluster.InternalToken.Match("old-token") {
		t.Fatalf("two tokens: %v %q", err, cfg.Cluster.InternalToken)
	}
	cfg, err = LoadConfig(writeConfig(t, fmt.Sprintf(base, "https://gw-b.example", "x")),
		[]string{"GAIA_CLUSTER_INTERNALTOKEN=[next-token, x]"})
	if err != nil || cfg.Cluster.InternalToken.Current() != "next-token" || len(cfg.Cluster.InternalToken) != 2 {
		t.Fatalf("two tokens from the environment: %v %q", err, cfg.Cluster.InternalToken)
	}
	// A robot instead of the token; the password from the environment.
	cfg, err = LoadConfig(writeConfig(t, fmt.Sprintf(base, "https://gw-b.example", "[]")+"  robot: {username: robot$fill}\n"),
		[]string{"GAIA_CLUSTER_ROBOT_PASSWORD=s3cret"})
	if err != nil || cfg.Cluster.Robot.Username != "robot$fill" || cfg.Cluster.Robot.Password != "s3cret" {
		t.Fatalf("a robot for the copies: %v %+v", err, cfg.Cluster.Robot)
	}
	for _, tc := range []struct{ text, want string }{
		{fmt.Sprintf(base, "http://gw-b.example:6001", "tok"), "cluster.peers.b: "},
		{fmt.Sprintf(base, "http://10.0.0.5", "tok"), "over https only"},
		{fmt.Sprintf(base, "https://gw-b.example", "[a, b, c]"), "cluster.internaltoken: 3 tokens"},
		{fmt.Sprintf(base, "https://gw-b.example", "[a, a]"), "cluster.internaltoken: the two tokens are the same"},
		{fmt.Sprintf(base, "https://gw-b.example", "[]"), "cluster.internaltoken: required"},
		{fmt.Sprintf(base, "https://gw-b.example", "[]") + "  robot: {username: robot$fill}\n", "cluster.robot: give both"},
		{fmt.Sprintf(base, "https://gw-b.example", "tok") + "  tls: {ca: /nonexistent/ca.pem}\n", "cluster.tls.ca: "},
		{minimal + "http: {trustedproxies: [10.0.0.0/8, gateway-1]}\n", "http.trustedproxies[1]"},
	} {
		if _, err := LoadConfig(writeConfig(t, tc.text), nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error containing %q", tc.text, err, tc.want)
		}
	}
}

// logBuffer collects a server's JSON log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// requests are the log's request lines.
func (l *logBuffer) requests(t *testing.T) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "request" {
			out = append(out, m)
		}
	}
	return out
}

// authedServer is a server with htpasswd auth (user builder, password
// s3cret; no anonymous access), in IDC a of a cluster whose internal
// tokens are tokens, trusting the proxies given; its log goes to logs.
func authedServer(t *testing.T, tokens string, trusted []string, logs *logBuffer) http.Handler {
	t.Helper()
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	os.WriteFile(htpasswd, []byte("builder:"+string(hash)+"\n"), 0o600)
	proxies, _ := json.Marshal(trusted)
	cfg, err := LoadConfig(writeConfig(t, fmt.Sprintf(`
http: {addr: %s, trustedproxies: %s}
storage: {filesystem: {rootdirectory: %q}, delete: {enabled: true}}
database: {url: %q, migrate: true}
auth: {htpasswd: {realm: test, path: %q}}
cluster: {idc: a, peers: {b: "https://gw-b.example"}, internaltoken: %s}
`, harness.FreeAddr(t), proxies, t.TempDir(), harness.NewDatabase(t), htpasswd, tokens)), nil)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	srv, err := New(context.Background(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.pool.Close)
	return srv.Handler()
}

func serveReq(t *testing.T, h http.Handler, method, path string, hdr map[string]string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if hdr["remote"] != "" {
		req.RemoteAddr = hdr["remote"]
		req.Header.Del("remote")
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// The internal token opens blob reads, what fills need, and nothing
// else: not manifests, tags or the catalog, nor any write. Both tokens
// of a rotation are accepted; a wrong one is not, and refusals are
// counted.
func TestInternalTokenOnlyReadsBlobs(t *testing.T) {
	var logs logBuffer
	h := authedServer(t, "[new-token, old-token]", nil, &logs)
	basic := map[string]string{"Authorization": "Basic YnVpbGRlcjpzM2NyZXQ="} // builder:s3cret
	push := func(data []byte) digest.Digest {
		d := digest.FromBytes(data)
		if rec := serveReq(t, h, http.MethodPost, "/v2/team/app/blobs/uploads/?digest="+d.String(), basic, data); rec.Code != http.StatusCreated {
			t.Fatalf("push blob: %d %s", rec.Code, rec.Body)
		}
		return d
	}
	config, layer := []byte(`{"architecture":"amd64","os":"linux"}`), []byte("layer bytes")
	cd, ld := push(config), push(layer)
	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
		"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},
		"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]}`, cd, len(config), ld, len(layer))
	hdr := map[string]string{"Authorization": basic["Authorization"], "Content-Type": "application/vnd.oci.image.manifest.v1+json"}
	if rec := serveReq(t, h, http.MethodPut, "/v2/team/app/manifests/v1", hdr, []byte(manifest)); rec.Code != http.StatusCreated {
		t.Fatalf("push manifest: %d %s", rec.Code, rec.Body)
	}

	tok := func(v string) map[string]string { return map[string]string{internaltoken.Header: v} }
	for _, tc := range []struct {
		method, path, token string
		want                int
	}{
		{"GET", "/v2/team/app/blobs/" + ld.String(), "new-token", 200},
		{"HEAD", "/v2/team/app/blobs/" + ld.String(), "old-token", 200},
		{"GET", "/v2/team/app/blobs/" + ld.String(), "old-token", 200},
		{"GET", "/v2/team/app/blobs/" + ld.String(), "other-token", 401},
		{"GET", "/v2/team/app/manifests/v1", "new-token", 401},
		{"HEAD", "/v2/team/app/manifests/v1", "new-token", 401},
		{"GET", "/v2/team/app/manifests/" + ld.String(), "new-token", 401},
		{"GET", "/v2/team/app/tags/list", "new-token", 401},
		{"GET", "/v2/_catalog", "new-token", 401},
		{"GET", "/v2/", "new-token", 401},
		{"GET", "/v2/team/app/referrers/" + ld.String(), "new-token", 401},
		{"DELETE", "/v2/team/app/blobs/" + ld.String(), "new-token", 401},
		{"POST", "/v2/team/app/blobs/uploads/", "new-token", 401},
	} {
		rec := serveReq(t, h, tc.method, tc.path, tok(tc.token), nil)
		if rec.Code != tc.want {
			t.Errorf("%s %s with %s: %d, want %d", tc.method, tc.path, tc.token, rec.Code, tc.want)
		}
	}
	rec := serveReq(t, h, http.MethodGet, "/metrics", nil, nil)
	if !strings.Contains(rec.Body.String(), "gaia_registry_internal_token_refused_total 10\n") {
		t.Errorf("refusals not counted:\n%s", linesWith(rec.Body.String(), "internal_token"))
	}
}

func linesWith(text, word string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, word) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// The request log names the client a trusted gateway forwarded for, and
// the direct peer otherwise (whatever X-Forwarded-For it sent).
func TestRequestLogNamesClient(t *testing.T) {
	var logs logBuffer
	h := authedServer(t, "tok", []string{"10.0.0.0/24"}, &logs)
	serveReq(t, h, http.MethodGet, "/v2/", map[string]string{"remote": "10.0.0.7:40000", "X-Forwarded-For": "6.6.6.6, 198.51.100.7"}, nil)
	serveReq(t, h, http.MethodGet, "/v2/", map[string]string{"remote": "203.0.113.1:40000", "X-Forwarded-For": "198.51.100.7"}, nil)
	lines := logs.requests(t)
	if len(lines) != 2 {
		t.Fatalf("request lines: %v", lines)
	}
	if lines[0]["remote"] != "198.51.100.7" || lines[0]["proxy"] != "10.0.0.7:40000" {
		t.Errorf("through a trusted gateway: remote %v, proxy %v", lines[0]["remote"], lines[0]["proxy"])
	}
	if lines[1]["remote"] != "203.0.113.1:40000" || lines[1]["proxy"] != nil {
		t.Errorf("from an untrusted peer: remote %v, proxy %v", lines[1]["remote"], lines[1]["proxy"])
	}
}

// The cluster example configs (make cluster) load.
func TestClusterExampleConfigsLoad(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(harness.RepoRoot(), "configs", "cluster", "registry-*.yml"))
	if len(files) != 4 {
		t.Fatalf("cluster example configs: %v", files)
	}
	for _, f := range files {
		if _, err := LoadConfig(f, nil); err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
		}
	}
}

// The request log names the user auth let in (auth sets it deeper in the
// chain than the log line is written), and none for a refused request.
func TestRequestLogNamesUser(t *testing.T) {
	var logs logBuffer
	h := authedServer(t, "tok", nil, &logs)
	if rec := serveReq(t, h, http.MethodGet, "/v2/", map[string]string{"Authorization": "Basic YnVpbGRlcjpzM2NyZXQ="}, nil); rec.Code != 200 {
		t.Fatalf("GET /v2/ as builder: %d", rec.Code)
	}
	if rec := serveReq(t, h, http.MethodGet, "/v2/", nil, nil); rec.Code != 401 {
		t.Fatalf("GET /v2/ anonymously: %d", rec.Code)
	}
	lines := logs.requests(t)
	if len(lines) != 2 || lines[0]["user"] != "builder" || lines[1]["user"] != "" {
		t.Fatalf("request lines' users: %v, want builder then none", lines)
	}
}
