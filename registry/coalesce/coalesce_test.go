package coalesce

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// Every answer comes from a call that began after the request: a request
// that arrives while a call is running, after a write that call may have
// missed, waits for the next call instead of sharing the running one.
// (Singleflight hands it the running call's answer, and fails this.)
func TestNeverOlderThanTheRequest(t *testing.T) {
	var g Group[string, int64]
	var version atomic.Int64
	version.Store(1)
	var calls atomic.Int64
	release := make(chan struct{})
	read := func(ctx context.Context) (int64, error) {
		v := version.Load()
		if calls.Add(1) == 1 {
			<-release // the first call is still running when the write lands
		}
		return v, nil
	}
	first := make(chan int64)
	go func() { v, _ := g.Do(context.Background(), "tag", read); first <- v }()
	waitFor(t, func() bool { return calls.Load() == 1 })
	version.Store(2) // a write completes while the first call runs
	second := make(chan int64)
	go func() { v, _ := g.Do(context.Background(), "tag", read); second <- v }()
	waitFor(t, func() bool { // the second request is waiting, not yet answered
		g.mu.Lock()
		defer g.mu.Unlock()
		st := g.keys["tag"]
		return st != nil && st.next != nil && st.next.members == 1
	})
	close(release)
	if v := <-first; v != 1 {
		t.Fatalf("the first request got version %d, want 1", v)
	}
	if v := <-second; v != 2 {
		t.Fatalf("a request made after the write got version %d, older than the write", v)
	}
}

// Requests arriving while a query runs share the next one: 50 waiting
// requests cost two calls, not 50.
func TestConcurrentRequestsShareOneCall(t *testing.T) {
	var g Group[string, int]
	var calls atomic.Int64
	release := make(chan struct{})
	fn := func(ctx context.Context) (int, error) {
		n := calls.Add(1)
		if n == 1 {
			<-release // hold the first query until the others are waiting
		}
		return int(n), nil
	}
	first := make(chan int)
	go func() { v, _ := g.Do(context.Background(), "k", fn); first <- v }()
	waitFor(t, func() bool { return calls.Load() == 1 })
	results := make(chan int, 49)
	for range 49 {
		go func() { v, _ := g.Do(context.Background(), "k", fn); results <- v }()
	}
	waitFor(t, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		st := g.keys["k"]
		return st != nil && st.next != nil && st.next.members == 49
	})
	close(release)
	if v := <-first; v != 1 {
		t.Fatalf("first request got call %d", v)
	}
	for range 49 {
		if v := <-results; v != 2 {
			t.Fatalf("a waiting request got call %d, want the second call", v)
		}
	}
	if calls.Load() != 2 {
		t.Fatalf("%d calls for 50 requests", calls.Load())
	}
	if _, err := g.Do(context.Background(), "k", fn); err != nil || calls.Load() != 3 {
		t.Fatalf("an idle key runs at once: %v, %d calls", err, calls.Load())
	}
	// The answer is published first, then the idle key dropped: wait for it.
	waitFor(t, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.keys) == 0
	})
}

// Different keys never share; errors reach every member; a request whose
// context ends stops waiting while the shared call completes for others.
func TestKeysErrorsAndCancel(t *testing.T) {
	var g Group[string, string]
	boom := errors.New("boom")
	if v, _ := g.Do(context.Background(), "a", func(context.Context) (string, error) { return "a", nil }); v != "a" {
		t.Fatal(v)
	}
	if _, err := g.Do(context.Background(), "b", func(context.Context) (string, error) { return "", boom }); !errors.Is(err, boom) {
		t.Fatal(err)
	}

	release := make(chan struct{})
	var sawCancel atomic.Bool
	slow := func(ctx context.Context) (string, error) {
		<-release
		sawCancel.Store(ctx.Err() != nil)
		return "done", nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	leader := make(chan error)
	go func() { _, err := g.Do(ctx, "c", slow); leader <- err }()
	waitFor(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.keys["c"] != nil && g.keys["c"].running })
	cancel()
	if err := <-leader; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled request: %v", err)
	}
	close(release)
	waitFor(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.keys["c"] == nil })
	if sawCancel.Load() {
		t.Fatal("the shared call was cancelled with the request that started it")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}
