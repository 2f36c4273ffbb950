package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/jackc/pgx/v5"

	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/leader"
	"github.com/gaia-registry/gaia/scheduler/nodeclient"
	"github.com/gaia-registry/gaia/scheduler/resource"
	"github.com/gaia-registry/gaia/scheduler/server"
	"github.com/gaia-registry/gaia/tests/harness"
)

const (
	schedAdmin = "e2e-admin-token"
	schedNode  = "e2e-node-token"
	// The cluster's timing, as written into every scheduler's config.
	sessionTTL    = 10 * time.Second
	checkInterval = time.Second
	loopInterval  = 300 * time.Millisecond
)

// waitReadyNodes waits for n nodes in state ready.
func (e *schedEnv) waitReadyNodes(t *testing.T, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d nodes registered", n), time.Minute, func() bool {
		return dbCount(t, e.db, `SELECT count(*) FROM nodes WHERE state = 'ready'`) == n
	})
}

// createPool makes a pool through the scheduler's API at base.
func createPool(t *testing.T, base string, pool map[string]any) {
	t.Helper()
	if code := call(t, base, schedAdmin, "POST", "/v1/pools", pool, nil); code != http.StatusCreated {
		t.Fatalf("create pool %v: %d", pool["name"], code)
	}
}

// schedEnv is a scheduler cluster under test: its database, Consul, a real
// gaia-registry holding a pushed image, and gaia-scheduler processes.
type schedEnv struct {
	t        *testing.T
	db       string
	consul   string
	cluster  string
	registry string // http://host:port
	regUser  string // the scheduler's and nodes' registry credential (a robot), if any
	regPass  string
	image    string // repo:tag pushed there
	dir      string
	extra    string // appended to every scheduler's config
	scoring  string // scheduler.scoring; binpack when empty
}

func newSchedEnv(t *testing.T) *schedEnv {
	t.Helper()
	e := newSchedEnvAt(t, "")
	addr := harness.FreeAddr(t)
	harness.StartRegistry(t, addr, harness.RegistryConfig(addr, harness.NewDatabase(t), t.TempDir()))
	e.registry = "http://" + addr
	img := harness.NewTestImage("linux/amd64", harness.Layer(11, 1000))
	if err := img.Push(context.Background(), upstream.New(upstream.Options{URL: e.registry}), "e2e/web", "v1"); err != nil {
		t.Fatalf("pushing the test image: %v", err)
	}
	e.image = "e2e/web:v1"
	return e
}

// newSchedEnvAt is a scheduler cluster resolving images at registry
// (http://host:port), which the caller provides.
func newSchedEnvAt(t *testing.T, registry string) *schedEnv {
	t.Helper()
	env := harness.Start(t, harness.Consul, harness.Postgres)
	return &schedEnv{t: t, db: harness.NewDatabase(t), consul: env.Get(t, "GAIA_TEST_CONSUL_ADDR"),
		cluster: fmt.Sprintf("e2e-%d", time.Now().UnixNano()), dir: t.TempDir(), registry: registry}
}

func (e *schedEnv) config(addr string) string {
	scoring := e.scoring
	if scoring == "" {
		scoring = "binpack"
	}
	return fmt.Sprintf(`log: {level: info, formatter: json}
http: {addr: %s, draintimeout: 10s}
database: {url: %q, migrate: true}
cluster:
  name: %s
  consul: {addr: %q, checkinterval: %s, sessionttl: %s}
scheduler: {interval: %s, nodetimeout: 4s, pollinterval: 1s, heartbeatflush: 2s, scoring: %s}
auth:
  admintoken: %s
  nodetoken: %s
  submittokens: {team-a: e2e-team-a-token}
registry: {url: %q, username: %q, password: %q}
%s`, addr, e.db, e.cluster, e.consul, checkInterval, sessionTTL, loopInterval, scoring, schedAdmin, schedNode, e.registry, e.regUser, e.regPass, e.extra)
}

