// Package harness gives Go tests the real services they run against
// (PostgreSQL, HDFS, Consul, dockerd, an LDAP directory). It starts them through
// tests/services/svc.sh, which installs, starts and health-checks each one
// idempotently, and reads back where they listen.
//
// A service that cannot start fails the test with the tail of its log: there
// is no skip, because a skipped integration test proves nothing.
package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Service names understood by svc.sh.
const (
	Postgres = "postgres"
	HDFS     = "hdfs"
	// HDFSFaults is a second HDFS cluster for tests that restart or kill
	// its daemons, so they never disturb tests using HDFS.
	HDFSFaults = "hdfs-faults"
	Consul     = "consul"
	Dockerd    = "dockerd"
	// LDAP is an OpenLDAP slapd (registry/iam/ldap/ldaptest gives each
	// test a subtree of its own in it).
	LDAP = "slapd"
)

// Env holds what svc.sh env printed: GAIA_TEST_* addresses.
type Env map[string]string

var (
	mu      sync.Mutex
	started = map[string]Env{}
)

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Script is the path of svc.sh.
func Script() string { return filepath.Join(RepoRoot(), "tests", "services", "svc.sh") }

// Start makes sure each service runs and returns their addresses. It is
// cheap after the first call in a process (and fast when a previous
// process already started the service).
func Start(t testing.TB, services ...string) Env {
	t.Helper()
	env := Env{}
	for _, s := range services {
		e, err := start(s)
		if err != nil {
			t.Fatalf("harness: %v", err)
		}
		for k, v := range e {
			env[k] = v
		}
	}
	return env
}

func start(service string) (Env, error) {
	// A dockerd of one's own (another engineer's tests share the one svc.sh
	// starts): GAIA_TEST_DOCKER_HOST in the environment names it, and svc.sh
	// neither starts nor restarts anything for it.
	if h := os.Getenv("GAIA_TEST_DOCKER_HOST"); service == Dockerd && h != "" {
		return Env{"GAIA_TEST_DOCKER_HOST": h}, nil
	}
	mu.Lock()
	e, ok := started[service]
	mu.Unlock()
	if ok {
		return e, nil
	}
	if service == HDFSFaults {
		// svc.sh restarts (and reformats) a cluster that is not ready, and
		// one is not while a fault test of another process has its
		// NameNode or DataNode stopped on purpose: wait for that test.
		release, err := lockFaultsForStart()
		if err != nil {
			return nil, err
		}
		defer release()
	}
	mu.Lock()
	defer mu.Unlock()
	if e, ok = started[service]; ok {
		return e, nil
	}
	cmd := exec.Command("bash", Script(), "start", service)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("starting %s failed (%v):\n%s", service, err, out.String())
	}
	envOut, err := exec.Command("bash", Script(), "env", service).Output()
	if err != nil {
		return nil, fmt.Errorf("svc.sh env %s: %v", service, err)
	}
	e = Env{}
	sc := bufio.NewScanner(bytes.NewReader(envOut))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			e[k] = v
		}
	}
	started[service] = e
	return e, nil
}

// Get returns a value or fails the test if svc.sh did not print it.
func (e Env) Get(t testing.TB, key string) string {
	t.Helper()
	v, ok := e[key]
	if !ok || v == "" {
		t.Fatalf("harness: %s not set by svc.sh env", key)
	}
	return v
}

// Logs returns the tail of a service's logs, for failure messages.
func Logs(service string) string {
	out, _ := exec.Command("bash", Script(), "logs", service).CombinedOutput()
	return string(out)
}

// HDFSControl drives the fault-test HDFS cluster's control endpoint:
// "namenode/restart", "namenode/stop", "namenode/start", "datanode/stop" or
// "datanode/start". It blocks until the cluster has done it. Tests that
// call it hold LockHDFSFaults.
func HDFSControl(t testing.TB, env Env, action string) {
	t.Helper()
	base := env.Get(t, "GAIA_TEST_HDFS_FAULTS_CONTROL")
	client := &http.Client{Timeout: 3 * time.Minute}
	resp, err := client.Post(base+"/"+action, "text/plain", nil)
	if err != nil {
		t.Fatalf("harness: HDFS control %s: %v\n%s", action, err, Logs(HDFSFaults))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		t.Fatalf("harness: HDFS control %s: %s %s\n%s", action, resp.Status, b.String(), Logs(HDFSFaults))
	}
}

// WaitHDFSReady waits until the fault-test cluster is out of safe mode
// with a live DataNode.
func WaitHDFSReady(t testing.TB, env Env) {
	t.Helper()
	base := env.Get(t, "GAIA_TEST_HDFS_FAULTS_CONTROL")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := http.Get(base + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("harness: fault-test HDFS not ready after 2m\n%s", Logs(HDFSFaults))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var (
	faultsSem    = make(chan struct{}, 1) // one holder per process
	faultsMu     sync.Mutex
	faultsHolder testing.TB
)

// LockHDFSFaults gives the test the fault-test HDFS cluster to itself until
// it ends: tests of other packages (other processes, under a file lock) and
// of this one wait, so no test runs into another's outage. A test may call
// it more than once.
func LockHDFSFaults(t testing.TB) {
	t.Helper()
	faultsMu.Lock()
	held := faultsHolder == t
	faultsMu.Unlock()
	if held {
		return
	}
	deadline := time.Now().Add(5 * time.Minute)
	select {
	case faultsSem <- struct{}{}:
	case <-time.After(time.Until(deadline)):
		t.Fatal("harness: another test of this process held the fault-test HDFS cluster for 5m")
	}
	f, err := flockFaults(deadline)
	if err != nil {
		<-faultsSem
		t.Fatal(err)
	}
	faultsMu.Lock()
	faultsHolder = t
	faultsMu.Unlock()
	t.Cleanup(func() {
		faultsMu.Lock()
		faultsHolder = nil
		faultsMu.Unlock()
		f.Close() // releases the flock
		<-faultsSem
	})
}

// faultsLockWaiting, when set, is called when the cross-process lock is
// busy (tests see that Start waits for it).
var faultsLockWaiting func()

// flockFaults takes the cross-process lock of the fault-test cluster,
// waiting for it until deadline.
func flockFaults(deadline time.Time) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "gaia-hdfs-faults.lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, err
	}
	for syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		if faultsLockWaiting != nil {
			faultsLockWaiting()
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("harness: another process held the fault-test HDFS cluster for 5m")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return f, nil
}

// lockFaultsForStart holds the cross-process lock around svc.sh's start
// of the fault-test cluster, unless a test of this process holds it
// already (its cluster, and flock would wait for ever on itself).
func lockFaultsForStart() (release func(), err error) {
	faultsMu.Lock()
	held := faultsHolder != nil
	faultsMu.Unlock()
	if held {
		return func() {}, nil
	}
	f, err := flockFaults(time.Now().Add(5 * time.Minute))
	if err != nil {
		return nil, err
	}
	return func() { f.Close() }, nil
}
