package e2e

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	gohdfs "github.com/colinmarc/hdfs/v2"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/uploadsession"
	"github.com/gaia-registry/gaia/tests/harness"
)

// HDFS faults under real clients: gaia-registry keeps its blobs on the
// fault-test cluster, and one of its daemons stops while docker pushes an
// image, then again while docker pulls it back, each time while a blob is
// in flight. docker either rides it out (it retries 503s) or fails saying
// what is unavailable and then succeeds once HDFS is back; the pulled image
// runs with the pushed digest; every blob PostgreSQL records is whole in
// HDFS and hashes to its digest.

// TestDockerUnderNamenodeRestart: the NameNode stops mid-push and mid-pull
// and starts again.
func TestDockerUnderNamenodeRestart(t *testing.T) { dockerUnderHDFSFault(t, "namenode") }

// TestDockerUnderDatanodeStop: the (only) DataNode stops mid-push and
// mid-pull and starts again.
func TestDockerUnderDatanodeStop(t *testing.T) { dockerUnderHDFSFault(t, "datanode") }

// The test image: busybox's base layer and four of random bytes, 16 MiB
// each (16 HDFS blocks, a second or so per transfer here), and its config.
var faultLayers = []int{16 << 20, 16 << 20, 16 << 20, 16 << 20}

const faultImageBlobs = 1 + 1 + 4 // config, base, faultLayers