// start runs a gaia-scheduler process (env: extra variables).
func (e *schedEnv) start(env ...string) *harness.Registry {
	e.t.Helper()
	addr := harness.FreeAddr(e.t)
	cfg := filepath.Join(e.t.TempDir(), "scheduler.yml")
	if err := os.WriteFile(cfg, []byte(e.config(addr)), 0o644); err != nil {
		e.t.Fatal(err)
	}
	bin := harness.Binary(e.t, "./scheduler/cmd/gaia-scheduler")
	return harness.StartProcess(e.t, bin, []string{"serve", "--config", cfg}, env, addr, "/readyz",
		func(code int) bool { return code == http.StatusOK })
}

// lockHolder is the value of the cluster's leader lock in Consul (the
// holder's address), "" while no session holds it.
func (e *schedEnv) lockHolder() string {
	e.t.Helper()
	cc := consul.DefaultConfig()
	cc.Address = e.consul
	c, err := consul.NewClient(cc)
	if err != nil {
		e.t.Fatal(err)
	}
	pair, _, err := c.KV().Get(leader.Key(e.cluster), nil)
	if err != nil {
		e.t.Fatalf("reading the leader lock: %v", err)
	}
	if pair == nil || pair.Session == "" {
		return ""
	}
	return string(pair.Value)
}

func isLeader(s *harness.Registry) bool {
	v, err := harness.ScrapeMetric(nil, s.URL(), "gaia_scheduler_is_leader")
	return err == nil && v == 1
}

