package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/gaia-registry/gaia/registry/tokenauth"
	"github.com/gaia-registry/gaia/tests/harness"
)

// iamServer is a running server with auth.builtin and the admin token
// "admintoken".
type iamServer struct {
	t    *testing.T
	base string
}

func startIAMServer(t *testing.T) *iamServer {
	t.Helper()
	pem, err := tokenauth.GenerateKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(t.TempDir(), "token.pem")
	os.WriteFile(key, pem, 0o600)
	testBcryptCost = bcrypt.MinCost
	t.Cleanup(func() { testBcryptCost = 0 })
	addr := harness.FreeAddr(t)
	cfg, err := LoadConfig(writeConfig(t, fmt.Sprintf(`
http: {addr: %s}
storage: {filesystem: {rootdirectory: %q}}
database: {url: %q, migrate: true}
auth:
  builtin: {realm: "http://%s/auth/token", service: test, issuer: test, signingkeys: [%q], decisioncache: 1m}
admin: {token: admintoken}
`, addr, t.TempDir(), harness.NewDatabase(t), addr, key)), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(context.Background(), cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	base := "http://" + addr
	waitReady(t, base)
	return &iamServer{t: t, base: base}
}

// in is s for subtest t.
func (s *iamServer) in(t *testing.T) *iamServer { return &iamServer{t: t, base: s.base} }

type adminAnswer struct {
	code int
	body map[string]any
	hdr  http.Header
	raw  string
}

// field is the field an error answer names.
func (a adminAnswer) field() string {
	e, _ := a.body["error"].(map[string]any)
	f, _ := e["field"].(string)
	return f
}

// call calls the admin API as who: "" the admin token, "user:password"
// Basic credentials, "-" nothing.
func (s *iamServer) call(who, method, path string, body any) adminAnswer {
	s.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, s.base+path, rd)
	switch {
	case who == "":
		req.Header.Set("Authorization", "Bearer admintoken")
	case who != "-":
		u, p, _ := strings.Cut(who, ":")
		req.SetBasicAuth(u, p)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := adminAnswer{code: resp.StatusCode, hdr: resp.Header, raw: string(raw)}
	json.Unmarshal(raw, &a.body)
	return a
}

// must calls and fails the test unless the answer is want.
func (s *iamServer) must(who, method, path string, body any, want int) adminAnswer {
	s.t.Helper()
	a := s.call(who, method, path, body)
	if a.code != want {
		s.t.Fatalf("%s %s as %q: %d %s, want %d", method, path, who, a.code, a.raw, want)
	}
	return a
}

// names reads the names of a page's items under key.
func names(a adminAnswer, key string) []string {
	items, _ := a.body[key].([]any)
	out := []string{}
	for _, it := range items {
		m := it.(map[string]any)
		n := m["name"].(string)
		if k, ok := m["kind"].(string); ok {
			n = k + ":" + n
		}
		out = append(out, n)
	}
	return out
}

var linkRE = regexp.MustCompile(`^<([^>]+)>; rel="next"$`)

// pages follows a list's Link headers from path (n per page) as the
// admin token, checking that body's next agrees with the Link, and
// returns every page's names.
func (s *iamServer) pages(path, key string) [][]string {
	s.t.Helper()
	var out [][]string
	for i := 0; path != ""; i++ {
		if i > 50 {
			s.t.Fatalf("%s: no end of pages", path)
		}
		a := s.must("", "GET", path, nil, 200)
		out = append(out, names(a, key))
		link, next := a.hdr.Get("Link"), a.body["next"]
		path = ""
		if m := linkRE.FindStringSubmatch(link); m != nil {
			path = m[1]
			if next == nil || !strings.Contains(path, "last="+url.QueryEscape(next.(string))) {
				s.t.Fatalf("Link %q and next %v disagree", link, next)
			}
		} else if link != "" || next != nil {
			s.t.Fatalf("last page with Link %q, next %v", link, next)
		}
	}
	return out
}

// TestAdminIAM: the admin API's users, namespaces, members and robots:
// each route's success and errors (the field named), paging through
// Link headers, and who may do what: the admin token and system admins
// everything, a namespace's admin its members and robots only, anyone
// else nothing; every change in the audit log.
func TestAdminIAM(t *testing.T) {
	s := startIAMServer(t)
	const (
		root   = "root:root-pass-1"
		nsAdm  = "alice:alice-pass-1"
		member = "bob:bob-pass-123"
	)
	for _, u := range []string{root, nsAdm, member, "carol:carol-pass-1", "dave:dave-pass-12"} {
		name, pass, _ := strings.Cut(u, ":")
		a := s.must("", "POST", "/admin/v1/users", map[string]any{"name": name, "password": pass, "admin": name == "root"}, 201)
		if a.body["name"] != name || a.body["source"] != "local" || a.body["admin"] != (name == "root") || a.body["password"] != nil {
			t.Fatalf("created user: %s", a.raw)
		}
	}
	s.must(root, "POST", "/admin/v1/namespaces", map[string]any{"name": "team", "owner": "alice", "description": "the team", "quota_bytes": 1 << 30}, 201)
	s.must("", "POST", "/admin/v1/namespaces", map[string]any{"name": "other"}, 201)
	s.must("", "POST", "/admin/v1/namespaces", map[string]any{"name": "pub", "public": true}, 201)
	if a := s.must(nsAdm, "GET", "/admin/v1/namespaces/team", nil, 200); a.body["description"] != "the team" || a.body["public"] != false {
		t.Fatalf("GET namespace: %s", a.raw)
	}
	s.must(nsAdm, "PUT", "/admin/v1/namespaces/team/members/user/bob", map[string]any{"role": "developer"}, 200)
	if a := s.must(nsAdm, "PUT", "/admin/v1/namespaces/team/members/user/bob", map[string]any{"role": "maintainer"}, 200); a.body["role"] != "maintainer" {
		t.Fatalf("member update: %s", a.raw)
	}
	s.must(nsAdm, "PUT", "/admin/v1/namespaces/team/members/group/ci-team", map[string]any{"role": "guest"}, 200)
	a := s.must(nsAdm, "POST", "/admin/v1/namespaces/team/robots", map[string]any{"name": "ci",
		"permissions": []map[string]any{{"namespace": "team", "actions": []string{"pull", "push"}}}}, 201)
	robot, _ := a.body["robot"].(map[string]any)
	if robot["name"] != "robot$team+ci" || robot["namespace"] != "team" || len(a.body["secret"].(string)) < 32 {
		t.Fatalf("created robot: %s", a.raw)
	}
	if a := s.must(nsAdm, "GET", "/admin/v1/namespaces/team/robots/robot$team+ci", nil, 200); a.body["name"] != "robot$team+ci" || a.body["secret"] != nil {
		t.Fatalf("GET robot: %s", a.raw)
	}
	if a := s.must(nsAdm, "POST", "/admin/v1/robots/robot$team+ci/rotate", nil, 200); a.body["name"] != "robot$team+ci" || len(a.body["secret"].(string)) < 32 {
		t.Fatalf("rotate: %s", a.raw)
	}
	s.must(root, "POST", "/admin/v1/robots", map[string]any{"name": "mirror",
		"permissions": []map[string]any{{"namespace": "*", "actions": []string{"pull"}}}}, 201)
	s.must("", "POST", "/admin/v1/namespaces/other/robots", map[string]any{"name": "deploy",
		"permissions": []map[string]any{{"namespace": "other", "actions": []string{"pull"}}}}, 201)
	if a := s.must("", "PATCH", "/admin/v1/users/bob", map[string]any{"password": "bob-pass-456"}, 200); a.body["name"] != "bob" {
		t.Fatalf("PATCH user: %s", a.raw)
	}
	s.must("", "PATCH", "/admin/v1/users/bob", map[string]any{"password": "bob-pass-123"}, 200)
	if a := s.must(root, "PATCH", "/admin/v1/namespaces/team", map[string]any{"public": true, "quota_bytes": -1}, 200); a.body["public"] != true {
		t.Fatalf("PATCH namespace: %s", a.raw)
	}
	if a := s.must(nsAdm, "PATCH", "/admin/v1/namespaces/team", map[string]any{"description": "ours"}, 200); a.body["description"] != "ours" {
		t.Fatalf("a namespace admin changes the description: %s", a.raw)
	}

	t.Run("errors", func(t *testing.T) {
		s := s.in(t)
		for _, tc := range []struct {
			method, path string
			body         any
			code         int
			field        string
		}{
			{"POST", "/admin/v1/users", map[string]any{"name": "no spaces", "password": "long-enough"}, 400, "name"},
			{"POST", "/admin/v1/users", map[string]any{"name": "eve", "password": "short"}, 400, "password"},
			{"POST", "/admin/v1/users", map[string]any{"name": "alice", "password": "long-enough"}, 409, "name"},
			{"POST", "/admin/v1/users", `{"name": "eve", "pasword": "long-enough"}`, 400, ""},
			{"POST", "/admin/v1/users", `{"name": `, 400, ""},
			{"PATCH", "/admin/v1/users/bob", map[string]any{"password": "short"}, 400, "password"},
			{"GET", "/admin/v1/users/nosuch", nil, 404, ""},
			{"PATCH", "/admin/v1/users/nosuch", map[string]any{"admin": true}, 404, ""},
			{"DELETE", "/admin/v1/users/nosuch", nil, 404, ""},
			{"GET", "/admin/v1/users?n=0", nil, 400, "n"},
			{"GET", "/admin/v1/users?n=1001", nil, 400, "n"},
			{"GET", "/admin/v1/namespaces?n=many", nil, 400, "n"},
			{"POST", "/admin/v1/namespaces", map[string]any{"name": "Upper"}, 400, "name"},
			{"POST", "/admin/v1/namespaces", map[string]any{"name": "team"}, 409, "name"},
			{"POST", "/admin/v1/namespaces", map[string]any{"name": "fresh", "quota_bytes": -5}, 400, "quota_bytes"},
			{"PATCH", "/admin/v1/namespaces/team", map[string]any{"quota_bytes": -2}, 400, "quota_bytes"},
			{"GET", "/admin/v1/namespaces/nosuch", nil, 404, ""},
			{"PATCH", "/admin/v1/namespaces/nosuch", map[string]any{"public": true}, 404, ""},
			{"DELETE", "/admin/v1/namespaces/nosuch", nil, 404, ""},
			{"GET", "/admin/v1/namespaces/nosuch/members", nil, 404, ""},
			{"GET", "/admin/v1/namespaces/team/members?n=0", nil, 400, "n"},
			{"PUT", "/admin/v1/namespaces/team/members/robot/x", map[string]any{"role": "guest"}, 400, "kind"},
			{"PUT", "/admin/v1/namespaces/team/members/user/bob", map[string]any{"role": "owner"}, 400, "role"},
			{"PUT", "/admin/v1/namespaces/team/members/user/no%20spaces", map[string]any{"role": "guest"}, 400, "name"},
			{"PUT", "/admin/v1/namespaces/nosuch/members/user/bob", map[string]any{"role": "guest"}, 404, ""},
			{"DELETE", "/admin/v1/namespaces/team/members/user/nosuch", nil, 404, ""},
			{"POST", "/admin/v1/namespaces/team/robots", map[string]any{"name": "Bad!", "permissions": []map[string]any{{"namespace": "team", "actions": []string{"pull"}}}}, 400, "name"},
			{"POST", "/admin/v1/namespaces/team/robots", map[string]any{"name": "x"}, 400, "permissions"},
			{"POST", "/admin/v1/namespaces/team/robots", map[string]any{"name": "x", "permissions": []map[string]any{{"namespace": "other", "actions": []string{"pull"}}}}, 400, "permissions[0].namespace"},
			{"POST", "/admin/v1/namespaces/team/robots", map[string]any{"name": "x", "permissions": []map[string]any{{"namespace": "team", "actions": []string{"fly"}}}}, 400, "permissions[0].actions"},
			{"POST", "/admin/v1/namespaces/team/robots", map[string]any{"name": "x", "permissions": []map[string]any{{"namespace": "team", "actions": []string{"pull"}}}, "expires_at": "2001-01-01T00:00:00Z"}, 400, "expires_at"},
			{"POST", "/admin/v1/namespaces/team/robots", map[string]any{"name": "ci", "permissions": []map[string]any{{"namespace": "team", "actions": []string{"pull"}}}}, 409, "name"},
			{"POST", "/admin/v1/namespaces/nosuch/robots", map[string]any{"name": "x", "permissions": []map[string]any{{"namespace": "nosuch", "actions": []string{"pull"}}}}, 404, ""},
			{"POST", "/admin/v1/robots", map[string]any{"name": "x", "permissions": []map[string]any{{"namespace": "Not A NS", "actions": []string{"pull"}}}}, 400, "permissions[0].namespace"},
			{"GET", "/admin/v1/robots/robot$nosuch", nil, 404, ""},
			{"DELETE", "/admin/v1/robots/robot$nosuch", nil, 404, ""},
			{"POST", "/admin/v1/robots/robot$nosuch/rotate", nil, 404, ""},
			{"GET", "/admin/v1/namespaces/team/robots/nosuch", nil, 404, ""},
			// A namespace's robot routes serve its own robots only.
			{"GET", "/admin/v1/namespaces/team/robots/robot$other+deploy", nil, 404, ""},
			{"DELETE", "/admin/v1/namespaces/team/robots/robot$other+deploy", nil, 404, ""},
			// Wrong methods on known resources, unknown paths.
			{"PUT", "/admin/v1/users", nil, 405, ""},
			{"POST", "/admin/v1/users/bob", nil, 405, ""},
			{"DELETE", "/admin/v1/namespaces", nil, 405, ""},
			{"PUT", "/admin/v1/namespaces/team", nil, 405, ""},
			{"POST", "/admin/v1/namespaces/team/members", nil, 405, ""},
			{"GET", "/admin/v1/namespaces/team/members/user/bob", nil, 405, ""},
			{"PUT", "/admin/v1/namespaces/team/robots", nil, 405, ""},
			{"PUT", "/admin/v1/robots/robot$team+ci", nil, 405, ""},
			{"GET", "/admin/v1/robots/robot$team+ci/rotate", nil, 405, ""},
			{"GET", "/admin/v1/users/bob/extra", nil, 404, ""},
			{"GET", "/admin/v1/namespaces/team/bogus", nil, 404, ""},
			{"GET", "/admin/v1/namespaces/team/members/user", nil, 404, ""},
			{"GET", "/admin/v1/robots/robot$team+ci/bogus", nil, 404, ""},
			{"GET", "/admin/v1/nothing", nil, 404, ""},
		} {
			a := s.call("", tc.method, tc.path, tc.body)
			e, _ := a.body["error"].(map[string]any)
			msg, _ := e["message"].(string)
			if a.code != tc.code || a.field() != tc.field || msg == "" {
				t.Errorf("%s %s %v: %d %s, want %d naming field %q", tc.method, tc.path, tc.body, a.code, a.raw, tc.code, tc.field)
			}
			if a.code == 405 && a.hdr.Get("Allow") == "" {
				t.Errorf("%s %s: 405 without Allow", tc.method, tc.path)
			}
		}
		if a := s.call("", "GET", "/admin/v1/namespaces/fresh", nil); a.code != 404 {
			t.Errorf("a namespace refused for its quota exists: %d %s", a.code, a.raw)
		}
	})

	t.Run("paging", func(t *testing.T) {
		s := s.in(t)
		if got := s.pages("/admin/v1/users?n=2", "users"); fmt.Sprint(got) != "[[alice bob] [carol dave] [root]]" {
			t.Errorf("users: %v", got)
		}
		if got := s.pages("/admin/v1/users?n=5", "users"); fmt.Sprint(got) != "[[alice bob carol dave root]]" {
			t.Errorf("users, one full page: %v", got)
		}
		if got := s.pages("/admin/v1/namespaces?n=1", "namespaces"); fmt.Sprint(got) != "[[other] [pub] [team]]" {
			t.Errorf("namespaces: %v", got)
		}
		for _, u := range []string{"carol", "dave"} {
			s.must("", "PUT", "/admin/v1/namespaces/team/members/user/"+u, map[string]any{"role": "guest"}, 200)
		}
		if got := s.pages("/admin/v1/namespaces/team/members?n=2", "members"); fmt.Sprint(got) != "[[group:ci-team user:alice] [user:bob user:carol] [user:dave]]" {
			t.Errorf("members: %v", got)
		}
		for _, r := range []string{"a", "b"} {
			s.must("", "POST", "/admin/v1/namespaces/team/robots", map[string]any{"name": r,
				"permissions": []map[string]any{{"namespace": "team", "actions": []string{"pull"}}}}, 201)
			s.must("", "POST", "/admin/v1/robots", map[string]any{"name": r,
				"permissions": []map[string]any{{"namespace": "team", "repositories": "app*", "actions": []string{"pull"}}}}, 201)
		}
		if got := s.pages("/admin/v1/namespaces/team/robots?n=2", "robots"); fmt.Sprint(got) != "[[robot$team+a robot$team+b] [robot$team+ci]]" {
			t.Errorf("namespace robots: %v", got)
		}
		if got := s.pages("/admin/v1/robots?n=1", "robots"); fmt.Sprint(got) != "[[robot$a] [robot$b] [robot$mirror]]" {
			t.Errorf("system robots: %v", got)
		}
	})

	t.Run("authorization", func(t *testing.T) {
		s := s.in(t)
		for _, tc := range []struct {
			who, method, path string
			body              any
			code              int
		}{
			// A system admin (Basic) does what the token does.
			{root, "GET", "/admin/v1/users", nil, 200},
			{root, "GET", "/admin/v1/robots", nil, 200},
			{root, "GET", "/admin/v1/namespaces/other/robots", nil, 200},
			{root, "GET", "/admin/v1/audit", nil, 200},
			// A namespace admin: their namespace's members and robots.
			{nsAdm, "GET", "/admin/v1/namespaces/team/members", nil, 200},
			{nsAdm, "GET", "/admin/v1/namespaces/team/robots", nil, 200},
			{nsAdm, "GET", "/admin/v1/robots/robot$team+ci", nil, 200},
			// ... and nothing else.
			{nsAdm, "PATCH", "/admin/v1/namespaces/team", map[string]any{"public": false}, 403},
			{nsAdm, "PATCH", "/admin/v1/namespaces/team", map[string]any{"quota_bytes": 5}, 403},
			{nsAdm, "DELETE", "/admin/v1/namespaces/team", nil, 403},
			{nsAdm, "POST", "/admin/v1/namespaces", map[string]any{"name": "mine"}, 403},
			{nsAdm, "GET", "/admin/v1/namespaces", nil, 403},
			{nsAdm, "POST", "/admin/v1/users", map[string]any{"name": "eve", "password": "long-enough"}, 403},
			{nsAdm, "GET", "/admin/v1/users", nil, 403},
			{nsAdm, "PATCH", "/admin/v1/users/alice", map[string]any{"admin": true}, 403},
			{nsAdm, "GET", "/admin/v1/robots", nil, 403},
			{nsAdm, "POST", "/admin/v1/robots", map[string]any{"name": "x", "permissions": []map[string]any{{"namespace": "team", "actions": []string{"pull"}}}}, 403},
			{nsAdm, "GET", "/admin/v1/robots/robot$mirror", nil, 403},
			{nsAdm, "POST", "/admin/v1/robots/robot$mirror/rotate", nil, 403},
			{nsAdm, "DELETE", "/admin/v1/robots/robot$other+deploy", nil, 403},
			{nsAdm, "GET", "/admin/v1/robots/robot$other+nosuch", nil, 403}, // not a 404: nothing learnt of other namespaces
			{nsAdm, "GET", "/admin/v1/namespaces/other/robots", nil, 403},
			{nsAdm, "POST", "/admin/v1/namespaces/other/robots", map[string]any{"name": "x", "permissions": []map[string]any{{"namespace": "other", "actions": []string{"pull"}}}}, 403},
			{nsAdm, "PUT", "/admin/v1/namespaces/other/members/user/alice", map[string]any{"role": "admin"}, 403},
			{nsAdm, "GET", "/admin/v1/namespaces/nosuch", nil, 403},
			{nsAdm, "GET", "/admin/v1/audit", nil, 403},
			{nsAdm, "GET", "/admin/v1/gc/status", nil, 403},
			// A member who is not the namespace's admin: nothing.
			{member, "GET", "/admin/v1/namespaces/team", nil, 403},
			{member, "GET", "/admin/v1/namespaces/team/members", nil, 403},
			{member, "PUT", "/admin/v1/namespaces/team/members/user/bob", map[string]any{"role": "admin"}, 403},
			{member, "POST", "/admin/v1/namespaces/team/robots", map[string]any{"name": "x", "permissions": []map[string]any{{"namespace": "team", "actions": []string{"pull"}}}}, 403},
			{member, "GET", "/admin/v1/robots/robot$team+ci", nil, 403},
			{member, "GET", "/admin/v1/users", nil, 403},
		} {
			a := s.call(tc.who, tc.method, tc.path, tc.body)
			if a.code != tc.code {
				t.Errorf("%s %s as %s: %d %s, want %d", tc.method, tc.path, tc.who, a.code, a.raw, tc.code)
			}
		}
		// What the namespace admin may do, done.
		s.must(nsAdm, "PUT", "/admin/v1/namespaces/team/members/user/carol", map[string]any{"role": "developer"}, 200)
		s.must(nsAdm, "DELETE", "/admin/v1/namespaces/team/members/user/carol", nil, 204)
		s.must(nsAdm, "DELETE", "/admin/v1/namespaces/team/robots/robot$team+a", nil, 204)
		s.must(nsAdm, "DELETE", "/admin/v1/robots/robot$team+b", nil, 204)
		// Bad credentials: 401 with both challenges.
		for _, who := range []string{"-", "alice:wrong-password", "nosuch:whatever-1", "robot$team+ci:wrong"} {
			a := s.call(who, "GET", "/admin/v1/namespaces/team/members", nil)
			if ch := a.hdr.Values("WWW-Authenticate"); a.code != 401 || !slices.Contains(ch, `Bearer realm="gaia-registry-admin"`) ||
				!slices.Contains(ch, `Basic realm="gaia-registry-admin"`) {
				t.Errorf("as %q: %d %v %s, want 401 with Bearer and Basic challenges", who, a.code, ch, a.raw)
			}
		}
		req, _ := http.NewRequest("GET", s.base+"/admin/v1/users", nil)
		req.Header.Set("Authorization", "Bearer wrong")
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
			t.Errorf("a wrong admin token: %v %v", resp.StatusCode, err)
		}
		// Deleting, last: a user, a namespace (its members and robots go with it).
		s.must(root, "DELETE", "/admin/v1/users/dave", nil, 204)
		s.must(root, "DELETE", "/admin/v1/namespaces/other", nil, 204)
		s.must("", "GET", "/admin/v1/robots/robot$other+deploy", nil, 404)
	})

	t.Run("audit", func(t *testing.T) {
		s := s.in(t)
		want := map[string]string{ // action -> an actor that did it
			"user_create": "(admin token)", "user_update": "(admin token)", "user_delete": "root",
			"namespace_create": "root", "namespace_update": "alice", "namespace_delete": "root",
			"member_add": "alice", "member_update": "alice", "member_remove": "alice",
			"robot_create": "alice", "robot_rotate": "alice", "robot_delete": "alice",
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			a := s.must("", "GET", "/admin/v1/audit?since=1h&limit=1000", nil, 200)
			got := map[string]bool{}
			for _, e := range a.body["events"].([]any) {
				ev := e.(map[string]any)
				got[ev["action"].(string)+" "+ev["actor"].(string)] = true
				if ev["action"] == "robot_rotate" && ev["namespace"] != "team" {
					t.Fatalf("robot_rotate of robot$team+ci without its namespace: %v", ev)
				}
			}
			missing := []string{}
			for action, actor := range want {
				if !got[action+" "+actor] {
					missing = append(missing, action+" by "+actor)
				}
			}
			if len(missing) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("audit events missing after 20s: %v (have %v)", missing, got)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	// The admin API's requests are in the request metrics, as route admin.
	if code, body := harness.Get(t, s.base+"/metrics"); code != 200 ||
		!strings.Contains(body, `gaia_registry_http_requests_total{code="201",method="POST",route="admin"}`) {
		t.Errorf("/metrics: %d, no admin POSTs counted:\n%s", code, body)
	}
}

// Password guesses through the admin API meet the token service's
// limiter (default 10 failures per user and address per minute) and are
// audited as failed logins; another user is not slowed.
func TestAdminAPILoginsLimited(t *testing.T) {
	s := startIAMServer(t)
	s.must("", "POST", "/admin/v1/users", map[string]any{"name": "root", "password": "root-pass-1", "admin": true}, http.StatusCreated)
	s.must("", "POST", "/admin/v1/users", map[string]any{"name": "other", "password": "other-pass", "admin": true}, http.StatusCreated)
	for i := range 10 {
		s.must(fmt.Sprintf("root:guess-%d", i), "GET", "/admin/v1/users", nil, http.StatusUnauthorized)
	}
	s.must("root:root-pass-1", "GET", "/admin/v1/users", nil, http.StatusUnauthorized) // limited: not even checked
	s.must("other:other-pass", "GET", "/admin/v1/users", nil, http.StatusOK)
	waitErr := func() string {
		deadline := time.Now().Add(30 * time.Second)
		for {
			a := s.must("", "GET", "/admin/v1/audit?action=login_failed&actor=root", nil, http.StatusOK)
			if evs, _ := a.body["events"].([]any); len(evs) == 10 || time.Now().After(deadline) {
				return fmt.Sprint(len(evs))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if n := waitErr(); n != "10" {
		t.Fatalf("%s failed logins of root audited, want 10 (the limited one is not checked)", n)
	}
}
