package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/gaia-registry/gaia/mirror-sync/admin"
)

// run runs gaiactl in-process and returns its exit status and outputs.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := execute(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestExitStatusAndHelp(t *testing.T) {
	t.Setenv("GAIA_CLUSTER", "")
	t.Setenv("GAIA_SCHEDULER_URL", "")
	for _, tc := range []struct {
		args []string
		code int
		want string // in stdout for 0, stderr otherwise
	}{
		{[]string{"--help"}, 0, "usage: gaiactl COMMAND"},
		{[]string{"help", "app"}, 0, "usage: gaiactl app COMMAND"},
		{[]string{"mirror", "--help"}, 0, "usage: gaiactl mirror COMMAND"},
		{[]string{"app", "scale", "--help"}, 0, "usage: gaiactl app scale NAME N"},
		{[]string{"pool", "-h"}, 0, "load"},
		{[]string{"completion", "bash"}, 0, "__start_gaiactl"},
		{[]string{"completion", "zsh"}, 0, "#compdef gaiactl"},
		{[]string{"completion", "fish"}, 0, "complete -c gaiactl"},
		{nil, 2, "usage: gaiactl COMMAND"},
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
		{[]string{"mirror"}, 2, "usage: gaiactl mirror COMMAND"},
		{[]string{"mirror", "frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"mirror", "show"}, 2, "NAME is needed"},
		{[]string{"mirror", "list", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"mirror", "create"}, 2, "-f FILE is needed"},
		{[]string{"mirror", "list", "--bogus"}, 2, "unknown flag: --bogus"},
		{[]string{"-o", "yaml", "mirror", "list"}, 2, `"yaml" is not table or json`},
		{[]string{"--cluster", "x", "mirror", "list"}, 2, "--cluster does not apply"},
		{[]string{"app", "list"}, 2, "which scheduler?"},
		{[]string{"--server", "http://a", "--cluster", "b", "app", "list"}, 2, "not both"},
		{[]string{"--server", "http://a", "app", "scale", "web"}, 2, "N is needed"},
		{[]string{"--server", "http://a", "app", "scale", "web", "many"}, 2, `"many"`},
		{[]string{"--server", "http://a", "app", "submit"}, 2, "-f FILE is needed"},
		{[]string{"--server", "http://a", "pool", "load"}, 2, "-f FILE is needed"},
		{[]string{"--server", "http://a", "instance", "stop"}, 2, "ID is needed"},
		{[]string{"--server", "http://127.0.0.1:1", "node", "list"}, 1, "gaiactl: "},
	} {
		code, out, errs := run(t, tc.args...)
		where := errs
		if tc.code == 0 {
			where = out
		}
		if code != tc.code || !strings.Contains(where, tc.want) {
			t.Errorf("gaiactl %q: exit %d, want %d with %q\nstdout: %s\nstderr: %s", tc.args, code, tc.code, tc.want, out, errs)
		}
	}
}

// TestMirror: the mirror commands send what they did before cobra, and a
// server error names the field.
func TestMirror(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("Authorization")+" "+string(body))
		mu.Unlock()
		switch {
		case r.Method == "GET" && r.URL.Path == admin.Prefix:
			w.Write([]byte(`[{"rule":{"name":"hub","upstream":{"url":"https://up"},"repositories":["library/nginx"],"destination":"m","schedule":"6h","enabled":true}}]`))
		case r.Method == "POST" && r.URL.Path == admin.Prefix:
			w.WriteHeader(400)
			w.Write([]byte(`{"error":{"field":"schedule","message":"not a duration or cron expression"}}`))
		case r.URL.Path == admin.Prefix+"/hub/runs":
			w.Write([]byte(`[{"id":7,"trigger":"manual","state":"queued"}]`))
		case r.Method == "DELETE":
			w.WriteHeader(204)
		default:
			w.WriteHeader(404)
			w.Write([]byte(`{"error":{"field":"name","message":"no such mirror rule"}}`))
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	rule := filepath.Join(dir, "r.yaml")
	os.WriteFile(rule, []byte("name: bad\nschedule: every day\n"), 0o644)
	g := []string{"--server", srv.URL, "--token", "tok"}
	for _, tc := range []struct {
		args      []string
		code      int
		want, req string
	}{
		{[]string{"mirror", "list"}, 0, "library/nginx", "GET " + admin.Prefix + " Bearer tok "},
		{[]string{"mirror", "list", "-o", "json"}, 0, `"name":"hub"`, "GET " + admin.Prefix + " Bearer tok "},
		{[]string{"mirror", "create", "-f", rule, "--check"}, 1, "schedule: not a duration", "POST " + admin.Prefix + "?check=1 Bearer tok " + `{"name":"bad","schedule":"every day"}`},
		{[]string{"mirror", "history", "hub", "--limit", "5"}, 0, "queued", "GET " + admin.Prefix + "/hub/runs?limit=5 Bearer tok "},
		{[]string{"mirror", "status", "gone"}, 1, "name: no such mirror rule", "GET " + admin.Prefix + "/gone Bearer tok "},
		{[]string{"mirror", "delete", "hub"}, 0, "deleted hub", "DELETE " + admin.Prefix + "/hub Bearer tok "},
	} {
		mu.Lock()
		got = nil
		mu.Unlock()
		code, out, errs := run(t, append(g, tc.args...)...)
		if code != tc.code || !strings.Contains(out+errs, tc.want) {
			t.Errorf("%q: exit %d, want %d with %q\n%s%s", tc.args, code, tc.code, tc.want, out, errs)
		}
		mu.Lock()
		if len(got) != 1 || got[0] != tc.req {
			t.Errorf("%q: requests %q, want %q", tc.args, got, tc.req)
		}
		mu.Unlock()
	}
	// $GAIA_ADMIN_URL and $GAIA_ADMIN_TOKEN are the defaults.
	t.Setenv("GAIA_ADMIN_URL", srv.URL)
	t.Setenv("GAIA_ADMIN_TOKEN", "envtok")
	got = nil
	if code, out, errs := run(t, "mirror", "list"); code != 0 || len(got) != 1 || !strings.Contains(got[0], "Bearer envtok") {
		t.Errorf("env defaults: exit %d %q\n%s%s", code, got, out, errs)
	}
}

// fakeConsul answers /v1/health/service/gaia-scheduler like Consul, with
// the entries whose tags include the asked tag.
func fakeConsul(t *testing.T, entries []map[string]any) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/health/service/gaia-scheduler" || r.URL.Query().Get("passing") == "" {
			t.Errorf("consul asked %s", r.URL)
			w.WriteHeader(404)
			return
		}
		tag := r.URL.Query().Get("tag")
		out := []map[string]any{}
		for _, e := range entries {
			for _, tg := range e["Service"].(map[string]any)["Tags"].([]string) {
				if tg == tag {
					out = append(out, e)
				}
			}
		}
		json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func entry(addr string, port int, tags ...string) map[string]any {
	return map[string]any{
		"Node":    map[string]any{"Node": "n", "Address": "127.0.0.9"},
		"Service": map[string]any{"ID": addr, "Service": "gaia-scheduler", "Address": addr, "Port": port, "Tags": tags},
	}
}

