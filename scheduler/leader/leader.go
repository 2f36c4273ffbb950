// Package leader elects gaia-scheduler's leader: a Consul lock (api.Lock on
// a session with a TTL) on gaia/scheduler/<cluster>/leader, and, once held,
// a new term in PostgreSQL (store.BumpTerm) before the leader's first write.
//
// The lock decides who may lead; the term makes a deposed leader harmless.
// A leader whose process was paused (or cut off from Consul) past its
// session's TTL may still run for a moment before it notices: every write
// it makes is fenced by its term (store.Fenced), so it is refused
// (store.ErrDeposed) and the leader steps down.
package leader

import (
	"context"
	"errors"
	"log/slog"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/gaia-registry/gaia/scheduler/store"
)

// Options configure Run.
type Options struct {
	Consul *consul.Client
	// Cluster names the lock: gaia/scheduler/<Cluster>/leader.
	Cluster string
	// Holder identifies this process (its advertised address): the lock's
	// value and the term's holder.
	Holder string
	// SessionTTL is the Consul session's TTL (Consul's minimum is 10s): a
	// leader that stops renewing loses the lock within about this long
	// (Consul may take up to twice it).
	SessionTTL time.Duration
	// Checks are the Consul checks the session is tied to: the session is
	// invalidated (and the lock released) the moment one of them turns
	// critical. gaia-scheduler passes serfHealth (the Consul agent's node
	// is alive) and its own service check (service:<id>, its /healthz), so
	// a crashed process loses the lock within one check interval instead
	// of up to 2 × SessionTTL. Never a node-level check of our own: a
	// critical node check makes every service of that Consul agent
	// unhealthy. Empty: Consul's default, serfHealth only.
	Checks []string
	Store  *store.Store
	Log    *slog.Logger
	// IgnoreLoss is for tests only: the leader does not watch its lock, so
	// only the term check can stop it (the window of a leader that has
	// not noticed yet, made as wide as a test needs).
	IgnoreLoss bool
}

// Key is the lock's key for a cluster.
func Key(cluster string) string { return "gaia/scheduler/" + cluster + "/leader" }

// Run campaigns until ctx ends. Each time it wins the lock it starts a new
// term and calls lead with it and a context that ends when the lock is
// lost; when lead returns (it stepped down: store.ErrDeposed, or the lock
// was lost) Run releases the lock and campaigns again.
func Run(ctx context.Context, o Options, lead func(ctx context.Context, term int64) error) error {
	for ctx.Err() == nil {
		err := campaign(ctx, o, lead)
		if err != nil && ctx.Err() == nil {
			o.Log.Warn("leader election", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

func campaign(ctx context.Context, o Options, lead func(ctx context.Context, term int64) error) error {
	lock, err := o.Consul.LockOpts(&consul.LockOptions{
		Key:   Key(o.Cluster),
		Value: []byte(o.Holder),
		SessionOpts: &consul.SessionEntry{
			Name:   "gaia-scheduler " + o.Holder,
			TTL:    o.SessionTTL.String(),
			Checks: o.Checks,
			// Consul's default lock-delay (15s) would keep the next
			// leader out that long after a crash: the term already fences.
			LockDelay: time.Millisecond,
		},
		MonitorRetries: 3,
		// The blocking query a waiting follower repeats; its stop channel
		// is looked at between them, so this bounds shutdown.
		LockWaitTime: time.Second,
	})
	if err != nil {
		return err
	}
	if err := waitFree(ctx, o.Consul, Key(o.Cluster)); err != nil {
		return err
	}
	lost, err := lock.Lock(ctx.Done())
	if err != nil || lost == nil {
		return err
	}
	defer func() {
		if err := lock.Unlock(); err != nil && !errors.Is(err, consul.ErrLockNotHeld) {
			o.Log.Info("releasing the leader lock", "err", err)
		}
		lock.Destroy()
	}()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if !o.IgnoreLoss {
		go func() {
			select {
			case <-lost:
				o.Log.Warn("lost the leader lock in Consul: stepping down")
				cancel()
			case <-lctx.Done():
			}
		}()
	}
	var term int64
	for {
		term, err = o.Store.BumpTerm(lctx, o.Holder)
		if err == nil {
			break
		}
		if !store.Unavailable(err) || lctx.Err() != nil {
			return err
		}
		o.Log.Warn("starting a term: PostgreSQL unavailable, retrying", "err", err)
		select {
		case <-lctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	o.Log.Info("leading", "term", term, "holder", o.Holder)
	err = lead(lctx, term)
	if errors.Is(err, store.ErrDeposed) {
		o.Log.Warn("deposed: a newer term exists; stepping down", "term", term)
		return nil
	}
	return err
}

// waitFree blocks until the lock's key is held by no session. api.Lock
// itself would try to acquire the moment the holder's session is
// invalidated, run into the (1ms) lock-delay, and then wait its fixed
// retry time (5s) before trying again: waiting here for the key to be
// free, and a few milliseconds more, saves those seconds of failover.
func waitFree(ctx context.Context, c *consul.Client, key string) error {
	var index uint64
	for {
		pair, meta, err := c.KV().Get(key, (&consul.QueryOptions{WaitIndex: index, WaitTime: time.Second}).WithContext(ctx))
		if err != nil {
			return err
		}
		if pair == nil || pair.Session == "" {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
			return nil
		}
		index = meta.LastIndex
	}
}
