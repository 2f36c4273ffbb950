package e2e

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
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/tests/harness"
)

// createRobot makes a robot (system-wide when ns is "") with one
// permission per namespace in perms (namespace → actions) and returns its
// name and secret.
func (a *accessCluster) createRobot(t *testing.T, ns, name string, perms map[string][]string) (string, string) {
	t.Helper()
	var ps []map[string]any
	for n, actions := range perms {
		ps = append(ps, map[string]any{"namespace": n, "actions": actions})
	}
	path := "/robots"
	if ns != "" {
		path = "/namespaces/" + ns + "/robots"
	}
	var out struct {
		Robot  struct{ Name string }
		Secret string
	}
	if err := json.Unmarshal(a.mustAdmin(t, "POST", path, map[string]any{"name": name, "permissions": ps}), &out); err != nil || out.Secret == "" {
		t.Fatalf("robot %s: %v", name, err)
	}
	return out.Robot.Name, out.Secret
}

// readBlobs reads every blob of img in repo through c (whose reader
// checks each one's size and digest).
func readBlobs(t *testing.T, c *upstream.Client, repo string, img harness.TestImage) {
	t.Helper()
	for _, b := range img.Blobs {
		rc, err := c.Blob(context.Background(), repo, b.Digest, b.Size)
		if err == nil {
			_, err = io.Copy(io.Discard, rc)
			rc.Close()
		}
		if err != nil {
			t.Fatalf("blob %s of %s: %v", b.Digest, repo, err)
		}
	}
}

// imageBytes is the size of img's blobs.
func imageBytes(img harness.TestImage) (n int64) {
	for _, b := range img.Blobs {
		n += b.Size
	}
	return n
}