func dockerUnderHDFSFault(t *testing.T, daemon string) {
	env := harness.Start(t, harness.HDFSFaults, harness.Dockerd)
	harness.LockHDFSFaults(t)
	harness.WaitHDFSReady(t, env)
	nn := env.Get(t, "GAIA_TEST_HDFS_FAULTS_NAMENODE")
	root := fmt.Sprintf("/gaia-e2e/docker-%s-%d", daemon, time.Now().UnixNano())
	// A client of HDFS made when needed: one from before the fault would
	// still hold the dead NameNode connection.
	client := func() *gohdfs.Client {
		c, err := gohdfs.NewClient(gohdfs.ClientOptions{Addresses: []string{nn}, User: "gaia"})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// Cleanups run last-registered first: the daemon starts again, then
	// the blobs go, then the lock.
	t.Cleanup(func() { c := client(); c.RemoveAll(root); c.Close() })
	t.Cleanup(func() { harness.HDFSControl(t, env, daemon+"/start"); harness.WaitHDFSReady(t, env) })
	addr := harness.FreeAddr(t)
	db := harness.NewDatabase(t)
	reg := harness.StartRegistry(t, addr, harness.RegistryConfig(addr, db,
		fmt.Sprintf("hdfs: {namenodes: [%q], rootdirectory: %s, user: gaia, replication: 1, dialtimeout: 5s, iotimeout: 15s}", nn, root)))

	ref := addr + "/faults/" + daemon + ":v1"
	harness.BuildImage(t, env, ref, faultLayers...)
	f := hdfsFaultRun{t: t, env: env, reg: reg, daemon: daemon}

	// Push: stopped while a layer's PATCH streams; landed once an upload
	// request got the 503.
	f.run([]string{"push", ref}, []string{`route="upload"`}, func() bool {
		return f.metric("gaia_registry_http_requests_in_flight", `method="PATCH"`, `route="upload"`) > 0
	}, false)
	pushed := harness.Docker(t, env, "image", "inspect", "-f", "{{index .RepoDigests 0}}", ref)
	harness.Docker(t, env, "rmi", ref)

	// Pull: stopped while a blob GET streams and a layer is still to be
	// asked for (with the NameNode alone down, a download already under
	// way goes on from the DataNode: the fault reaches docker through the
	// layers after it); landed once a blob GET got the 503.
	// The stop can come just after docker asked for its last layer: then
	// every download goes on from the DataNode and the fault never reaches
	// docker. Or the pull is over before a download was seen in flight
	// with a layer still to ask for. Such a run shows nothing either way;
	// pull again (at most 3).
	for attempt := 1; ; attempt++ {
		base := f.metric("gaia_registry_http_requests_total", `method="GET"`, `route="blob"`)
		if f.run([]string{"pull", ref}, []string{`route="blob"`, `method="GET"`}, func() bool {
			inFlight := f.metric("gaia_registry_http_requests_in_flight", `method="GET"`, `route="blob"`)
			answered := f.metric("gaia_registry_http_requests_total", `method="GET"`, `route="blob"`) - base
			return inFlight > 0 && answered+inFlight < faultImageBlobs
		}, attempt < 3) {
			break
		}
		harness.Docker(t, env, "rmi", ref)
	}
	pulled := harness.Docker(t, env, "image", "inspect", "-f", "{{index .RepoDigests 0}}", ref)
	if pulled != pushed || !strings.Contains(pushed, "@sha256:") {
		t.Errorf("pushed %s, pulled %s", pushed, pulled)
	}
	if out := harness.Docker(t, env, "run", "--rm", "--network", "none", ref, "/bin/sh", "-c", "ls /data"); out != "layer0.bin\nlayer1.bin\nlayer2.bin\nlayer3.bin" {
		t.Errorf("the pulled image's /data: %q", out)
	}
	harness.Docker(t, env, "rmi", ref)

	// A backend down is 503 UNAVAILABLE, never 500 UNKNOWN.
	if n := f.metric("gaia_registry_http_requests_total", `code="500"`); n != 0 {
		t.Errorf("%v requests answered 500\n%s", n, reg.Log())
	}
	// Every recorded blob is whole in HDFS, read back through the client.
	c := client()
	defer c.Close()
	verifyStorage(t, db, func(d digest.Digest) (io.ReadCloser, error) {
		return c.Open(root + uploadsession.BlobPath(d))
	})
}

// hdfsFaultRun stops and starts a daemon of the fault-test cluster under
// docker commands against reg.
type hdfsFaultRun struct {
	t      *testing.T
	env    harness.Env
	reg    *harness.Registry
	daemon string // "namenode" or "datanode"
}

func (f hdfsFaultRun) metric(name string, labels ...string) float64 {
	f.t.Helper()
	return f.reg.Metric(f.t, name, labels...)
}

type dockerResult struct {
	out string
	err error
}

// run runs `docker args...`. Once inFlight has held for three polls in a
// row (a transfer under way, not a config blob's blink) it stops the
// daemon, and starts it again once the fault has reached docker: a 503 to
// a request matching landed (route and method labels). The fault has to
// reach it: docker finishing without one fails the test. If docker gives
// up, its error must say what was unavailable, and the same command must
// then succeed. With mayMiss, docker finishing without meeting the fault
// is logged and reported (false) instead of failing the test, and so is
// docker finishing before the daemon could be stopped under it.
func (f hdfsFaultRun) run(args []string, landed []string, inFlight func() bool, mayMiss bool) bool {
	t := f.t
	t.Helper()
	what := "docker " + strings.Join(args, " ")
	before := f.metric("gaia_registry_http_requests_total", append(landed, `code="503"`)...)
	start := time.Now()
	done := make(chan dockerResult, 1)
	go func() {
		out, err := harness.DockerErr(f.env, args...)
		done <- dockerResult{out, err}
	}()
	deadline := time.Now().Add(time.Minute)
	for seen := 0; seen < 3; {
		select {
		case r := <-done:
			if mayMiss && r.err == nil {
				// Over before a transfer was seen in flight long enough
				// to stop the daemon under it: nothing shown either way.
				t.Logf("%s finished before the %s could be stopped under it: again", what, f.daemon)
				return false
			}
			t.Fatalf("%s ended before the fault could land (%v):\n%s", what, r.err, r.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: nothing in flight within 1m", what)
		}
		if inFlight() {
			seen++
		} else {
			seen = 0
		}
		time.Sleep(5 * time.Millisecond) // pacing, not synchronisation
	}
	harness.HDFSControl(t, f.env, f.daemon+"/stop")
	down := time.Since(start)

	var res *dockerResult
	hit := func() bool {
		return f.metric("gaia_registry_http_requests_total", append(landed, `code="503"`)...) > before
	}
	for deadline = time.Now().Add(time.Minute); res == nil && !hit(); time.Sleep(20 * time.Millisecond) {
		select {
		case r := <-done:
			res = &r
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no 503 within 1m of the %s's stop", what, f.daemon)
		}
	}
	met := time.Since(start)
	harness.HDFSControl(t, f.env, f.daemon+"/start")
	harness.WaitHDFSReady(t, f.env)
	up := time.Since(start)
	if res == nil {
		select {
		case r := <-done:
			res = &r
		case <-time.After(2 * time.Minute):
			t.Fatalf("%s still running 2m after the %s came back", what, f.daemon)
		}
	}
	t.Logf("%s: %s stopped at %s, met (a 503, or docker done) at %s, started again by %s, docker done at %s (%v)",
		what, f.daemon, down.Round(time.Millisecond), met.Round(time.Millisecond), up.Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond), res.err)
	if !hit() {
		if mayMiss && res.err == nil {
			t.Logf("%s finished without meeting the %s's stop (no 503): again", what, f.daemon)
			return false
		}
		t.Fatalf("%s finished without meeting the %s's stop (no 503):\n%s", what, f.daemon, res.out)
	}
	if res.err != nil {
		if !strings.Contains(strings.ToLower(res.out), "unavailable") {
			t.Errorf("%s failed without saying what was unavailable: %v\n%s", what, res.err, res.out)
		}
		harness.Docker(t, f.env, args...) // HDFS is back: the retry succeeds
	}
	return true
}
