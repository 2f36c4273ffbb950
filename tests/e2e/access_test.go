package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/registry/iam/ldap/ldaptest"
	"github.com/gaia-registry/gaia/registry/tokenauth"
	"github.com/gaia-registry/gaia/tests/harness"
)

// accessCluster is a cluster (by default one IDC, idc-a; two servers
// behind a gateway per IDC) with the built-in token service, an admin
// token and an LDAP directory. Each IDC's servers name their own gateway
// as the token realm; all share the signing key and the database.
type accessCluster struct {
	*cluster
	idc      string // the first IDC
	gw       string // its gateway's host:port, what clients use
	keyFile  string
	ldap     *ldaptest.Dir
	env      harness.Env
	authYAML string // the first IDC's servers' auth (and admin) sections
	// config is a server's whole config text, as it was started with.
	config func(idc, addr string) string
}

const (
	accessAdminToken = "e2e-admin-token"
	accessService    = "gaia-e2e"
	decisionCache    = time.Second
)

func startAccessCluster(t *testing.T, idcs ...string) *accessCluster {
	if len(idcs) == 0 {
		idcs = []string{"idc-a"}
	}
	env := harness.Start(t, harness.Dockerd, harness.LDAP)
	dir := ldaptest.New(t)
	pem, err := tokenauth.GenerateKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "token.pem")
	if err := os.WriteFile(keyFile, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	lc := dir.Config
	var authYAML string
	tweak := func(c *cluster, cfg string) string {
		idc := cfg[strings.Index(cfg, "\n  idc: ")+len("\n  idc: "):]
		idc = idc[:strings.Index(idc, "\n")]
		y := fmt.Sprintf(`admin: {token: %q}
auth:
  builtin:
    realm: http://%s/auth/token
    service: %s
    issuer: gaia-e2e-issuer
    signingkeys: [%q]
    decisioncache: %s
    loginlimit: {pairfailures: 5, window: 1m}
    ldap: {url: %q, binddn: %q, bindpassword: %q, userbase: %q, groupbase: %q}
`, accessAdminToken, c.gwAddr[idc], accessService, keyFile, decisionCache, lc.URL, lc.BindDN, lc.BindPassword, lc.UserBase, lc.GroupBase)
		if idc == idcs[0] {
			authYAML = y
		}
		return cfg + y
	}
	c := startClusterWith(t, tweak, idcs...)
	return &accessCluster{cluster: c, idc: idcs[0], gw: c.gwAddr[idcs[0]], keyFile: keyFile, ldap: dir, env: env, authYAML: authYAML,
		config: func(idc, addr string) string { return tweak(c, serverConfig(c, idc, addr)) }}
}

