package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/gaia-registry/gaia/scheduler/allocfile"
	"github.com/gaia-registry/gaia/scheduler/model"
)

// fakeSched is an in-process scheduler API: each request is recorded and
// answered by the first route whose "METHOD /path" (query excluded)
// matches.
type fakeSched struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	reqs   []req
	routes map[string]func(r *http.Request, body []byte) (int, string)
}

type req struct {
	Method, URI, Auth, Body string
}

func newFakeSched(t *testing.T) *fakeSched {
	f := &fakeSched{t: t, routes: map[string]func(*http.Request, []byte) (int, string){}}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, req{r.Method, r.URL.RequestURI(), r.Header.Get("Authorization"), string(body)})
		h := f.routes[r.Method+" "+r.URL.Path]
		f.mu.Unlock()
		if len(body) > 0 && r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: Content-Type %q", r.Method, r.URL, r.Header.Get("Content-Type"))
		}
		if h == nil {
			w.WriteHeader(404)
			io.WriteString(w, `{"error":{"code":"not_found","message":"no route in the fake"}}`)
			return
		}
		code, out := h(r, body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		io.WriteString(w, out)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeSched) on(route string, code int, body string) {
	f.mu.Lock()
	f.routes[route] = func(*http.Request, []byte) (int, string) { return code, body }
	f.mu.Unlock()
}

func (f *fakeSched) handle(route string, h func(r *http.Request, body []byte) (int, string)) {
	f.mu.Lock()
	f.routes[route] = h
	f.mu.Unlock()
}

// take returns the requests since the last take.
func (f *fakeSched) take() []req {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.reqs
	f.reqs = nil
	return r
}

// gaiactl runs gaiactl against the fake with the token "tok".
func (f *fakeSched) gaiactl(args ...string) (int, string, string) {
	return run(f.t, append([]string{"--server", f.srv.URL, "--token", "tok"}, args...)...)
}

const webApp = `{"spec":{"name":"web","pool":"root.ads.search","image":"r/ads/web:1","instances":3,"resources":{"cpu":"2","memory":"4Gi"},"update":{"canary":1}},"version":4,"digest":"sha256:abc","state":"running","createdAt":"2026-11-30T01:00:00Z","updatedAt":"2026-11-30T02:00:00Z"}`

