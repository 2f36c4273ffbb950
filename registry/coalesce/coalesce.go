// Package coalesce merges concurrent identical reads into one, without
// ever answering a read with data older than the read itself.
//
// A thousand machines pulling the same image ask for the same tag and the
// same blobs at the same moment. Group.Do lets them share database
// queries: requests for a key that arrive while a query for it is running
// wait and are answered together by the next query, which starts after
// all of them arrived. Every answer therefore comes from a query that
// began after its request did, so it reflects every write completed
// before the request: unlike a cache (or singleflight, which hands late
// arrivals the result of a query already under way), coalescing cannot
// serve a stale tag or a deleted manifest. With no concurrency a request
// runs its query at once, as if the Group were not there.
package coalesce

import (
	"context"
	"sync"
	"time"
)

// Group coalesces reads by key. The zero value is ready to use.
type Group[K comparable, V any] struct {
	// Timeout bounds a shared call, which runs detached from the
	// cancellation of the request that started it (others wait on it
	// too); zero: no bound beyond what fn imposes itself.
	Timeout time.Duration

	mu   sync.Mutex
	keys map[K]*state[V]
}

type state[V any] struct {
	running bool      // a query for the key is under way
	next    *batch[V] // requests waiting for the query after it
}

type batch[V any] struct {
	fn      func(context.Context) (V, error)
	ctx     context.Context
	members int // requests answered by this batch (under Group.mu until run)
	done    chan struct{}
	v       V
	err     error
}

// Do returns fn's result for key, from a call of fn (this one's or another
// request's) that started after Do was called. ctx ending makes this
// request give up waiting; a query others share still completes.
func (g *Group[K, V]) Do(ctx context.Context, key K, fn func(context.Context) (V, error)) (V, error) {
	g.mu.Lock()
	if g.keys == nil {
		g.keys = map[K]*state[V]{}
	}
	st := g.keys[key]
	if st == nil {
		st = &state[V]{}
		g.keys[key] = st
	}
	b := st.next
	if b == nil {
		b = &batch[V]{fn: fn, ctx: context.WithoutCancel(ctx), done: make(chan struct{})}
		st.next = b
	}
	b.members++
	lead := !st.running
	if lead {
		st.running, st.next = true, nil
	}
	g.mu.Unlock()
	if lead {
		// On its own goroutine, so this request, too, can stop waiting.
		go g.run(key, st, b)
	}
	select {
	case <-b.done:
		return b.v, b.err
	case <-ctx.Done():
		var zero V
		return zero, ctx.Err()
	}
}

// run answers batch b, then hands the batch that gathered meanwhile to a
// goroutine of its own, so no request waits for queries after its own.
func (g *Group[K, V]) run(key K, st *state[V], b *batch[V]) {
	ctx, cancel := b.ctx, context.CancelFunc(func() {})
	if g.Timeout > 0 {
		ctx, cancel = context.WithTimeout(b.ctx, g.Timeout)
	}
	b.v, b.err = b.fn(ctx)
	cancel()
	close(b.done)
	g.mu.Lock()
	next := st.next
	if next == nil {
		st.running = false
		delete(g.keys, key)
	} else {
		st.next = nil
	}
	g.mu.Unlock()
	if next != nil {
		go g.run(key, st, next)
	}
}
