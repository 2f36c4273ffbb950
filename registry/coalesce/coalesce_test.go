package coalesce

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Every answer comes from a call that began after the request: with a
// version bumped by writers all along, no reader ever sees a version older
// than the one current when it asked. (Singleflight would fail this.)
func TestNeverOlderThanTheRequest(t *testing.T) {
	var g Group[string, int64]
	var version atomic.Int64
	stop := make(chan struct{})
	var writers sync.WaitGroup
	writers.Add(1)
	go func() {
		defer writers.Done()
		for {
			select {
			case <-stop:
				return
			default:
				version.Add(1)
				time.Sleep(50 * time.Microsecond)
			}
		}
	}()
	read := func(ctx context.Context) (int64, error) {
		v := version.Load()
		time.Sleep(200 * time.Microsecond) // a query takes a while
		return v, nil
	}
	var readers sync.WaitGroup
	var stale, calls atomic.Int64
	for range 32 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for range 200 {
				before := version.Load()
				v, err := g.Do(context.Background(), "tag", read)
				calls.Add(1)
				if err != nil || v < before {
					stale.Add(1)
				}
			}
		}()
	}
	readers.Wait()
	close(stop)
	writers.Wait()
	if stale.Load() != 0 {
		t.Fatalf("%d of %d reads answered with data older than the read", stale.Load(), calls.Load())
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