// TestRobotCredentials: Gaia's own components work under the built-in
// auth with robot credentials, in a two-IDC cluster. The mirror worker
// mirrors an upstream repository through the gateway as a system robot
// with push on the destination (and a robot with pull only fails the run
// with an error naming the refusal); pull-through serves a member and a
// robot with pull a not-yet-mirrored image, and refuses a non-member
// before anything is asked upstream; a robot with pull, pulling through
// idc-b's gateway, gets a blob pushed in idc-a filled across.
func TestRobotCredentials(t *testing.T) {
	harness.Start(t, harness.Dockerd) // its install step brings skopeo
	ctx := context.Background()
	a := startAccessCluster(t, "idc-a", "idc-b")
	gwA, gwB := a.gwAddr["idc-a"], a.gwAddr["idc-b"]
	s := newMirrorSetup(t) // the upstream: a stock registry behind token auth
	s.db, s.gaia = a.db, "http://"+gwA

	for _, u := range []string{"mia", "olga"} {
		a.mustAdmin(t, "POST", "/users", map[string]any{"name": u, "password": "pw-" + u + "-123"})
	}
	for _, ns := range []string{"mirrors", "hub", "apps"} {
		a.mustAdmin(t, "POST", "/namespaces", map[string]any{"name": ns})
	}
	a.mustAdmin(t, "PUT", "/namespaces/hub/members/user/mia", map[string]string{"role": "guest"})
	mirrorBot, mirrorSecret := a.createRobot(t, "", "mirror", map[string][]string{"mirrors": {"pull", "push"}})
	readBot, readSecret := a.createRobot(t, "", "reader", map[string][]string{"mirrors": {"pull"}, "hub": {"pull"}, "apps": {"pull"}})
	appsBot, appsSecret := a.createRobot(t, "apps", "ci", map[string][]string{"apps": {"pull", "push"}})

	// The rules, before any server caches the (empty) list: runs start
	// only when asked (the schedule is a day away).
	madm := s.startMirror(t, "admin-only", false)
	up := func(name string) map[string]any {
		return map[string]any{"name": name, "upstream": map[string]any{"url": s.proxy.URL, "username": "bot", "password": "bot-pw"},
			"schedule": "24h", "enabled": true}
	}
	r := up("robot-mirror")
	r["repositories"], r["destination"] = []string{"library/app"}, "mirrors"
	s.createRule(t, madm, r)
	r = up("robot-denied")
	r["repositories"], r["destination"] = []string{"library/other"}, "mirrors"
	s.createRule(t, madm, r)
	r = up("robot-cache")
	r["repositories"], r["destination"], r["on_demand"] = []string{"library/*"}, "hub", true
	s.createRule(t, madm, r)

	t.Run("mirror worker with a system robot", func(t *testing.T) {
		img := image("linux/amd64", 901, 902)
		if err := img.Push(ctx, s.pusher, "library/app", "1"); err != nil {
			t.Fatal(err)
		}
		s.robotUser, s.robotPass = mirrorBot, mirrorSecret
		m := s.startMirror(t, "robot-pusher", true)
		run := s.waitRun(t, m, "robot-mirror", s.runNow(t, m, "robot-mirror"), time.Minute)
		if run.State != "succeeded" || run.Tags != 1 {
			t.Fatalf("run as %s: %+v\n%s", mirrorBot, run, m.Log())
		}
		s.gaiaRobot = upstream.New(upstream.Options{URL: "http://" + gwA, Username: readBot, Password: readSecret})
		s.sameImage(t, ctx, "library/app", "mirrors/library/app", "1", img)
		if err := m.Stop(); err != nil {
			t.Fatal(err)
		}

		// A robot with pull only on the destination: the run fails, and
		// says Gaia denied the push.
		if err := image("linux/amd64", 903).Push(ctx, s.pusher, "library/other", "1"); err != nil {
			t.Fatal(err)
		}
		s.robotUser, s.robotPass = readBot, readSecret
		m = s.startMirror(t, "robot-reader", true)
		run = s.waitRun(t, m, "robot-denied", s.runNow(t, m, "robot-denied"), time.Minute)
		want := fmt.Sprintf(`library/other:1: Gaia refused the mirror's credential, registry.username %q, on mirrors/library/other: it needs pull and push there (POST http://%s/v2/mirrors/library/other/blobs/uploads/`, readBot, gwA)
		if run.State != "failed" || len(run.Errors) != 1 || !strings.HasPrefix(run.Errors[0], want) || !strings.Contains(run.Errors[0], `"code":"DENIED"`) {
			t.Fatalf("run as %s (pull only): %+v\nwant one error starting %s and saying DENIED", readBot, run, want)
		}
		if n := harness.Metric(t, m.URL(), "gaia_mirror_runs_total", `rule="robot-denied"`, `result="failed"`); n != 1 {
			t.Errorf("gaia_mirror_runs_total{rule=robot-denied,result=failed} = %v, want 1", n)
		}
		if err := m.Stop(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("pull-through for members and robots with pull only", func(t *testing.T) {
		tool := image("linux/amd64", 911, 912)
		if err := tool.Push(ctx, s.pusher, "library/tool", "1"); err != nil {
			t.Fatal(err)
		}
		if err := image("linux/amd64", 913).Push(ctx, s.pusher, "library/secret", "1"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		// Refused before anything is asked upstream: a non-member, an
		// anonymous client, and a robot with no permission on hub.
		dir := t.TempDir()
		for who, creds := range map[string]string{"non-member": "olga:pw-olga-123", "robot of another namespace": appsBot + ":" + appsSecret} {
			out, err := run("skopeo", "copy", "--src-tls-verify=false", "--src-creds", creds,
				"docker://"+gwA+"/hub/library/secret:1", "dir:"+filepath.Join(dir, "refused"))
			if err == nil || !strings.Contains(out, "denied") {
				t.Fatalf("%s pulls through hub: %v\n%s", who, err, out)
			}
		}
		if r := regCall(t, "GET", "http://"+gwA+"/v2/hub/library/secret/manifests/1", ""); r.status != 401 || r.code != "UNAUTHORIZED" {
			t.Fatalf("anonymous pull through hub: %d %s", r.status, r.code)
		}
		for _, kind := range []string{"manifest", "manifest-absent", "blob-start", "blob-head"} {
			if n := s.proxy.count(kind, "", start); n != 0 {
				t.Fatalf("refused pulls asked the upstream %d times (%s)", n, kind)
			}
		}
		// A guest member and a robot with pull get the upstream's image,
		// fetched once.
		for who, creds := range map[string]string{"member": "mia:pw-mia-123", "robot": readBot + ":" + readSecret} {
			out, err := run("skopeo", "copy", "--src-tls-verify=false", "--src-creds", creds,
				"docker://"+gwA+"/hub/library/tool:1", "dir:"+filepath.Join(dir, who))
			if err != nil {
				t.Fatalf("%s pulls through hub: %v\n%s", who, err, out)
			}
			got, _ := os.ReadFile(filepath.Join(dir, who, "manifest.json"))
			if !bytes.Equal(got, tool.Manifest) {
				t.Fatalf("%s got manifest %s, want the upstream's %s", who, digest.FromBytes(got), tool.Digest)
			}
		}
		if n := s.proxy.count("manifest", "1", start); n != 1 {
			t.Errorf("the manifest was fetched upstream %d times, want once", n)
		}
	})

	t.Run("cross-IDC fill for a robot with pull", func(t *testing.T) {
		img := image("linux/amd64", 921, 922)
		pusher := upstream.New(upstream.Options{URL: "http://" + gwA, Username: appsBot, Password: appsSecret})
		if err := img.Push(ctx, pusher, "apps/svc", "1"); err != nil {
			t.Fatal(err)
		}
		total := imageBytes(img)
		before := a.sum(t, "idc-b", "gaia_registry_cross_idc_bytes_total", `direction="in"`, `cause="fill"`, `peer="idc-a"`)
		// Refused in B like in A: nothing crosses for a caller without pull.
		noPull := upstream.New(upstream.Options{URL: "http://" + gwB, Username: mirrorBot, Password: mirrorSecret})
		if _, err := noPull.Blob(ctx, "apps/svc", img.Blobs[1].Digest, img.Blobs[1].Size); err == nil || !strings.Contains(err.Error(), "403") {
			t.Fatalf("a robot without pull on apps reads a blob through idc-b: %v", err)
		}
		if n := a.sum(t, "idc-b", "gaia_registry_cross_idc_bytes_total", `direction="in"`, `cause="fill"`, `peer="idc-a"`); n != before {
			t.Fatalf("a refused read filled %v bytes into idc-b", n-before)
		}
		puller := upstream.New(upstream.Options{URL: "http://" + gwB, Username: readBot, Password: readSecret})
		if d, err := puller.ManifestDigest(ctx, "apps/svc", "1"); err != nil || d != img.Digest {
			t.Fatalf("manifest through idc-b: %s %v, want %s", d, err, img.Digest)
		}
		readBlobs(t, puller, "apps/svc", img)
		in := a.sum(t, "idc-b", "gaia_registry_cross_idc_bytes_total", `direction="in"`, `cause="fill"`, `peer="idc-a"`) - before
		if in != float64(total) {
			t.Fatalf("idc-b filled %v bytes from idc-a; the image's blobs are %d bytes", in, total)
		}
	})

	outer := t
	t.Run("cross-IDC fills copy as the cluster's robot", func(t *testing.T) {
		fillBot, fillSecret := a.createRobot(t, "", "fill", map[string][]string{"*": {"pull"}})
		// Every server gets the robot (idc-a counts what it sends to it);
		// idc-b's hold an internal token idc-a does not take, so a fill
		// succeeds through the robot or not at all. Restored at the end.
		tokenLine := fmt.Sprintf("internaltoken: %q", a.cluster.token)
		withRobot := func(token string) func(string) string {
			return func(cfg string) string {
				if !strings.Contains(cfg, tokenLine) {
					t.Fatalf("no %s in the server's config:\n%s", tokenLine, cfg)
				}
				return strings.Replace(cfg, tokenLine, fmt.Sprintf("internaltoken: %q\n  robot: {username: %q, password: %q}", token, fillBot, fillSecret), 1)
			}
		}
		// (The processes belong to the whole test, not this subtest.)
		a.restartServers(outer, "idc-a", withRobot(a.cluster.token))
		a.restartServers(outer, "idc-b", withRobot("not-the-clusters-token"))
		t.Cleanup(func() {
			for _, idc := range []string{"idc-a", "idc-b"} {
				a.restartServers(outer, idc, func(cfg string) string { return cfg })
			}
		})
		img := image("linux/amd64", 931, 932)
		pusher := upstream.New(upstream.Options{URL: "http://" + gwA, Username: appsBot, Password: appsSecret})
		if err := img.Push(ctx, pusher, "apps/filled", "1"); err != nil {
			t.Fatal(err)
		}
		total := imageBytes(img)
		in0 := a.sum(t, "idc-b", "gaia_registry_cross_idc_bytes_total", `direction="in"`, `cause="fill"`, `peer="idc-a"`)
		out0 := a.sum(t, "idc-a", "gaia_registry_cross_idc_bytes_total", `direction="out"`, `cause="fill"`, `peer="idc-b"`)
		refused0 := a.sum(t, "idc-a", "gaia_registry_internal_token_refused_total")
		puller := upstream.New(upstream.Options{URL: "http://" + gwB, Username: readBot, Password: readSecret})
		readBlobs(t, puller, "apps/filled", img)
		if in := a.sum(t, "idc-b", "gaia_registry_cross_idc_bytes_total", `direction="in"`, `cause="fill"`, `peer="idc-a"`) - in0; in != float64(total) {
			t.Fatalf("idc-b filled %v bytes from idc-a; the image's blobs are %d bytes", in, total)
		}
		// idc-a counted what went to idc-b's robot, and refused no token.
		if out := a.sum(t, "idc-a", "gaia_registry_cross_idc_bytes_total", `direction="out"`, `cause="fill"`, `peer="idc-b"`) - out0; out != float64(total) {
			t.Errorf("idc-a counts %v bytes out to idc-b's fills, want %d", out, total)
		}
		if n := a.sum(t, "idc-a", "gaia_registry_internal_token_refused_total") - refused0; n != 0 {
			t.Errorf("idc-a refused %v internal tokens: the fills sent one", n)
		}

		// The robot deleted: within the decision cache's bound, the next
		// fill in the same repository (whose token idc-b's servers hold)
		// is refused by idc-a, the client gets 503 UNAVAILABLE, and
		// nothing is copied.
		other := image("linux/amd64", 933)
		if err := other.Push(ctx, pusher, "apps/filled", "2"); err != nil {
			t.Fatal(err)
		}
		a.mustAdmin(t, "DELETE", "/robots/"+url.PathEscape(fillBot), nil)
		time.Sleep(decisionCache + 500*time.Millisecond)
		in0 = a.sum(t, "idc-b", "gaia_registry_cross_idc_bytes_total", `direction="in"`, `cause="fill"`, `peer="idc-a"`)
		tok, code := tokenAt(t, gwB, readBot, readSecret, "repository:apps/filled:pull")
		if code != http.StatusOK {
			t.Fatalf("token for %s: %d", readBot, code)
		}
		if r := regCall(t, "GET", "http://"+gwB+"/v2/apps/filled/blobs/"+other.Blobs[1].Digest.String(), tok); r.status != 503 || r.code != "UNAVAILABLE" {
			t.Fatalf("a blob through idc-b after the fill robot's deletion: %d %s, want 503 UNAVAILABLE", r.status, r.code)
		}
		if n := a.sum(t, "idc-b", "gaia_registry_cross_idc_bytes_total", `direction="in"`, `cause="fill"`, `peer="idc-a"`) - in0; n != 0 {
			t.Fatalf("idc-b filled %v bytes with a deleted robot", n)
		}
	})

	t.Run("scheduler and node agent with a robot with pull", func(t *testing.T) {
		henv := a.env
		ref := gwA + "/apps/web:v1"
		harness.BuildImage(t, henv, ref, 1024)
		cfg := t.TempDir()
		if out, err := a.dockerAs(cfg, "login", "-u", appsBot, "-p", appsSecret, gwA); err != nil {
			t.Fatalf("docker login as %s: %v\n%s", appsBot, err, out)
		}
		if out, err := a.dockerAs(cfg, "push", ref); err != nil {
			t.Fatalf("docker push as %s: %v\n%s", appsBot, err, out)
		}
		harness.Docker(t, henv, "rmi", ref) // the node agent pulls it back

		e := newSchedEnvAt(t, "http://"+gwA)
		e.regUser, e.regPass = readBot, readSecret
		sched := e.start()
		waitFor(t, "the scheduler to lead", time.Minute, func() bool { return isLeader(sched) })
		createPool(t, sched.URL(), map[string]any{"name": "root.robots"})
		suffix := fmt.Sprintf("%d", time.Now().UnixNano()%1_000_000)
		app, node := "robots-"+suffix, "robot-node-"+suffix
		spec := map[string]any{"name": app, "pool": "root.robots", "image": "apps/web:v1", "instances": 1,
			"command":   []string{"/bin/busybox", "sh", "-c", `mkdir -p /www && echo "$GAIA_INSTANCE" > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www`},
			"resources": map[string]string{"cpu": "100m", "memory": "32Mi"},
			"ports":     []map[string]any{{"name": "http", "containerPort": 8080}},
			"health":    map[string]any{"type": "http", "port": "http", "path": "/", "interval": "1s", "timeout": "1s"},
		}

		cons := consulClient(t, e.consul)
		t.Cleanup(func() {
			if ids, err := harness.DockerErr(henv, "ps", "-aq", "--filter", "label=gaia.node="+node); err == nil && ids != "" {
				harness.DockerErr(henv, append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
			}
			harness.DockerErr(henv, "rmi", ref)
			svcs, _ := cons.Agent().Services()
			for id, s := range svcs {
				if s.Service == app {
					cons.Agent().ServiceDeregister(id)
				}
			}
		})
		startNodeAgent(t, e, harness.Binary(t, "./nodeagent/cmd/gaia-nodeagent"), node, "127.0.0.5", harness.FreeAddr(t),
			sched.URL(), henv.Get(t, "GAIA_TEST_DOCKER_HOST"), gwA)
		waitFor(t, "the node registered", time.Minute, func() bool {
			return dbCount(t, e.db, `SELECT count(*) FROM nodes WHERE state = 'ready' AND name = $1`, node) == 1
		})
		// The scheduler resolves the tag with its robot; one the robot may
		// not pull is refused, saying so (not "absent").
		a.mustAdmin(t, "POST", "/namespaces", map[string]any{"name": "closed"})
		refused := map[string]any{}
		for k, v := range spec {
			refused[k] = v
		}
		refused["name"], refused["image"] = app+"-closed", "closed/web:v1"
		var body map[string]any
		if code := call(t, sched.URL(), schedAdmin, "POST", "/v1/apps", refused, &body); code != http.StatusBadRequest ||
			!strings.Contains(fmt.Sprint(body), fmt.Sprintf(`refused the scheduler's credential, registry.username %q, a pull of closed/web:v1 (403)`, readBot)) {
			t.Fatalf("submit of an image the robot may not pull: %d %v", code, body)
		}

		var created map[string]any
		if code := call(t, sched.URL(), schedAdmin, "POST", "/v1/apps", spec, &created); code != http.StatusCreated {
			t.Fatalf("submit: %d %v", code, created)
		}
		type inst struct {
			ID, State, Reason string
			HostPorts         map[string]int `json:"hostPorts"`
		}
		var healthy inst
		waitErr(t, "the instance healthy", 2*time.Minute, func() error {
			var page struct{ Items []inst }
			call(t, sched.URL(), schedAdmin, "GET", "/v1/apps/"+app+"/instances?limit=10", nil, &page)
			for _, in := range page.Items {
				if in.State == "healthy" {
					healthy = in
					return nil
				}
			}
			return fmt.Errorf("instances: %+v", page.Items)
		}, sched)
		if got, err := httpGet(fmt.Sprintf("http://127.0.0.5:%d/", healthy.HostPorts["http"])); err != nil || got != healthy.ID {
			t.Fatalf("the instance answers %q %v, want %q", got, err, healthy.ID)
		}
		id := harness.Docker(t, henv, "ps", "-q", "--filter", "label=gaia.node="+node)
		pinned := harness.Docker(t, henv, "inspect", "-f", "{{.Config.Image}}", id)
		if !strings.HasPrefix(pinned, gwA+"/apps/web@sha256:") {
			t.Fatalf("the node runs %q, want the image pinned by digest from %s", pinned, gwA)
		}
	})
}
