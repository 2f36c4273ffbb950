package pullthrough

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gaia-registry/gaia/registry/api"
)

// The negative cache holds at most size answers, dropping the oldest,
// and forgets an answer after ttl.
func TestAbsentCacheBounded(t *testing.T) {
	c := absentCache{ttl: time.Hour, size: 100, at: map[string]time.Time{}}
	for i := range 250 {
		c.add(fmt.Sprint(i))
		c.add(fmt.Sprint(i)) // an answer given again counts once
	}
	if n := c.len(); n != 100 {
		t.Fatalf("%d answers held, want 100", n)
	}
	if c.has("149") || !c.has("150") || !c.has("249") {
		t.Fatal("not the newest 100 answers kept")
	}
	if len(c.order) > 2*c.size {
		t.Fatalf("the order queue holds %d entries for %d answers", len(c.order), c.len())
	}
	expired := absentCache{ttl: time.Nanosecond, size: 100, at: map[string]time.Time{}}
	expired.add("x")
	for deadline := time.Now().Add(time.Second); expired.has("x"); {
		if time.Now().After(deadline) {
			t.Fatal("an answer outlived its ttl")
		}
	}
}

// A budget lets slots fetches run and maxWaiting callers wait; more are
// refused at once, and a caller already gone takes nothing.
func TestBudgetBounds(t *testing.T) {
	busy := prometheus.NewCounter(prometheus.CounterOpts{Name: "busy"})
	b := &budget{slots: make(chan struct{}, 2), maxWaiting: 1, busy: busy,
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "inflight"})}
	ctx := context.Background()
	for range 2 {
		if err := b.acquire(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waiter := make(chan error)
	go func() { waiter <- b.acquire(ctx) }()
	for deadline := time.Now().Add(5 * time.Second); b.waiting.Load() != 1; {
		if time.Now().After(deadline) {
			t.Fatal("the third caller does not wait")
		}
		runtime.Gosched()
	}
	if err := b.acquire(ctx); !errors.Is(err, api.ErrPullThroughBusy) {
		t.Fatalf("a caller beyond the waiting bound: %v", err)
	}
	b.release()
	if err := <-waiter; err != nil {
		t.Fatalf("the waiter: %v", err)
	}
	gone, cancel := context.WithCancel(ctx)
	cancel()
	b.release()
	if err := b.acquire(gone); !errors.Is(err, context.Canceled) {
		t.Fatalf("a caller that is gone: %v", err)
	}
	if len(b.slots) != 1 {
		t.Fatalf("%d slots taken, want 1", len(b.slots))
	}
}