func TestAppSubmit(t *testing.T) {
	f := newFakeSched(t)
	f.on("POST /v1/apps", 201, webApp)
	code, out, errs := f.gaiactl("app", "submit", "-f", "../../configs/apps/web.yaml")
	if code != 0 || !strings.Contains(out, "submitted web: version 4, running") {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	reqs := f.take()
	if len(reqs) != 1 || reqs[0].Method != "POST" || reqs[0].URI != "/v1/apps" || reqs[0].Auth != "Bearer tok" {
		t.Fatalf("requests %+v", reqs)
	}
	// The body is the file's spec, every field of it.
	want, err := readSpec("../../configs/apps/web.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var got model.AppSpec
	if err := json.Unmarshal([]byte(reqs[0].Body), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&got, want) {
		t.Fatalf("sent %+v\nwant %+v", got, *want)
	}
	if want.Health == nil || want.Update.Canary != 1 || len(want.Ports) != 3 || want.Constraints.IDC == "" || want.MemoryLimit == 0 {
		t.Fatalf("the example lost fields: %+v", *want)
	}
	// A conflict from the server: its field and message are printed, exit 1.
	f.on("POST /v1/apps", 409, `{"error":{"code":"conflict","field":"name","message":"app web already exists in pool root.ads.search"}}`)
	code, _, errs = f.gaiactl("app", "submit", "-f", "../../configs/apps/web.yaml", "--image", "r/ads/web:2")
	if code != 1 || !strings.Contains(errs, "gaiactl: name: app web already exists in pool root.ads.search (conflict)") {
		t.Fatalf("conflict: exit %d\n%s", code, errs)
	}
	if reqs := f.take(); len(reqs) != 1 || !strings.Contains(reqs[0].Body, `"image":"r/ads/web:2"`) {
		t.Fatalf("--image not sent: %+v", reqs)
	}
	// Mistakes found before sending name the field; nothing is sent.
	dir := t.TempDir()
	for name, tc := range map[string]struct{ text, want string }{
		"mem.yaml":     {"name: web\npool: root.a\nimage: x\ninstances: 1\nresources: {cpu: 1, memory: lots}\n", "resources.memory"},
		"port.yaml":    {"name: web\npool: root.a\nimage: x\nresources: {cpu: 1, memory: 1Gi}\nports: [{name: http, containerPort: 99999}]\n", "ports[0].containerPort"},
		"unknown.yaml": {"name: web\npool: root.a\nimage: x\ncolour: red\n", "field colour not found"},
		"name.json":    {`{"name":"Web!","pool":"root.a","image":"x","resources":{"cpu":"1","memory":"1Gi"}}`, "name: \"Web!\""},
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(tc.text), 0o644)
		code, _, errs := f.gaiactl("app", "submit", "-f", p)
		if code != 1 || !strings.Contains(errs, tc.want) {
			t.Errorf("%s: exit %d, want 1 naming %q\n%s", name, code, tc.want, errs)
		}
		if reqs := f.take(); len(reqs) != 0 {
			t.Errorf("%s: sent %+v", name, reqs)
		}
	}
}

func TestAppListFollowsCursors(t *testing.T) {
	f := newFakeSched(t)
	app := func(n string) string { return strings.Replace(webApp, `"name":"web"`, `"name":"`+n+`"`, 1) }
	f.handle("GET /v1/apps", func(r *http.Request, _ []byte) (int, string) {
		switch r.URL.Query().Get("after") {
		case "":
			return 200, `{"items":[` + app("a1") + `,` + app("a2") + `],"next":"c1"}`
		case "c1":
			return 200, `{"items":[` + app("a3") + `,` + app("a4") + `],"next":"c2"}`
		case "c2":
			return 200, `{"items":[` + app("a5") + `],"next":""}`
		}
		return 400, `{"error":{"code":"invalid","field":"after","message":"bad cursor"}}`
	})
	code, out, errs := f.gaiactl("app", "list")
	if code != 0 || strings.Count(out, "root.ads.search") != 5 || !strings.Contains(out, "a5") || !strings.HasPrefix(out, "NAME") {
		t.Fatalf("list: exit %d\n%s%s", code, out, errs)
	}
	if got := uris(f.take()); got != "/v1/apps /v1/apps?after=c1 /v1/apps?after=c2" {
		t.Fatalf("requests %s", got)
	}
	// --limit: at most that many, asking for what is still wanted.
	code, out, _ = f.gaiactl("app", "list", "--limit", "3")
	if code != 0 || strings.Count(out, "root.ads.search") != 3 || strings.Contains(out, "a4") {
		t.Fatalf("--limit 3:\n%s", out)
	}
	if got := uris(f.take()); got != "/v1/apps?limit=3 /v1/apps?after=c1&limit=1" {
		t.Fatalf("--limit 3 requests %s", got)
	}
	// -o json: one array of every page's items.
	code, out, _ = f.gaiactl("app", "list", "-o", "json")
	var items []model.App
	if code != 0 || json.Unmarshal([]byte(out), &items) != nil || len(items) != 5 || items[4].Spec.Name != "a5" {
		t.Fatalf("-o json:\n%s", out)
	}
	f.take()
	// An error on a later page names its field.
	f.handle("GET /v1/apps", func(r *http.Request, _ []byte) (int, string) {
		if r.URL.Query().Get("after") == "" {
			return 200, `{"items":[` + app("a1") + `],"next":"zz"}`
		}
		return 400, `{"error":{"code":"invalid","field":"after","message":"unknown cursor"}}`
	})
	if code, _, errs := f.gaiactl("app", "list"); code != 1 || !strings.Contains(errs, "after: unknown cursor") {
		t.Fatalf("error page: exit %d %s", code, errs)
	}
}

func uris(reqs []req) string {
	var s []string
	for _, r := range reqs {
		s = append(s, r.URI)
	}
	return strings.Join(s, " ")
}

func TestAppActions(t *testing.T) {
	f := newFakeSched(t)
	for _, v := range []string{"scale", "restart", "update", "promote", "rollback", "stop", "start"} {
		f.on("POST /v1/apps/web/"+v, 200, webApp)
	}
	f.on("GET /v1/apps/web", 200, webApp)
	f.on("DELETE /v1/apps/web", 204, "")
	f.on("GET /v1/apps/web/instances", 200, `{"items":[{"id":"web-0a1b2c3d","app":"web","version":4,"node":"n1","hostPorts":{"http":31000,"admin":31001},"state":"healthy","desired":"run","restarts":1}],"next":""}`)
	f.on("GET /v1/apps/web/versions", 200, `{"items":[{"version":4,"spec":{"name":"web","image":"r/ads/web:1","instances":3,"resources":{"cpu":"2","memory":"4Gi"}},"createdAt":"2026-11-30T02:00:00Z"}],"next":""}`)
	f.on("POST /v1/instances/web-0a1b2c3d/stop", 200, `{"id":"web-0a1b2c3d","app":"web","state":"stopping"}`)
	dir := t.TempDir()
	other := filepath.Join(dir, "other.yaml")
	os.WriteFile(other, []byte("name: api\npool: root.a\nimage: x\nresources: {cpu: 1, memory: 1Gi}\n"), 0o644)
	noName := filepath.Join(dir, "noname.yaml")
	os.WriteFile(noName, []byte("pool: root.a\nimage: x:2\ninstances: 2\nresources: {cpu: 1, memory: 1Gi}\n"), 0o644)
	for _, tc := range []struct {
		args []string
		want string // in stdout
		reqs []req  // Auth is always checked as "Bearer tok"
	}{
		{[]string{"app", "scale", "web", "5"}, "scaling web: version 4", []req{{"POST", "/v1/apps/web/scale", "", `{"instances":5}`}}},
		{[]string{"app", "scale", "web", "0"}, "scaling web", []req{{"POST", "/v1/apps/web/scale", "", `{"instances":0}`}}},
		{[]string{"app", "restart", "web"}, "restarting web", []req{{"POST", "/v1/apps/web/restart", "", ""}}},
		{[]string{"app", "promote", "web"}, "promoted web", []req{{"POST", "/v1/apps/web/promote", "", ""}}},
		{[]string{"app", "rollback", "web"}, "rolling back web", []req{{"POST", "/v1/apps/web/rollback", "", `{}`}}},
		{[]string{"app", "rollback", "web", "--version", "2"}, "rolling back web", []req{{"POST", "/v1/apps/web/rollback", "", `{"version":2}`}}},
		{[]string{"app", "stop", "web"}, "stopping web", []req{{"POST", "/v1/apps/web/stop", "", ""}}},
		{[]string{"app", "start", "web"}, "starting web", []req{{"POST", "/v1/apps/web/start", "", ""}}},
		{[]string{"app", "delete", "web"}, "deleted web", []req{{"DELETE", "/v1/apps/web", "", ""}}},
		{[]string{"app", "show", "web"}, "digest:    sha256:abc", []req{{"GET", "/v1/apps/web", "", ""}}},
		{[]string{"app", "instances", "web"}, "admin:31001,http:31000", []req{{"GET", "/v1/apps/web/instances", "", ""}}},
		{[]string{"app", "versions", "web"}, "r/ads/web:1", []req{{"GET", "/v1/apps/web/versions", "", ""}}},
		{[]string{"instance", "stop", "web-0a1b2c3d"}, "stopping web-0a1b2c3d", []req{{"POST", "/v1/instances/web-0a1b2c3d/stop", "", ""}}},
		// --image alone: the current spec with the new image.
		{[]string{"app", "update", "web", "--image", "r/ads/web:2"}, "updated web", []req{{"GET", "/v1/apps/web", "", ""},
			{"POST", "/v1/apps/web/update", "", `{"name":"web","pool":"root.ads.search","image":"r/ads/web:2","instances":3,"resources":{"cpu":"2","memory":"4Gi"},"update":{"canary":1}}`}}},
		// -f without a name: the app's.
		{[]string{"app", "update", "web", "-f", noName}, "updated web", []req{
			{"POST", "/v1/apps/web/update", "", `{"name":"web","pool":"root.a","image":"x:2","instances":2,"resources":{"cpu":"1","memory":"1Gi"}}`}}},
	} {
		code, out, errs := f.gaiactl(tc.args...)
		if code != 0 || !strings.Contains(out, tc.want) {
			t.Errorf("%q: exit %d, want %q\n%s%s", tc.args, code, tc.want, out, errs)
		}
		got := f.take()
		for i := range got {
			if got[i].Auth != "Bearer tok" {
				t.Errorf("%q: Authorization %q", tc.args, got[i].Auth)
			}
			got[i].Auth = ""
		}
		if !reflect.DeepEqual(got, tc.reqs) {
			t.Errorf("%q: requests\n%+v\nwant\n%+v", tc.args, got, tc.reqs)
		}
	}
	// JSON output is the server's, indented.
	if code, out, _ := f.gaiactl("-o", "json", "app", "show", "web"); code != 0 || !strings.Contains(out, "\n  \"spec\": {") {
		t.Errorf("-o json show:\n%s", out)
	}
	f.take()
	// update -f naming another app is refused before sending.
	if code, _, errs := f.gaiactl("app", "update", "web", "-f", other); code != 1 || !strings.Contains(errs, `name: "api" is not the app "web"`) {
		t.Errorf("update another app: exit %d %s", code, errs)
	}
	if code, _, errs := f.gaiactl("app", "update", "web"); code != 2 || !strings.Contains(errs, "-f FILE or --image REF is needed") {
		t.Errorf("update with nothing: exit %d %s", code, errs)
	}
	if reqs := f.take(); len(reqs) != 0 {
		t.Errorf("sent %+v", reqs)
	}
	// A refused action: the error body's field is printed.
	f.on("POST /v1/apps/web/scale", 400, `{"error":{"code":"invalid","field":"instances","message":"pool root.ads.search allows at most 500 instances"}}`)
	if code, _, errs := f.gaiactl("app", "scale", "web", "900"); code != 1 || !strings.Contains(errs, "instances: pool root.ads.search allows at most 500 instances (invalid)") {
		t.Errorf("refused scale: exit %d %s", code, errs)
	}
	f.on("POST /v1/apps/web/rollback", 404, `{"error":{"code":"not_found","field":"version","message":"web has no version 9"}}`)
	if code, _, errs := f.gaiactl("app", "rollback", "web", "--version", "9"); code != 1 || !strings.Contains(errs, "version: web has no version 9") {
		t.Errorf("refused rollback: exit %d %s", code, errs)
	}
	// A server that answers no JSON error: the status.
	f.on("POST /v1/apps/web/stop", 502, "bad gateway")
	if code, _, errs := f.gaiactl("app", "stop", "web"); code != 1 || !strings.Contains(errs, "502") {
		t.Errorf("502: exit %d %s", code, errs)
	}
}

func TestPools(t *testing.T) {
	f := newFakeSched(t)
	f.on("GET /v1/pools", 200, `{"items":[{"name":"root"},{"name":"root.ads","weight":3,"min":{"cpu":"100"}}],"next":""}`)
	f.on("GET /v1/pools/root.ads", 200, `{"name":"root.ads","weight":3,"min":{"cpu":"100"},"policy":"fair"}`)
	f.on("POST /v1/pools", 201, `{}`)
	for _, n := range []string{"root", "root.ads", "root.ads.search", "root.ads.display", "root.batch", "root.batch.nightly"} {
		f.on("PUT /v1/pools/"+n, 200, `{}`)
	}
	f.on("DELETE /v1/pools/root.dev", 204, "")
	code, out, errs := f.gaiactl("pool", "list")
	if code != 0 || !strings.Contains(out, "root.ads") || !strings.Contains(out, "cpu=100") {
		t.Fatalf("list: %d\n%s%s", code, out, errs)
	}
	if code, out, _ := f.gaiactl("pool", "show", "root.ads"); code != 0 || !strings.Contains(out, "policy: fair") {
		t.Fatalf("show:\n%s", out)
	}
	f.take()
	// create -f pools.yaml: every pool, in order.
	code, out, errs = f.gaiactl("pool", "create", "-f", "../../configs/pools/pools.yaml")
	if code != 0 || strings.Count(out, "created ") != 5 {
		t.Fatalf("create: %d\n%s%s", code, out, errs)
	}
	reqs := f.take()
	if len(reqs) != 5 || reqs[0].URI != "/v1/pools" || !strings.Contains(reqs[0].Body, `"name":"root.ads"`) || !strings.Contains(reqs[4].Body, `"root.batch.nightly"`) {
		t.Fatalf("create requests %+v", reqs)
	}
	code, out, _ = f.gaiactl("pool", "update", "-f", "../../configs/pools/pools.yaml")
	if code != 0 || !strings.Contains(out, "updated root.ads.search") || !strings.Contains(uris(f.take()), "/v1/pools/root.ads.search") {
		t.Fatalf("update:\n%s", out)
	}
	// load: PUT what exists (root, root.ads), POST the rest, parents first.
	code, out, errs = f.gaiactl("pool", "load", "-f", "../../configs/pools/allocation.xml")
	if code != 0 || !strings.Contains(out, "updated root\nupdated root.ads\ncreated root.ads.search\n") || !strings.Contains(errs, "queueMaxAppsDefault>: ignored") {
		t.Fatalf("load: %d\n%s%s", code, out, errs)
	}
	want, _, _ := allocfile.Load("../../configs/pools/allocation.xml")
	reqs = f.take()
	if len(reqs) != 1+len(want) || reqs[0].URI != "/v1/pools" {
		t.Fatalf("load requests %+v", reqs)
	}
	for i, p := range want {
		r := reqs[i+1]
		var sent model.Pool
		json.Unmarshal([]byte(r.Body), &sent)
		method := "POST"
		if p.Name == "root" || p.Name == "root.ads" {
			method = "PUT"
		}
		if r.Method != method || !reflect.DeepEqual(sent, p) {
			t.Errorf("pool %s: %s %s %s", p.Name, r.Method, r.URI, r.Body)
		}
	}
	// A refusal names the pool and the field, and stops there.
	f.on("POST /v1/pools", 400, `{"error":{"code":"invalid","field":"min.cpu","message":"children's min exceeds the parent's"}}`)
	code, out, errs = f.gaiactl("pool", "load", "-f", "../../configs/pools/allocation.xml")
	if code != 1 || !strings.Contains(errs, "gaiactl: pool root.ads.search: min.cpu: children's min exceeds the parent's (invalid)") || strings.Contains(out, "display") {
		t.Fatalf("refused load: %d\n%s%s", code, out, errs)
	}
	f.take()
	// A bad file: named by line, nothing sent.
	bad := filepath.Join(t.TempDir(), "a.xml")
	os.WriteFile(bad, []byte("<allocations>\n<queue name=\"x\"><weight>-1</weight></queue></allocations>"), 0o644)
	if code, _, errs := f.gaiactl("pool", "load", "-f", bad); code != 1 || !strings.Contains(errs, bad+":2: <weight> of root.x") {
		t.Fatalf("bad file: %d %s", code, errs)
	}
	badPool := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(badPool, []byte("name: root.x\nmin: {cpu: 4}\nmax: {cpu: 2}\n"), 0o644)
	if code, _, errs := f.gaiactl("pool", "create", "-f", badPool); code != 1 || !strings.Contains(errs, "root.x: min.cpu: 4 is above max 2") {
		t.Fatalf("bad pool: %d %s", code, errs)
	}
	if reqs := f.take(); len(reqs) != 0 {
		t.Fatalf("sent %+v", reqs)
	}
	if code, out, _ := f.gaiactl("pool", "delete", "root.dev"); code != 0 || out != "deleted root.dev\n" {
		t.Fatalf("delete: %s", out)
	}
	if got := f.take(); len(got) != 1 || got[0].Method != "DELETE" || got[0].URI != "/v1/pools/root.dev" {
		t.Fatalf("delete: %+v", got)
	}
}

func TestNodes(t *testing.T) {
	f := newFakeSched(t)
	f.on("GET /v1/nodes", 200, `{"items":[{"name":"n1","idc":"sz-1","labels":{"disk":"ssd"},"capacity":{"cpu":"32","memory":"128Gi"},"reserved":{"cpu":"2","memory":"8Gi"},"state":"ready"}],"next":""}`)
	f.on("GET /v1/nodes/n1", 200, `{"name":"n1","idc":"sz-1","capacity":{"cpu":"32"},"reserved":{},"state":"ready"}`)
	f.on("POST /v1/nodes/n1/drain", 200, `{"name":"n1","state":"draining"}`)
	f.on("POST /v1/nodes/n9/drain", 404, `{"error":{"code":"not_found","field":"name","message":"no node n9"}}`)
	if code, out, _ := f.gaiactl("node", "list"); code != 0 || !strings.Contains(out, "cpu=30 memory=120Gi") || !strings.Contains(out, "disk=ssd") {
		t.Fatalf("list:\n%s", out)
	}
	if code, out, _ := f.gaiactl("node", "show", "n1"); code != 0 || !strings.Contains(out, "idc: sz-1") {
		t.Fatalf("show:\n%s", out)
	}
	if code, out, _ := f.gaiactl("node", "drain", "n1"); code != 0 || out != "draining n1\n" {
		t.Fatalf("drain:\n%s", out)
	}
	if code, out, _ := f.gaiactl("node", "drain", "n1", "-o", "json"); code != 0 || !strings.Contains(out, `"state": "draining"`) {
		t.Fatalf("drain -o json:\n%s", out)
	}
	if code, _, errs := f.gaiactl("node", "drain", "n9"); code != 1 || !strings.Contains(errs, "name: no node n9 (not_found)") {
		t.Fatalf("drain n9: %d %s", code, errs)
	}
	if got := uris(f.take()); got != "/v1/nodes /v1/nodes/n1 /v1/nodes/n1/drain /v1/nodes/n1/drain /v1/nodes/n9/drain" {
		t.Fatalf("requests %s", got)
	}
	// $GAIA_SCHEDULER_URL and $GAIA_TOKEN are the defaults.
	t.Setenv("GAIA_SCHEDULER_URL", f.srv.URL)
	t.Setenv("GAIA_TOKEN", "envtok")
	t.Setenv("GAIA_CLUSTER", "")
	if code, _, errs := run(t, "node", "list"); code != 0 {
		t.Fatalf("env: %d %s", code, errs)
	}
	if got := f.take(); len(got) != 1 || got[0].Auth != "Bearer envtok" {
		t.Fatalf("env: %+v", got)
	}
}

// TestCompletion: NAME arguments complete from the scheduler.
func TestCompletion(t *testing.T) {
	f := newFakeSched(t)
	f.on("GET /v1/apps", 200, `{"items":[{"spec":{"name":"web"}},{"spec":{"name":"worker"}},{"spec":{"name":"api"}}],"next":""}`)
	code, out, errs := f.gaiactl("__complete", "app", "scale", "w")
	if code != 0 || !strings.Contains(out, "web\nworker\n") || strings.Contains(out, "api") {
		t.Fatalf("completion: %d\n%s%s", code, out, errs)
	}
}

// The app's status (why instances wait, the back-off after failures) is
// in app show and app list; app instances --all asks for the finished
// instances too.
func TestAppStatusAndAllInstances(t *testing.T) {
	f := newFakeSched(t)
	held := `{"spec":{"name":"crash","pool":"root.a","image":"x","instances":1,"resources":{"cpu":"1"}},"version":1,"state":"running",` +
		`"status":{"unplaced":"1 instance not placed: replacements held until 2026-11-30T12:00:40Z: instance crash-1 failed: exited with code 3; 2 restarts",` +
		`"failures":4,"heldUntil":"2026-11-30T12:00:40Z","lastFailure":"instance crash-1 failed: exited with code 3; 2 restarts","failedAt":"2026-11-30T12:00:00Z"}}`
	f.on("GET /v1/apps/crash", 200, held)
	f.on("GET /v1/apps", 200, `{"items":[`+held+`],"next":""}`)
	f.on("GET /v1/apps/crash/instances", 200, `{"items":[{"id":"crash-1","app":"crash","version":1,"node":"n1","state":"failed","exitCode":3,"restarts":2,"reason":"exited with code 3; 2 restarts","desired":"run"}],"next":""}`)
	code, out, errs := f.gaiactl("app", "show", "crash")
	if code != 0 || !strings.Contains(out, "waiting:   1 instance not placed: replacements held until 2026-11-30T12:00:40Z: instance crash-1 failed") ||
		!strings.Contains(out, "failures:  4, the last at 2026-11-30T12:00:00Z: instance crash-1 failed: exited with code 3; 2 restarts; replacements held until 2026-11-30T12:00:40Z") {
		t.Errorf("app show: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs := f.gaiactl("app", "list"); code != 0 || !strings.Contains(out, "WAITING") || !strings.Contains(out, "1 instance not placed: replacements held") {
		t.Errorf("app list: exit %d\n%s%s", code, out, errs)
	}
	f.take()
	code, out, errs = f.gaiactl("app", "instances", "crash", "--all", "--limit", "5")
	if reqs := f.take(); code != 0 || len(reqs) != 1 || reqs[0].URI != "/v1/apps/crash/instances?all=true&limit=5" || !strings.Contains(out, "failed") {
		t.Errorf("app instances --all: exit %d, requests %+v\n%s%s", code, reqs, out, errs)
	}
}