// restartServers stops every server of idc and starts it again, on the
// same address, with its config text passed through edit; it returns once
// idc's gateway answers /v2/ through them again, 20 times in a row (it
// ejects a server that failed while it was down, for a while).
func (a *accessCluster) restartServers(t *testing.T, idc string, edit func(string) string) {
	t.Helper()
	for i, r := range a.servers[idc] {
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
		a.servers[idc][i] = harness.StartRegistry(t, r.Addr, edit(a.config(idc, r.Addr)))
	}
	deadline := time.Now().Add(time.Minute)
	for ok := 0; ok < 20; {
		resp, err := http.Get("http://" + a.gwAddr[idc] + "/v2/")
		ok++
		if err != nil || resp.StatusCode != http.StatusUnauthorized {
			ok = 0
		}
		if err == nil {
			resp.Body.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's gateway does not reach its restarted servers: %v", idc, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// admin calls the admin API of the first IDC's first server with the
// admin token.
func (a *accessCluster) admin(t *testing.T, method, path string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.servers[a.idc][0].URL()+"/admin/v1"+path, rd)
	req.Header.Set("Authorization", "Bearer "+accessAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

func (a *accessCluster) mustAdmin(t *testing.T, method, path string, body any) []byte {
	t.Helper()
	code, out := a.admin(t, method, path, body)
	if code >= 300 {
		t.Fatalf("%s %s: %d %s", method, path, code, out)
	}
	return out
}

// token asks the token service (through the gateway) for scopes, as user
// (anonymous when user is ""), and returns the token and the status.
func (a *accessCluster) token(t *testing.T, user, pass string, scopes ...string) (string, int) {
	t.Helper()
	return tokenAt(t, a.gw, user, pass, scopes...)
}

// tokenAt is token from the token service at host:port.
func tokenAt(t *testing.T, hostport, user, pass string, scopes ...string) (string, int) {
	t.Helper()
	q := url.Values{"service": {accessService}, "scope": scopes}
	req, _ := http.NewRequest("GET", "http://"+hostport+"/auth/token?"+q.Encode(), nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Token string }
	json.NewDecoder(resp.Body).Decode(&body)
	return body.Token, resp.StatusCode
}

type apiResult struct {
	status    int
	code      string // the first spec error code
	challenge string
	body      string
}

// regCall calls the registry API at base with a Bearer token ("" for none).
func regCall(t *testing.T, method, u, token string) apiResult {
	t.Helper()
	req, _ := http.NewRequest(method, u, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e struct{ Errors []struct{ Code string } }
	json.Unmarshal(b, &e)
	r := apiResult{status: resp.StatusCode, challenge: resp.Header.Get("WWW-Authenticate"), body: string(b)}
	if len(e.Errors) > 0 {
		r.code = e.Errors[0].Code
	}
	return r
}

// dockerAs runs the docker CLI with a config directory of its own (its
// own logins).
func (a *accessCluster) dockerAs(configDir string, args ...string) (string, error) {
	return harness.DockerErr(a.env, append([]string{"--config", configDir}, args...)...)
}

// TestBuiltinAuthRoleMatrix: through the gateway with the docker CLI after
// docker login, what each role and each robot permission may do (pull,
// push, delete, catalog), the exact refusals, anonymous pulls of a public
// namespace only, and an LDAP group's member losing push on every server
// within the decision cache's bound once removed from the group.
func TestBuiltinAuthRoleMatrix(t *testing.T) {
	a := startAccessCluster(t)
	for _, u := range []string{"root", "alice", "bob", "carol", "dave", "erin"} {
		a.mustAdmin(t, "POST", "/users", map[string]any{"name": u, "password": "pw-" + u + "-123", "admin": u == "root"})
	}
	a.mustAdmin(t, "POST", "/namespaces", map[string]any{"name": "team-a", "owner": "alice"})
	a.mustAdmin(t, "POST", "/namespaces", map[string]any{"name": "team-b"})
	a.mustAdmin(t, "POST", "/namespaces", map[string]any{"name": "pub", "public": true})
	for u, role := range map[string]string{"bob": "maintainer", "carol": "developer", "dave": "guest"} {
		a.mustAdmin(t, "PUT", "/namespaces/team-a/members/user/"+u, map[string]string{"role": role})
	}
	a.mustAdmin(t, "PUT", "/namespaces/team-b/members/user/erin", map[string]string{"role": "developer"})
	secrets := map[string]string{}
	for name, actions := range map[string][]string{"puller": {"pull"}, "pusher": {"pull", "push"}, "deleter": {"pull", "delete"}} {
		var out struct {
			Robot  struct{ Name string }
			Secret string
		}
		json.Unmarshal(a.mustAdmin(t, "POST", "/namespaces/team-a/robots", map[string]any{"name": name,
			"permissions": []map[string]any{{"namespace": "team-a", "actions": actions}}}), &out)
		secrets[out.Robot.Name] = out.Secret
	}

	// root seeds the repositories with the docker CLI.
	img := a.gw + "/team-a/app"
	harness.BuildImage(t, a.env, img+":seed", 50_000)
	t.Cleanup(func() { harness.DockerErr(a.env, "rmi", img+":seed") })
	rootCfg := t.TempDir()
	if out, err := a.dockerAs(rootCfg, "login", "-u", "root", "-p", "pw-root-123", a.gw); err != nil {
		t.Fatalf("root's docker login: %v\n%s", err, out)
	}
	for _, ref := range []string{"team-a/app:seed", "team-b/app:seed", "pub/tool:seed"} {
		if ref != "team-a/app:seed" {
			harness.Docker(t, a.env, "tag", img+":seed", a.gw+"/"+ref)
		}
		if out, err := a.dockerAs(rootCfg, "push", a.gw+"/"+ref); err != nil {
			t.Fatalf("root pushes %s: %v\n%s", ref, err, out)
		}
	}

	type principal struct{ name, pass string }
	var principals []principal
	for _, u := range []string{"alice", "bob", "carol", "dave", "erin"} {
		principals = append(principals, principal{u, "pw-" + u + "-123"})
	}
	for name, secret := range secrets {
		principals = append(principals, principal{name, secret})
	}
	slices.SortFunc(principals, func(x, y principal) int { return strings.Compare(x.name, y.name) })
	want := map[string]string{ // pull push delete, on team-a/app
		"alice": "ppd", "bob": "ppd", "carol": "pp-", "dave": "p--", "erin": "---",
		"robot$team-a+puller": "p--", "robot$team-a+pusher": "pp-", "robot$team-a+deleter": "p-d",
	}
	wantCatalog := map[string][]string{"erin": {"pub/tool", "team-b/app"}}
	for _, p := range principals {
		t.Run(strings.ReplaceAll(p.name, "$", "_"), func(t *testing.T) {
			cfg := t.TempDir()
			if out, err := a.dockerAs(cfg, "login", "-u", p.name, "-p", p.pass, a.gw); err != nil {
				t.Fatalf("docker login: %v\n%s", err, out)
			}
			got := []byte("---")
			// pull
			harness.DockerErr(a.env, "rmi", img+":seed")
			out, err := a.dockerAs(cfg, "pull", img+":seed")
			if err == nil {
				got[0] = 'p'
			} else if !strings.Contains(out, "denied") && !strings.Contains(out, "unauthorized") {
				t.Fatalf("refused pull says neither denied nor unauthorized:\n%s", out)
			}
			// push (a tag of its own)
			if err != nil {
				harness.BuildImage(t, a.env, img+":seed", 50_000)
			}
			tag := img + ":by-" + strings.NewReplacer("$", "-", "+", "-").Replace(p.name)
			harness.Docker(t, a.env, "tag", img+":seed", tag)
			out, err = a.dockerAs(cfg, "push", tag)
			harness.DockerErr(a.env, "rmi", tag)
			if err == nil {
				got[1] = 'p'
			} else if !strings.Contains(out, "denied") {
				t.Fatalf("refused push does not say denied:\n%s", out)
			}
			// delete: a tag root pushed for it (HTTP; the docker CLI has no delete)
			delTag := "del-" + strings.NewReplacer("$", "-", "+", "-").Replace(p.name)
			harness.Docker(t, a.env, "tag", img+":seed", img+":"+delTag)
			if out, err := a.dockerAs(rootCfg, "push", img+":"+delTag); err != nil {
				t.Fatalf("root pushes %s: %v\n%s", delTag, err, out)
			}
			harness.DockerErr(a.env, "rmi", img+":"+delTag)
			tok, status := a.token(t, p.name, p.pass, "repository:team-a/app:delete")
			if status != 200 {
				t.Fatalf("token for delete: %d", status)
			}
			r := regCall(t, "DELETE", "http://"+a.gw+"/v2/team-a/app/manifests/"+delTag, tok)
			switch {
			case r.status == 202:
				got[2] = 'd'
			case r.status == 403 && r.code == "DENIED" &&
				strings.Contains(r.challenge, `scope="repository:team-a/app:delete"`) && strings.Contains(r.challenge, `error="insufficient_scope"`):
			default:
				t.Fatalf("refused delete: %d %s %q %s", r.status, r.code, r.challenge, r.body)
			}
			if string(got) != want[p.name] {
				t.Errorf("%s on team-a/app: %s, want %s (pull push delete)", p.name, got, want[p.name])
			}
			// catalog: only what it may pull
			tok, _ = a.token(t, p.name, p.pass, "registry:catalog:*")
			r = regCall(t, "GET", "http://"+a.gw+"/v2/_catalog", tok)
			var cat struct{ Repositories []string }
			if r.status != 200 || json.Unmarshal([]byte(r.body), &cat) != nil {
				t.Fatalf("catalog: %d %s", r.status, r.body)
			}
			wc, ok := wantCatalog[p.name]
			if !ok {
				wc = []string{"pub/tool", "team-a/app"}
			}
			if !slices.Equal(cat.Repositories, wc) {
				t.Errorf("%s's catalog %v, want %v", p.name, cat.Repositories, wc)
			}
		})
	}

	t.Run("skopeo crane ctr", func(t *testing.T) {
		carol := "carol:pw-carol-123"
		skopeo(t, "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--src-creds", carol, "--dest-creds", carol,
			"docker://"+img+":seed", "docker://"+img+":by-skopeo")
		out, err := run("skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--src-creds", "dave:pw-dave-123",
			"--dest-creds", "dave:pw-dave-123", "docker://"+img+":seed", "docker://"+img+":by-dave-skopeo")
		if err == nil || !strings.Contains(out, "denied") {
			t.Fatalf("skopeo push as a guest: %v\n%s", err, out)
		}
		// crane with what docker login stored (docker keeps the token
		// service's refresh token as an identity token).
		cfg := t.TempDir()
		if out, err := a.dockerAs(cfg, "login", "-u", "carol", "-p", "pw-carol-123", a.gw); err != nil {
			t.Fatalf("docker login: %v\n%s", err, out)
		}
		stored, _ := os.ReadFile(filepath.Join(cfg, "config.json"))
		if !strings.Contains(string(stored), "identitytoken") {
			t.Errorf("docker login stored no identity token (refresh token): %s", stored)
		}
		crane := harness.GoTool(t, "github.com/google/go-containerregistry/cmd/crane", "v0.22.1")
		cmd := exec.Command(crane, "copy", "--insecure", img+":seed", img+":by-crane")
		cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+cfg)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("crane copy with docker's stored login: %v\n%s", err, out)
		}
		ctrSock := filepath.Join(filepath.Dir(strings.TrimPrefix(a.env["GAIA_TEST_DOCKER_HOST"], "unix://")), "exec", "containerd", "containerd.sock")
		ns := fmt.Sprintf("gaia-e2e-access-%d", time.Now().UnixNano())
		if out, err := run("ctr", "--address", ctrSock, "-n", ns, "images", "pull", "--plain-http", "--user", carol, img+":by-crane"); err != nil {
			t.Fatalf("ctr pull: %v\n%s", err, out)
		}
		run("ctr", "--address", ctrSock, "-n", ns, "images", "rm", "--sync", img+":by-crane")
		if out, err := run("ctr", "--address", ctrSock, "-n", ns, "images", "pull", "--plain-http", "--user", "erin:pw-erin-123", img+":seed"); err == nil {
			t.Fatalf("ctr pull by a non-member worked:\n%s", out)
		}
	})

	t.Run("anonymous", func(t *testing.T) {
		cfg := t.TempDir()
		harness.DockerErr(a.env, "rmi", a.gw+"/pub/tool:seed")
		if out, err := a.dockerAs(cfg, "pull", a.gw+"/pub/tool:seed"); err != nil {
			t.Fatalf("anonymous pull of a public namespace: %v\n%s", err, out)
		}
		harness.DockerErr(a.env, "rmi", a.gw+"/pub/tool:seed")
		if out, err := a.dockerAs(cfg, "pull", a.gw+"/team-b/app:seed"); err == nil {
			t.Fatalf("anonymous pull of a private namespace worked:\n%s", out)
		}
		r := regCall(t, "GET", "http://"+a.gw+"/v2/team-b/app/manifests/seed", "")
		if r.status != 401 || r.code != "UNAUTHORIZED" ||
			r.challenge != fmt.Sprintf(`Bearer realm="http://%s/auth/token",service=%q,scope="repository:team-b/app:pull"`, a.gw, accessService) {
			t.Fatalf("private manifest without a token: %d %s %q", r.status, r.code, r.challenge)
		}
		tok, status := a.token(t, "", "", "repository:team-b/app:pull")
		if r := regCall(t, "GET", "http://"+a.gw+"/v2/team-b/app/manifests/seed", tok); status != 200 || r.status != 403 || r.code != "DENIED" {
			t.Fatalf("private manifest with an anonymous token: token %d, then %d %s", status, r.status, r.code)
		}
	})

	t.Run("ldap group member loses push within the bound", func(t *testing.T) {
		a.ldap.AddUser("lenny", "ldap-pass-1")
		a.ldap.AddGroup("builders", "lenny")
		a.mustAdmin(t, "PUT", "/namespaces/team-a/members/group/builders", map[string]string{"role": "developer"})
		cfg := t.TempDir()
		if out, err := a.dockerAs(cfg, "login", "-u", "lenny", "-p", "ldap-pass-1", a.gw); err != nil {
			t.Fatalf("LDAP user's docker login: %v\n%s", err, out)
		}
		tag := img + ":by-lenny"
		harness.Docker(t, a.env, "tag", img+":seed", tag)
		t.Cleanup(func() { harness.DockerErr(a.env, "rmi", tag) })
		if out, err := a.dockerAs(cfg, "push", tag); err != nil {
			t.Fatalf("LDAP developer's push: %v\n%s", err, out)
		}
		// A token issued while lenny is in the group, used on every server
		// after the removal: refused once the bound has passed.
		tok, _ := a.token(t, "lenny", "ldap-pass-1", "repository:team-a/app:pull,push")
		a.ldap.RemoveMember("builders", "lenny")
		time.Sleep(decisionCache) // the bound under test, not a wait for an event
		for _, srv := range a.servers["idc-a"] {
			r := regCall(t, "POST", srv.URL()+"/v2/team-a/app/blobs/uploads/", tok)
			if r.status != 403 || r.code != "DENIED" {
				t.Fatalf("%s: push with a token from before the removal, after the bound: %d %s %s", srv.Addr, r.status, r.code, r.body)
			}
		}
		if out, err := a.dockerAs(cfg, "push", tag); err == nil || !strings.Contains(out, "denied") {
			t.Fatalf("push after removal from the group: %v\n%s", err, out)
		}
		if out, err := a.dockerAs(cfg, "pull", img+":seed"); err == nil {
			t.Fatalf("pull after removal from the group (no other role): worked\n%s", out)
		}
	})
}

// TestBuiltinAuthRefusals: a wrong password is 401 and in the audit log;
// a flood of wrong passwords for one user is answered 429 without
// slowing another user; malformed scopes, expired, tampered and
// foreign-signed tokens and an expired robot are each refused with the
// right error; pushes, pulls, logins and access changes reach the audit
// log.
func TestBuiltinAuthRefusals(t *testing.T) {
	a := startAccessCluster(t)
	a.mustAdmin(t, "POST", "/users", map[string]any{"name": "victim", "password": "pw-victim-123"})
	a.mustAdmin(t, "POST", "/users", map[string]any{"name": "other", "password": "pw-other-123"})
	a.mustAdmin(t, "POST", "/namespaces", map[string]any{"name": "ns", "owner": "other"})
	gw := "http://" + a.gw

	t.Run("wrong password", func(t *testing.T) {
		cfg := t.TempDir()
		if out, err := a.dockerAs(cfg, "login", "-u", "victim", "-p", "not-it", a.gw); err == nil {
			t.Fatalf("docker login with a wrong password worked:\n%s", out)
		}
		if _, status := a.token(t, "victim", "not-it", "repository:ns/app:pull"); status != 401 {
			t.Fatalf("token with a wrong password: %d, want 401", status)
		}
	})
	t.Run("flood is limited per user, not for others", func(t *testing.T) {
		// Each server limits on its own: flood each until it answers 429.
		for _, srv := range a.servers["idc-a"] {
			limited := false
			for i := 0; i < 20 && !limited; i++ {
				_, status := tokenAt(t, srv.Addr, "victim", fmt.Sprintf("guess-%d", i), "repository:ns/app:pull")
				limited = status == 429
				if !limited && status != 401 {
					t.Fatalf("%s: guess %d: %d", srv.Addr, i, status)
				}
			}
			if !limited {
				t.Fatalf("%s: 20 wrong passwords in a row for one user were never answered 429", srv.Addr)
			}
		}
		if _, status := a.token(t, "victim", "pw-victim-123", "repository:ns/app:pull"); status != 429 {
			t.Fatalf("the right password while limited: %d, want 429 (not even checked)", status)
		}
		if tok, status := a.token(t, "other", "pw-other-123", "repository:ns/app:pull,push"); status != 200 || tok == "" {
			t.Fatalf("another user during the flood: %d", status)
		}
	})
	t.Run("bad tokens and scopes", func(t *testing.T) {
		q := url.Values{"service": {accessService}, "scope": {"repository:ns/app"}}
		req, _ := http.NewRequest("GET", gw+"/auth/token?"+q.Encode(), nil)
		req.SetBasicAuth("other", "pw-other-123")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Fatalf("malformed scope: %d, want 400", resp.StatusCode)
		}
		keys, err := tokenauth.LoadKeys([]string{a.keyFile})
		if err != nil {
			t.Fatal(err)
		}
		access := []tokenauth.Access{{Type: "repository", Name: "ns/app", Actions: []string{"pull"}}}
		past := &tokenauth.Authority{Keys: keys, Issuer: "gaia-e2e-issuer", Service: accessService,
			Now: func() time.Time { return time.Now().Add(-time.Hour) }}
		expired, _, err := past.Issue("other", access, 5*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		good, status := a.token(t, "other", "pw-other-123", "repository:ns/app:pull")
		if status != 200 {
			t.Fatalf("token: %d", status)
		}
		parts := strings.Split(good, ".")
		payload := []byte(parts[1])
		payload[len(payload)/2] ^= 1
		tampered := parts[0] + "." + string(payload) + "." + parts[2]
		otherPEM, _ := tokenauth.GenerateKeyPEM()
		otherFile := filepath.Join(t.TempDir(), "k.pem")
		os.WriteFile(otherFile, otherPEM, 0o600)
		otherKeys, err := tokenauth.LoadKeys([]string{otherFile})
		if err != nil {
			t.Fatal(err)
		}
		foreign, _, _ := (&tokenauth.Authority{Keys: otherKeys, Issuer: "gaia-e2e-issuer", Service: accessService}).Issue("other", access, 5*time.Minute)
		for name, tok := range map[string]string{"expired": expired, "tampered": tampered, "unknown key": foreign} {
			r := regCall(t, "GET", gw+"/v2/ns/app/tags/list", tok)
			if r.status != 401 || r.code != "UNAUTHORIZED" || !strings.Contains(r.challenge, `error="invalid_token"`) {
				t.Errorf("%s token: %d %s %q", name, r.status, r.code, r.challenge)
			}
		}
		if r := regCall(t, "GET", gw+"/v2/ns/app/tags/list", good); r.status != 404 || r.code != "NAME_UNKNOWN" {
			t.Fatalf("the good token: %d %s", r.status, r.code)
		}
	})
	t.Run("robot rotation ends its old tokens", func(t *testing.T) {
		var out struct {
			Robot  struct{ Name string }
			Secret string
		}
		json.Unmarshal(a.mustAdmin(t, "POST", "/namespaces/ns/robots", map[string]any{"name": "rotated",
			"permissions": []map[string]any{{"namespace": "ns", "actions": []string{"pull"}}}}), &out)
		old, status := a.token(t, out.Robot.Name, out.Secret, "repository:ns/app:pull")
		if status != 200 {
			t.Fatalf("robot token: %d", status)
		}
		if r := regCall(t, "GET", gw+"/v2/ns/app/tags/list", old); r.status != 404 {
			t.Fatalf("robot's token before the rotation: %d %s", r.status, r.code)
		}
		time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second))) // rotate in a later second than iat
		a.mustAdmin(t, "POST", "/robots/"+url.PathEscape(out.Robot.Name)+"/rotate", nil)
		time.Sleep(decisionCache) // the bound under test
		for _, srv := range a.servers["idc-a"] {
			if r := regCall(t, "GET", srv.URL()+"/v2/ns/app/tags/list", old); r.status != 403 || r.code != "DENIED" {
				t.Fatalf("%s: the token from before the rotation: %d %s", srv.Addr, r.status, r.code)
			}
		}
	})
	t.Run("robot after expiry", func(t *testing.T) {
		exp := time.Now().Add(3 * time.Second).UTC()
		var out struct {
			Robot  struct{ Name string }
			Secret string
		}
		json.Unmarshal(a.mustAdmin(t, "POST", "/namespaces/ns/robots", map[string]any{"name": "short", "expires_at": exp,
			"permissions": []map[string]any{{"namespace": "ns", "actions": []string{"pull"}}}}), &out)
		tok, status := a.token(t, out.Robot.Name, out.Secret, "repository:ns/app:pull")
		if status != 200 {
			t.Fatalf("robot token before expiry: %d", status)
		}
		time.Sleep(time.Until(exp) + decisionCache) // past the expiry and the cache's bound
		if _, status := a.token(t, out.Robot.Name, out.Secret, "repository:ns/app:pull"); status != 401 {
			t.Fatalf("robot login after expiry: %d, want 401", status)
		}
		if r := regCall(t, "GET", gw+"/v2/ns/app/tags/list", tok); r.status != 403 || r.code != "DENIED" {
			t.Fatalf("robot's token from before its expiry, used after: %d %s", r.status, r.code)
		}
	})
	t.Run("caching gateway checks the same access", func(t *testing.T) {
		// A gateway answering manifests by digest from its cache checks
		// tokens and rechecks the access model itself.
		addr := harness.FreeAddr(t)
		cgw := harness.StartGateway(t, addr, gatewayConfig(a.cluster, "idc-a", addr, "local")+
			strings.Replace(a.authYAML, "admin: ", "# admin: ", 1)+fmt.Sprintf("cache: {maxbytes: 8388608}\ndatabase: {url: %q}\n", a.db))
		waitUntil(t, "gateway cache live", func() bool { return harness.Metric(t, cgw.URL(), "gaia_gateway_cache_live") == 1 })
		ref := a.gw + "/ns/cached:v1"
		harness.BuildImage(t, a.env, ref, 10_000)
		t.Cleanup(func() { harness.DockerErr(a.env, "rmi", ref) })
		cfg := t.TempDir()
		if out, err := a.dockerAs(cfg, "login", "-u", "other", "-p", "pw-other-123", a.gw); err != nil {
			t.Fatalf("docker login: %v\n%s", err, out)
		}
		if out, err := a.dockerAs(cfg, "push", ref); err != nil {
			t.Fatalf("push: %v\n%s", err, out)
		}
		a.mustAdmin(t, "PUT", "/namespaces/ns/members/user/victim", map[string]string{"role": "guest"})
		tok, _ := a.token(t, "other", "pw-other-123", "repository:ns/cached:pull")
		r := regCall(t, "GET", "http://"+a.gw+"/v2/ns/cached/manifests/v1", tok)
		digest := ""
		if r.status == 200 {
			req, _ := http.NewRequest("HEAD", "http://"+a.gw+"/v2/ns/cached/manifests/v1", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
			if resp, err := http.DefaultClient.Do(req); err == nil {
				digest = resp.Header.Get("Docker-Content-Digest")
				resp.Body.Close()
			}
		}
		if digest == "" {
			t.Fatalf("manifest by tag: %d %s", r.status, r.body)
		}
		byDigest := "http://" + addr + "/v2/ns/cached/manifests/" + digest
		// victim's login is limited by the flood above: a token issued
		// here directly stands for one it got earlier.
		keys, err := tokenauth.LoadKeys([]string{a.keyFile})
		if err != nil {
			t.Fatal(err)
		}
		victimTok, _, _ := (&tokenauth.Authority{Keys: keys, Issuer: "gaia-e2e-issuer", Service: accessService}).Issue("victim",
			[]tokenauth.Access{{Type: "repository", Name: "ns/cached", Actions: []string{"pull"}}}, 5*time.Minute)
		hits := func() float64 {
			return harness.Metric(t, cgw.URL(), "gaia_gateway_cache_requests_total", `result="hit"`)
		}
		for i := 0; i < 2; i++ {
			if r := regCall(t, "GET", byDigest, victimTok); r.status != 200 {
				t.Fatalf("guest's GET by digest %d: %d %s", i, r.status, r.body)
			}
		}
		if hits() == 0 {
			t.Fatal("the second GET by digest was no cache hit")
		}
		if r := regCall(t, "GET", byDigest, ""); r.status != 401 || r.code != "UNAUTHORIZED" {
			t.Fatalf("cached manifest without a token: %d %s", r.status, r.code)
		}
		a.mustAdmin(t, "DELETE", "/namespaces/ns/members/user/victim", nil)
		time.Sleep(decisionCache) // the bound under test
		h0 := hits()
		if r := regCall(t, "GET", byDigest, victimTok); r.status != 403 || r.code != "DENIED" {
			t.Fatalf("cached manifest after the guest's removal: %d %s", r.status, r.code)
		}
		if hits() != h0 {
			t.Fatal("a refused request was answered from the cache")
		}
	})
	t.Run("audit log", func(t *testing.T) {
		var got struct {
			Events []struct{ Actor, Action, Namespace, Remote string }
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, body := a.admin(t, "GET", "/audit?action=login_failed&actor=victim", nil)
			json.Unmarshal(body, &got)
			if len(got.Events) > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if len(got.Events) == 0 || got.Events[0].Remote == "" {
			t.Fatalf("no login_failed event for victim with a remote address: %+v", got.Events)
		}
		_, body := a.admin(t, "GET", "/audit?action=robot_create&namespace=ns", nil)
		json.Unmarshal(body, &got)
		if len(got.Events) != 2 || got.Events[0].Actor != "(admin token)" {
			t.Fatalf("robot_create events: %s", body)
		}
	})
}