func TestClusterResolution(t *testing.T) {
	consul := fakeConsul(t, []map[string]any{
		entry("10.0.0.1", 7001, "cluster=a"),
		entry("10.0.0.2", 7002, "cluster=a", "leader"),
		entry("10.0.0.3", 7003, "cluster=a"),
		entry("", 7004, "cluster=b"),
	})
	addr := strings.TrimPrefix(consul.URL, "http://")
	for _, tc := range []struct{ cluster, want, err string }{
		{"a", "http://10.0.0.2:7002", ""},  // the leader
		{"b", "http://127.0.0.9:7004", ""}, // no service address: the node's
		{"c", "", `no passing gaia-scheduler instance tagged cluster=c in Consul at ` + addr},
	} {
		got, err := resolveCluster(addr, tc.cluster)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("cluster %s: %q, %v; want %q, %q", tc.cluster, got, err, tc.want, tc.err)
		}
	}
	// Through the command line: --consul, and $CONSUL_HTTP_ADDR as its default.
	sched := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"items":[],"next":""}`))
	}))
	defer sched.Close()
	u, _ := url.Parse(sched.URL)
	consul2 := fakeConsul(t, []map[string]any{entry(u.Hostname(), atoi(u.Port()), "cluster=live")})
	if code, out, errs := run(t, "--consul", consul2.URL, "--cluster", "live", "node", "list"); code != 0 {
		t.Errorf("--cluster live: exit %d\n%s%s", code, out, errs)
	}
	t.Setenv("CONSUL_HTTP_ADDR", strings.TrimPrefix(consul2.URL, "http://"))
	if code, out, errs := run(t, "--cluster", "live", "node", "list"); code != 0 {
		t.Errorf("--cluster live with $CONSUL_HTTP_ADDR: exit %d\n%s%s", code, out, errs)
	}
	if code, _, errs := run(t, "--cluster", "nope", "node", "list"); code != 1 || !strings.Contains(errs, "no passing gaia-scheduler instance tagged cluster=nope") {
		t.Errorf("--cluster nope: exit %d\n%s", code, errs)
	}
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}
