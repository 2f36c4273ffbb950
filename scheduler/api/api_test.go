package api_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/model"
)

// fake is a Backend that records what reached it.
type fake struct {
	api.Backend
	submitted []model.AppSpec
}

func (f *fake) SubmitApp(ctx context.Context, s model.AppSpec) (*model.App, error) {
	f.submitted = append(f.submitted, s)
	return &model.App{Spec: s, Version: 1}, nil
}

func (f *fake) Desired(ctx context.Context, node, version string, wait time.Duration) ([]byte, bool, error) {
	return []byte(`{"version":"1.1","instances":[]}`), version != "1.1", nil
}

type lead struct {
	leading bool
	url     string
}

func (l lead) Leading() bool                        { return l.leading }
func (l lead) LeaderURL(ctx context.Context) string { return l.url }

func newAPI(b api.Backend, l api.Leadership) http.Handler {
	return api.New(api.Options{Backend: b, Leadership: l, AdminToken: "admin", NodeToken: "node",
		SubmitTokens: map[string]string{"team": "team-token"}, Self: "self", Log: slog.Default()})
}

func do(t *testing.T, h http.Handler, method, path, token, body string) (*http.Response, api.Error) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var e struct{ Error api.Error }
	raw, _ := io.ReadAll(rec.Result().Body)
	json.Unmarshal(raw, &e)
	return rec.Result(), e.Error
}

const spec = `{"name":"web","pool":"root.a","image":"team/web:1","instances":2,"resources":{"cpu":"500m","memory":"1Gi"}}`

func TestSubmitValidationNamesTheField(t *testing.T) {
	f := &fake{}
	h := newAPI(f, lead{leading: true})
	for body, field := range map[string]string{
		strings.Replace(spec, `"web"`, `"Web!"`, 1):                  "name",
		strings.Replace(spec, `"1Gi"`, `"lots"`, 1):                  "resources.memory",
		strings.Replace(spec, `"instances":2`, `"instances":"2"`, 1): "instances",
		strings.Replace(spec, `"instances":2`, `"replicas":2`, 1):    "replicas",
		`{"name": "web",`: "",
	} {
		resp, e := do(t, h, "POST", "/v1/apps", "admin", body)
		if resp.StatusCode != http.StatusBadRequest || e.Code != api.CodeInvalid || e.Field != field {
			t.Errorf("%s: %d %+v, want 400 naming %q", body, resp.StatusCode, e, field)
		}
	}
	if len(f.submitted) != 0 {
		t.Fatalf("invalid specs reached the backend: %v", f.submitted)
	}
	if resp, _ := do(t, h, "POST", "/v1/apps", "admin", spec); resp.StatusCode != http.StatusCreated || len(f.submitted) != 1 {
		t.Fatalf("valid spec: %d", resp.StatusCode)
	}
}

func TestTokens(t *testing.T) {
	h := newAPI(&fake{}, lead{leading: true})
	for _, c := range []struct {
		method, path, token string
		status              int
	}{
		{"POST", "/v1/apps", "", http.StatusUnauthorized},
		{"POST", "/v1/apps", "node", http.StatusUnauthorized},
		{"POST", "/v1/pools", "team-token", http.StatusForbidden},
		{"GET", "/v1/node/n1/desired?version=", "admin", http.StatusUnauthorized},
		{"GET", "/v1/node/n1/desired?version=", "node", http.StatusOK},
		{"GET", "/v1/node/n1/desired?version=1.1&wait=1s", "node", http.StatusNotModified},
	} {
		body := ""
		if c.path == "/v1/pools" {
			body = `{"name":"root.x"}`
		}
		if resp, e := do(t, h, c.method, c.path, c.token, body); resp.StatusCode != c.status {
			t.Errorf("%s %s with %q: %d %+v, want %d", c.method, c.path, c.token, resp.StatusCode, e, c.status)
		}
	}
}

// A follower forwards user writes to the leader once, and points nodes to it.
func TestFollower(t *testing.T) {
	leaderBackend := &fake{}
	leaderAPI := httptest.NewServer(newAPI(leaderBackend, lead{leading: true}))
	defer leaderAPI.Close()
	h := newAPI(&fake{}, lead{leading: false, url: leaderAPI.URL})
	if resp, e := do(t, h, "POST", "/v1/apps", "admin", spec); resp.StatusCode != http.StatusCreated || len(leaderBackend.submitted) != 1 {
		t.Fatalf("forwarded submit: %d %+v", resp.StatusCode, e)
	}
	resp, e := do(t, h, "GET", "/v1/node/n1/desired", "node", "")
	if resp.StatusCode != http.StatusServiceUnavailable || e.Code != api.CodeNotLeader || resp.Header.Get(api.LeaderHeader) != leaderAPI.URL {
		t.Fatalf("node poll on a follower: %d %+v %q", resp.StatusCode, e, resp.Header.Get(api.LeaderHeader))
	}
	// A write forwarded to a process that does not lead either is not
	// forwarded again.
	req := httptest.NewRequest("POST", "/v1/apps", strings.NewReader(spec))
	req.Header.Set("Authorization", "Bearer admin")
	req.Header.Set(api.ForwardedHeader, "other")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), api.CodeNotLeader) {
		t.Fatalf("forward loop: %d %s", rec.Code, rec.Body)
	}
	if len(leaderBackend.submitted) != 1 {
		t.Fatal("forwarded twice")
	}
}