// waitFor polls cond until it holds; a deadline only catches a hang.
func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting (%s) for: %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitErr polls f until it returns nil; on a hang it fails with f's last
// error and the schedulers' logs.
func waitErr(t *testing.T, what string, limit time.Duration, f func() error, logs ...*harness.Registry) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			for _, l := range logs {
				t.Logf("log of %s:\n%s", l.Addr, tail(l.Log(), 60))
			}
			t.Fatalf("gave up waiting (%s) for: %s: %v", limit, what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// call sends a user API request and decodes the answer into out (if any).
func call(t *testing.T, base, token, method, path string, body any, out any, header ...string) int {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, base+path, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode
}

// agents is a fleet of simulated node agents speaking the real protocol.
type agents struct {
	sims   []*nodeclient.Sim
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startAgents(t *testing.T, n int, e *schedEnv, servers []string) *agents {
	return startAgentsWith(t, n, e, servers, nil)
}

// startAgentsWith is startAgents with setup called on each agent before it
// runs (hooks).
func startAgentsWith(t *testing.T, n int, e *schedEnv, servers []string, setup func(i int, s *nodeclient.Sim)) *agents {
	resolve, err := nodeclient.Consul(e.consul, e.cluster)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &agents{cancel: cancel}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	for i := range n {
		sim := nodeclient.NewSim(nodeclient.Options{
			Servers: servers, Resolve: resolve, Token: schedNode, HTTP: hc, Slack: 2 * time.Second,
			Node: api.RegisterRequest{Name: fmt.Sprintf("node-%03d", i), IDC: "idc-a", Address: fmt.Sprintf("10.0.0.%d", i),
				Capacity: resource.MustVector("cpu=16", "memory=64Gi", "disk=1Ti")},
		})
		if setup != nil {
			setup(i, sim)
		}
		a.sims = append(a.sims, sim)
		a.wg.Add(1)
		go func() { defer a.wg.Done(); sim.Run(ctx) }()
	}
	t.Cleanup(func() { a.cancel(); a.wg.Wait() })
	return a
}

// running maps each instance the agents run to the nodes running it.
func (a *agents) running() map[string][]string {
	out := map[string][]string{}
	for i, s := range a.sims {
		for _, id := range s.Running() {
			out[id] = append(out[id], fmt.Sprintf("node-%03d", i))
		}
	}
	return out
}

// placedOnce checks the agents run exactly want instances of app, each on
// one node, and that the database agrees: the same live instances, desired
// run, on the same nodes.
func placedOnce(t *testing.T, db string, a *agents, app string, want int) error {
	run := a.running()
	dup := 0
	for id, nodes := range run {
		if len(nodes) > 1 {
			dup++
			t.Errorf("instance %s runs on %d nodes: %v", id, len(nodes), nodes)
		}
	}
	if dup > 0 || len(run) != want {
		return fmt.Errorf("agents run %d instances (%d on several nodes), want %d", len(run), dup, want)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT id, node FROM instances WHERE app = $1 AND live AND desired = 'run' AND state <> 'lost'`, app)
	if err != nil {
		return err
	}
	inDB, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var v [2]string
		return v, r.Scan(&v[0], &v[1])
	})
	if err != nil {
		return err
	}
	if len(inDB) != want {
		return fmt.Errorf("database has %d live instances desired run, want %d", len(inDB), want)
	}
	for _, v := range inDB {
		if nodes := run[v[0]]; len(nodes) != 1 || nodes[0] != v[1] {
			return fmt.Errorf("instance %s: database says node %s, agents run it on %v", v[0], v[1], nodes)
		}
	}
	return nil
}

func dbCount(t *testing.T, db, query string, args ...any) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func appSpec(name, pool, image string, instances int) map[string]any {
	return map[string]any{"name": name, "pool": pool, "image": image, "instances": instances,
		"resources": map[string]string{"cpu": "500m", "memory": "1Gi"}}
}

// TestSchedulerFailover: two gaia-scheduler processes on real PostgreSQL
// and Consul, 50 simulated node agents on the real protocol.
//
//  1. kill -9 of the leader right after an app was scaled 0 → 500: the other
//     process leads, and all 500 instances are placed exactly once.
//  2. SIGSTOP of that leader; a third process leads and places 100 more;
//     SIGCONT: the paused process, which (test hook) does not watch its
//     Consul lock, still believes it leads and writes: every write is
//     refused by the term check (gaia_scheduler_deposed_writes_total > 0),
//     it steps down, and the state has each of the 600 instances on one
//     node, no node marked down by the deposed leader.
func TestSchedulerFailover(t *testing.T) {
	e := newSchedEnv(t)
	hook := server.TestHookIgnoreLoss + "=1"
	a := e.start(hook)
	waitFor(t, "the first scheduler to lead", time.Minute, func() bool { return isLeader(a) })
	b := e.start(hook)
	fleet := startAgents(t, 50, e, []string{a.URL(), b.URL()})

	createPool(t, a.URL(), map[string]any{"name": "root.e2e"})
	// Submitted through the follower: forwarded to the leader.
	var app map[string]any
	if code := call(t, b.URL(), schedAdmin, "POST", "/v1/apps", appSpec("web", "root.e2e", e.image, 0), &app); code != http.StatusCreated {
		t.Fatalf("submit via the follower: %d %v\nleader's log:\n%s\nfollower's log:\n%s", code, app, a.Log(), b.Log())
	}
	e.waitReadyNodes(t, 50)
	if code := call(t, a.URL(), schedAdmin, "POST", "/v1/apps/web/scale", map[string]int{"instances": 500}, nil); code != http.StatusOK {
		t.Fatalf("scale: %d", code)
	}
	// The leader re-registered itself in Consul with the leader tag; its
	// session is tied to that registration's check, which must have
	// survived: the lock is still its own, a few check intervals later.
	time.Sleep(3 * checkInterval)
	if h := e.lockHolder(); h != a.Addr || isLeader(b) {
		t.Fatalf("before the kill: lock held by %q (want %s), second scheduler leading: %v", h, a.Addr, isLeader(b))
	}
	killed := time.Now()
	a.Kill()
	waitFor(t, "the second scheduler to lead", 2*time.Minute, func() bool { return isLeader(b) })
	took := time.Since(killed)
	// The bound: the other process leads within the session TTL
	// plus one scheduling interval. The session is tied to the killed
	// process's /healthz check, which turns critical at its next run (one
	// check interval: the port refuses at once), and the follower, blocked
	// on the lock's key, takes the lock at once. So the bound used here is
	// TTL + interval + check interval, all from the config above: a
	// protocol bound, not a speed threshold. A session tied only to
	// serfHealth is invalidated between one and two TTLs after its last
	// renewal (19.8-20.2 s measured at TTL 10 s), past this bound.
	bound := sessionTTL + loopInterval + checkInterval
	t.Logf("failover after kill -9: %s (bound %s: session TTL %s + loop interval %s + check interval %s)",
		took.Round(100*time.Millisecond), bound, sessionTTL, loopInterval, checkInterval)
	if took > bound {
		t.Errorf("failover after kill -9 took %s, more than session TTL + loop interval + check interval = %s", took.Round(100*time.Millisecond), bound)
	}
	waitErr(t, "500 instances placed exactly once", 2*time.Minute, func() error {
		return placedOnce(t, e.db, fleet, "web", 500)
	}, b)

	// 2. A paused leader.
	c := e.start(hook)
	deposedBefore := harness.Metric(t, b.URL(), "gaia_scheduler_deposed_writes_total")
	stateWrites := func() float64 {
		v, _ := harness.ScrapeMetric(nil, b.URL(), "gaia_scheduler_db_writes_total")
		return v
	}
	stateWritesBefore := stateWrites()
	if err := b.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			b.Signal(syscall.SIGCONT)
		}
	}()
	waitFor(t, "the third scheduler to lead while the second is paused", 2*time.Minute, func() bool { return isLeader(c) })
	if code := call(t, c.URL(), schedAdmin, "POST", "/v1/apps/web/scale", map[string]int{"instances": 600}, nil); code != http.StatusOK {
		t.Fatalf("scale on the new leader: %d", code)
	}
	waitErr(t, "600 instances placed exactly once by the new leader", 2*time.Minute, func() error {
		return placedOnce(t, e.db, fleet, "web", 600)
	}, c)
	b.Signal(syscall.SIGCONT)
	resumed = true
	// The paused scheduler resumes believing it leads (it does not watch
	// its lock). A write sent to it is its own to make: the term check
	// refuses it. The request is marked as already forwarded: should the
	// resumed process have stepped down before it arrives (its loop's
	// first write can be refused first, on a busy machine), it must answer
	// not_leader too, not pass the write on to the real leader, which
	// would rightly accept it.
	leadingAtResume := isLeader(b)
	var refused struct{ Error api.Error }
	code := call(t, b.URL(), schedAdmin, "POST", "/v1/apps/web/scale", map[string]int{"instances": 300}, &refused,
		api.ForwardedHeader, "the test")
	if code != http.StatusServiceUnavailable || refused.Error.Code != api.CodeNotLeader {
		t.Errorf("scale sent to the deposed leader (leading in its own view at resume: %v): %d %+v, want 503 not_leader",
			leadingAtResume, code, refused)
	}
	// Its loop may also have tried to write: nodes silent to it down,
	// their instances lost and replaced. Give it a few passes.
	waitFor(t, "the resumed scheduler to write", time.Minute, func() bool { return stateWrites() > stateWritesBefore })
	// Nothing it wrote got through.
	if n := dbCount(t, e.db, `SELECT count(*) FROM nodes WHERE state <> 'ready'`); n != 0 {
		t.Errorf("%d nodes not ready: the deposed leader's writes got through", n)
	}
	if n := dbCount(t, e.db, `SELECT count(*) FROM instances WHERE app = 'web' AND live`); n != 600 {
		t.Errorf("%d live instances in the database, want 600", n)
	}
	if n := dbCount(t, e.db, `SELECT (app->'spec'->>'instances')::int FROM apps WHERE name = 'web'`); n != 600 {
		t.Errorf("app web asks for %d instances in the database, want 600", n)
	}
	if err := placedOnce(t, e.db, fleet, "web", 600); err != nil {
		t.Errorf("after the deposed leader resumed: %v", err)
	}
	if t.Failed() {
		t.FailNow()
	}
	waitFor(t, "the deposed scheduler's writes refused by the term check", time.Minute, func() bool {
		v, err := harness.ScrapeMetric(nil, b.URL(), "gaia_scheduler_deposed_writes_total")
		return err == nil && v > deposedBefore
	})
	waitFor(t, "the deposed scheduler to step down", time.Minute, func() bool { return !isLeader(b) })
	if !isLeader(c) {
		t.Fatal("the new leader lost its leadership to the deposed one")
	}
	if !strings.Contains(b.Log(), "deposed") {
		t.Errorf("the deposed scheduler logged no step-down:\n%s", b.Log())
	}
	// Let the fleet settle a few loop intervals and check once more.
	time.Sleep(2 * time.Second)
	if err := placedOnce(t, e.db, fleet, "web", 600); err != nil {
		t.Errorf("settled: %v", err)
	}
	ids := make([]string, 0)
	for id := range fleet.running() {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	t.Logf("600 instances on %d agents, e.g. %s", len(fleet.sims), ids[0])
}

// TestSchedulerSubmitErrors: each refused submit names the field at fault
// and changes nothing in the database; the accepted one resolves the
// image pushed to the real gaia-registry to its digest.
func TestSchedulerSubmitErrors(t *testing.T) {
	e := newSchedEnv(t)
	s := e.start()
	waitFor(t, "the scheduler to lead", time.Minute, func() bool { return isLeader(s) })
	startAgents(t, 3, e, []string{s.URL()})
	e.waitReadyNodes(t, 3)
	createPool(t, s.URL(), map[string]any{"name": "root.team", "submitters": []string{"team-a"}})
	var app struct {
		Spec    map[string]any
		Version int
		Digest  string
	}
	if code := call(t, s.URL(), "e2e-team-a-token", "POST", "/v1/apps", appSpec("api", "root.team", e.image, 2), &app); code != http.StatusCreated {
		t.Fatalf("submit: %d %+v", code, app)
	}
	if !strings.HasPrefix(app.Digest, "sha256:") || app.Version != 1 {
		t.Fatalf("submitted app: version %d digest %q", app.Version, app.Digest)
	}
	state := func() string {
		return fmt.Sprint(dbCount(t, e.db, `SELECT count(*) FROM apps`), dbCount(t, e.db, `SELECT count(*) FROM app_versions`),
			dbCount(t, e.db, `SELECT count(*) FROM instances`), dbCount(t, e.db, `SELECT count(*) FROM pools`))
	}
	waitFor(t, "2 instances placed", time.Minute, func() bool {
		return dbCount(t, e.db, `SELECT count(*) FROM instances WHERE live`) == 2
	})
	before := state()

	big := appSpec("huge", "root.team", e.image, 1)
	big["resources"] = map[string]string{"cpu": "64", "memory": "1Gi"}
	badMem := appSpec("badmem", "root.team", e.image, 1)
	badMem["resources"] = map[string]string{"cpu": "1", "memory": "lots"}
	badCount := appSpec("badcount", "root.team", e.image, 1)
	badCount["instances"] = "three"
	unknownField := appSpec("extra", "root.team", e.image, 1)
	unknownField["replicas"] = 3
	for _, c := range []struct {
		name   string
		token  string
		body   any
		status int
		field  string
		says   string
	}{
		{"name clash", schedAdmin, appSpec("api", "root.team", e.image, 1), http.StatusConflict, "name", `app "api" already exists in pool "root.team"`},
		{"unknown image", schedAdmin, appSpec("ghost", "root.team", "e2e/nothing:v9", 1), http.StatusBadRequest, "image", "not in the Gaia registry"},
		{"unknown tag", schedAdmin, appSpec("ghost", "root.team", "e2e/web:v9", 1), http.StatusBadRequest, "image", "not in the Gaia registry"},
		{"unknown pool", schedAdmin, appSpec("lost", "root.nowhere", e.image, 1), http.StatusBadRequest, "pool", `no pool "root.nowhere"`},
		{"never fits", schedAdmin, big, http.StatusBadRequest, "resources", "no node can ever fit"},
		{"malformed JSON", schedAdmin, `{"name": "x",`, http.StatusBadRequest, "", "malformed JSON"},
		{"bad name", schedAdmin, appSpec("Not_A_Label", "root.team", e.image, 1), http.StatusBadRequest, "name", ""},
		{"bad quantity", schedAdmin, badMem, http.StatusBadRequest, "resources.memory", ""},
		{"wrong type", schedAdmin, badCount, http.StatusBadRequest, "instances", ""},
		{"unknown field", schedAdmin, unknownField, http.StatusBadRequest, "replicas", "unknown field"},
		{"pool not allowed for the token", "e2e-team-a-token", appSpec("other", "root", e.image, 1), http.StatusForbidden, "pool", "may not submit"},
		{"no token", "", appSpec("anon", "root.team", e.image, 1), http.StatusUnauthorized, "", ""},
	} {
		var got struct{ Error api.Error }
		code := call(t, s.URL(), c.token, "POST", "/v1/apps", c.body, &got)
		if code != c.status || got.Error.Field != c.field || !strings.Contains(got.Error.Message, c.says) {
			t.Errorf("%s: %d %+v, want %d naming field %q saying %q", c.name, code, got.Error, c.status, c.field, c.says)
		}
		if after := state(); after != before {
			t.Errorf("%s: the database changed: %s → %s", c.name, before, after)
		}
	}
	// Paging: two pages of one app each.
	call(t, s.URL(), schedAdmin, "POST", "/v1/apps", appSpec("zeta", "root.team", e.image, 0), nil)
	var page struct {
		Items []map[string]any
		Next  string
	}
	call(t, s.URL(), schedAdmin, "GET", "/v1/apps?limit=1", nil, &page)
	if len(page.Items) != 1 || page.Next != "api" {
		t.Fatalf("first page: %+v", page)
	}
	call(t, s.URL(), schedAdmin, "GET", "/v1/apps?limit=1&after="+page.Next, nil, &page)
	if len(page.Items) != 1 || page.Next != "" {
		t.Fatalf("second page: %+v", page)
	}
	var bad struct{ Error api.Error }
	if code := call(t, s.URL(), schedAdmin, "GET", "/v1/apps?limit=0", nil, &bad); code != http.StatusBadRequest || bad.Error.Field != "limit" {
		t.Fatalf("limit=0: %d %+v", code, bad)
	}

	// gaiactl finds the scheduler by the cluster's name in Consul.
	ctl := harness.Binary(t, "./cmd/gaiactl")
	out, err := exec.Command(ctl, "--consul", e.consul, "--cluster", e.cluster, "--token", schedAdmin, "-o", "json", "app", "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"api"`) || !strings.Contains(string(out), `"zeta"`) {
		t.Fatalf("gaiactl --cluster %s app list: %v\n%s", e.cluster, err, out)
	}
	spec := filepath.Join(t.TempDir(), "app.yaml")
	os.WriteFile(spec, []byte("name: api\npool: root.team\nimage: "+e.image+"\ninstances: 1\nresources: {cpu: 100m, memory: 64Mi}\n"), 0o644)
	out, err = exec.Command(ctl, "--consul", e.consul, "--cluster", e.cluster, "--token", schedAdmin, "app", "submit", "-f", spec).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "name") || !strings.Contains(string(out), "already exists") {
		t.Fatalf("gaiactl app submit of a clashing name: %v\n%s", err, out)
	}
	t.Logf("gaiactl on a clash: %s", strings.TrimSpace(string(out)))
}

// TestSchedulerNodeDownAndBack: a node agent that stops polling is marked
// down after the node timeout; its instances are lost and replaced on the
// other nodes. When it comes back (still running its old instances) it is
// told to stop them, and the app never ends up with more than it asked for.
func TestSchedulerNodeDownAndBack(t *testing.T) {
	e := newSchedEnv(t)
	s := e.start()
	waitFor(t, "the scheduler to lead", time.Minute, func() bool { return isLeader(s) })
	fleet := startAgents(t, 3, e, []string{s.URL()})
	// A fourth agent under the test's control.
	resolve, _ := nodeclient.Consul(e.consul, e.cluster)
	flaky := nodeclient.NewSim(nodeclient.Options{Servers: []string{s.URL()}, Resolve: resolve, Token: schedNode, Slack: 2 * time.Second,
		Node: api.RegisterRequest{Name: "node-flaky", Capacity: resource.MustVector("cpu=16", "memory=64Gi")}})
	run := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); flaky.Run(ctx) }()
		return func() { cancel(); <-done }
	}
	stopFlaky := run()
	defer func() { stopFlaky() }()
	e.waitReadyNodes(t, 4)
	createPool(t, s.URL(), map[string]any{"name": "root.e2e"})
	spec := appSpec("web", "root.e2e", e.image, 40)
	spec["spread"] = 10 // 10 per node: every node gets its share
	if code := call(t, s.URL(), schedAdmin, "POST", "/v1/apps", spec, nil); code != http.StatusCreated {
		t.Fatalf("submit: %d", code)
	}
	all := func() map[string][]string {
		m := fleet.running()
		for _, id := range flaky.Running() {
			m[id] = append(m[id], "node-flaky")
		}
		return m
	}
	waitErr(t, "40 instances running", time.Minute, func() error {
		if n := len(all()); n != 40 || len(flaky.Running()) != 10 {
			return fmt.Errorf("%d running, %d on the flaky node", n, len(flaky.Running()))
		}
		return nil
	}, s)
	old := flaky.Running()

	// The agent goes silent (its "containers" keep running).
	stopFlaky()
	waitFor(t, "the silent node marked down", time.Minute, func() bool {
		return dbCount(t, e.db, `SELECT count(*) FROM nodes WHERE name = 'node-flaky' AND state = 'down'`) == 1
	})
	if n := dbCount(t, e.db, `SELECT count(*) FROM instances WHERE node = 'node-flaky' AND state = 'lost'`); n != 10 {
		t.Fatalf("%d instances of the down node lost, want 10", n)
	}
	// Spread 10 over 3 nodes holds 30: make room for the replacements.
	spec["spread"] = 14
	if code := call(t, s.URL(), schedAdmin, "POST", "/v1/apps/web/update", spec, nil); code != http.StatusOK {
		t.Fatalf("update: %d", code)
	}
	waitErr(t, "40 instances on the 3 other nodes", time.Minute, func() error {
		if n := len(fleet.running()); n != 40 {
			return fmt.Errorf("%d running on the others", n)
		}
		return nil
	}, s)

	// It comes back, still running its 10 old instances: it is told to
	// stop them (they were replaced).
	stopFlaky = run()
	waitErr(t, "the returning node to stop what was replaced", time.Minute, func() error {
		for _, id := range flaky.Running() {
			for _, o := range old {
				if id == o {
					return fmt.Errorf("still runs replaced instance %s", id)
				}
			}
		}
		return nil
	}, s)
	waitFor(t, "the node ready again", time.Minute, func() bool {
		return dbCount(t, e.db, `SELECT count(*) FROM nodes WHERE name = 'node-flaky' AND state = 'ready'`) == 1
	})
	waitFor(t, "its lost instances recorded stopped", time.Minute, func() bool {
		return dbCount(t, e.db, `SELECT count(*) FROM instances WHERE node = 'node-flaky' AND id = ANY($1) AND state = 'stopped' AND NOT live`, old) == 10
	})
	if n := len(all()); n > 40 {
		t.Fatalf("%d instances running, the app asked for 40", n)
	}
}
