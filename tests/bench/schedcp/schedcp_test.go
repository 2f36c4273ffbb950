// Package schedcp is the scheduler's control-plane benchmark (make
// bench-scheduler-cp): SCHEDCP_NODES (default 10,000) simulated node agents
// in this process (nodeclient.Sim, real HTTP, the real protocol)
// long-polling one gaia-scheduler leader on real PostgreSQL and Consul. It
// reports the API's latency at steady state (user reads and node reports,
// p50/p99), PostgreSQL's transactions per second at steady state
// (pg_stat_database xact_commit deltas), and the time from submitting a
// 1,000-instance app to every instance running on the agents.
package schedcp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/nodeclient"
	"github.com/gaia-registry/gaia/scheduler/resource"
	"github.com/gaia-registry/gaia/tests/harness"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

func BenchmarkControlPlane(b *testing.B) {
	nodes := envInt("SCHEDCP_NODES", 10000)
	steady := time.Duration(envInt("SCHEDCP_STEADY_SECONDS", 60)) * time.Second
	env := harness.Start(b, harness.Consul, harness.Postgres)
	db := harness.NewDatabase(b)
	ctx := context.Background()

	regAddr := harness.FreeAddr(b)
	harness.StartRegistry(b, regAddr, harness.RegistryConfig(regAddr, harness.NewDatabase(b), b.TempDir()))
	img := harness.NewTestImage("linux/amd64", harness.Layer(5, 1000))
	if err := img.Push(ctx, upstream.New(upstream.Options{URL: "http://" + regAddr}), "bench/app", "v1"); err != nil {
		b.Fatal(err)
	}
	addr := harness.FreeAddr(b)
	cluster := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	cfg := fmt.Sprintf(`log: {level: warn}
http: {addr: %s}
database: {url: %q, migrate: true, maxconns: 16}
cluster: {name: %s, consul: {addr: %q}}
scheduler: {interval: 1s, nodetimeout: 90s, pollinterval: 30s, heartbeatflush: 30s}
auth: {admintoken: admin, nodetoken: node}
registry: {url: "http://%s"}
`, addr, db, cluster, env.Get(b, "GAIA_TEST_CONSUL_ADDR"), regAddr)
	cfgPath := filepath.Join(b.TempDir(), "scheduler.yml")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	sched := harness.StartProcess(b, harness.Binary(b, "./scheduler/cmd/gaia-scheduler"), []string{"serve", "--config", cfgPath}, nil, addr, "/readyz",
		func(c int) bool { return c == http.StatusOK })
	base := sched.URL()
	for {
		v, _ := harness.ScrapeMetric(nil, base, "gaia_scheduler_is_leader")
		if v == 1 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The fleet.
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: nodes + 100, MaxConnsPerHost: 0, IdleConnTimeout: 5 * time.Minute}}
	var running atomic.Int64
	sims := make([]*nodeclient.Sim, nodes)
	fctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	start := time.Now()
	for i := range nodes {
		s := nodeclient.NewSim(nodeclient.Options{Servers: []string{base}, Token: "node", HTTP: hc,
			Node: api.RegisterRequest{Name: fmt.Sprintf("n%05d", i), IDC: "idc-" + strconv.Itoa(i%4),
				Capacity: resource.MustVector("cpu=32", "memory=128Gi", "disk=2Ti")}})
		sims[i] = s
		prev := 0
		s.OnChange = func() {
			n := len(s.Running())
			running.Add(int64(n - prev))
			prev = n
		}
		wg.Add(1)
		go func() { defer wg.Done(); s.Run(fctx) }()
		if i%500 == 499 {
			time.Sleep(50 * time.Millisecond) // a ramp, not a thundering herd of connects
		}
	}
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	count := func(q string) int {
		var n int
		conn.QueryRow(ctx, q).Scan(&n)
		return n
	}
	for count(`SELECT count(*) FROM nodes`) < nodes {
		time.Sleep(200 * time.Millisecond)
	}
	registered := time.Since(start)
	// Every agent has had its first desired set (it polls from then on).
	for {
		done := 0
		for _, s := range sims {
			if s.Sets() > 0 {
				done++
			}
		}
		if done == nodes {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	b.Logf("%d agents registered in %s and polling", nodes, registered.Round(time.Millisecond))

	// Steady state: agents idle in their long polls; a probe reads the
	// user API.
	xact := func() int64 {
		var n int64
		conn.QueryRow(ctx, `SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()`).Scan(&n)
		return n
	}
	get := func(path string) time.Duration {
		req, _ := http.NewRequest("GET", base+path, nil)
		req.Header.Set("Authorization", "Bearer admin")
		t0 := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		return time.Since(t0)
	}
	// PostgreSQL's backends flush their statistics when idle for 10s at
	// most: let the registrations' transactions land before counting.
	time.Sleep(12 * time.Second)
	x0, t0 := xact(), time.Now()
	polls0, _ := harness.ScrapeMetric(nil, base, "gaia_scheduler_node_polls_total")
	time.Sleep(steady)
	x1, el := xact(), time.Since(t0)
	polls1, _ := harness.ScrapeMetric(nil, base, "gaia_scheduler_node_polls_total")
	qps := float64(x1-x0-1) / el.Seconds() // less the xact() query itself
	b.Logf("steady state over %s: PostgreSQL %.2f transactions/s, %.0f desired-set polls/s answered",
		el.Round(time.Second), qps, (polls1-polls0)/el.Seconds())
	var probe []time.Duration
	for t0 := time.Now(); time.Since(t0) < 20*time.Second; {
		probe = append(probe, get("/v1/nodes?limit=100"), get("/v1/pools"))
		time.Sleep(100 * time.Millisecond)
	}

	// A 1,000-instance app.
	body, _ := json.Marshal(map[string]any{"name": "big", "pool": "root", "image": "bench/app:v1", "instances": 1000,
		"resources": map[string]string{"cpu": "1", "memory": "2Gi"}})
	req, _ := http.NewRequest("POST", base+"/v1/apps", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer admin")
	t1 := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusCreated {
		b.Fatalf("submit: %v %v", err, resp.Status)
	}
	resp.Body.Close()
	submitLat := time.Since(t1)
	for running.Load() < 1000 {
		time.Sleep(10 * time.Millisecond)
	}
	assigned := time.Since(t1)
	// Reports of the 1,000 instances, then let them land.
	time.Sleep(3 * time.Second)
	dur, _ := harness.ScrapeMetric(nil, base, "gaia_scheduler_http_request_duration_seconds_sum", `route="/v1/node/{name}/report"`)
	cnt, _ := harness.ScrapeMetric(nil, base, "gaia_scheduler_http_request_duration_seconds_count", `route="/v1/node/{name}/report"`)
	b.Logf("1,000-instance app: submit answered in %s, every instance running on its agent %s after the submit; %.0f reports, mean %.2f ms server-side",
		submitLat.Round(time.Millisecond), assigned.Round(time.Millisecond), cnt, 1000*dur/max(cnt, 1))
	b.Logf("user API at steady state (GET /v1/nodes?limit=100 and /v1/pools, %d requests): p50 %s, p99 %s",
		len(probe), pct(probe, 0.5).Round(10*time.Microsecond), pct(probe, 0.99).Round(10*time.Microsecond))
	b.ReportMetric(float64(pct(probe, 0.99).Microseconds())/1000, "api-p99-ms")
	b.ReportMetric(qps, "pg-xact/s")
	b.ReportMetric(assigned.Seconds(), "1000-assigned-s")
}
