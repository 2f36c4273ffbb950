package harness

import (
	"sync"
	"testing"
	"time"
)

// TestStartWaitsForFaultTests: a process's first Start of the fault-test
// cluster, while a fault test of another process holds the cluster, waits
// for that test: svc.sh would restart (and reformat) a cluster whose
// NameNode or DataNode the test stopped on purpose.
func TestStartWaitsForFaultTests(t *testing.T) {
	Start(t, HDFSFaults)
	// The other process's test: the lock taken on a descriptor of its own.
	other, err := flockFaults(time.Now().Add(5 * time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	mu.Lock()
	delete(started, HDFSFaults) // this process has not started it yet
	mu.Unlock()
	waiting := make(chan struct{})
	var once sync.Once
	faultsLockWaiting = func() { once.Do(func() { close(waiting) }) }
	done := make(chan error, 1)
	go func() { _, err := start(HDFSFaults); done <- err }()
	defer func() { <-done; faultsLockWaiting = nil }()

	select {
	case <-waiting:
	case err := <-done:
		done <- err // for the deferred wait
		t.Fatalf("Start ran svc.sh while another process held the fault-test cluster (%v)", err)
	case <-time.After(time.Minute):
		t.Fatal("Start neither waited for the lock nor returned within 1m")
	}
	other.Close()
	select {
	case err := <-done:
		done <- err // for the deferred wait
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Minute):
		t.Fatal("Start did not return within 5m of the lock's release")
	}
}
