package leader_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/gaia-registry/gaia/scheduler/leader"
	"github.com/gaia-registry/gaia/scheduler/store"
	"github.com/gaia-registry/gaia/tests/harness"
)

// Two campaigners on a real Consul and PostgreSQL: one leads at a time,
// each term is new, and a clean stop hands over at once.
func TestOneLeaderAtATimeNewTermEach(t *testing.T) {
	env := harness.Start(t, harness.Consul)
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{URL: harness.NewDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, _, err := store.Migrate(ctx, st.DB()); err != nil {
		t.Fatal(err)
	}
	cc := consul.DefaultConfig()
	cc.Address = env.Get(t, "GAIA_TEST_CONSUL_ADDR")
	c, err := consul.NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	cluster := fmt.Sprintf("unit-%d", time.Now().UnixNano())
	var mu sync.Mutex
	leading := map[string]int64{}
	overlap := false
	terms := make(chan int64, 10)
	run := func(name string) context.CancelFunc {
		cctx, cancel := context.WithCancel(ctx)
		go leader.Run(cctx, leader.Options{Consul: c, Cluster: cluster, Holder: name, SessionTTL: 10 * time.Second, Store: st, Log: slog.Default()},
			func(lctx context.Context, term int64) error {
				mu.Lock()
				if len(leading) > 0 {
					overlap = true
				}
				leading[name] = term
				mu.Unlock()
				terms <- term
				<-lctx.Done()
				mu.Lock()
				delete(leading, name)
				mu.Unlock()
				return nil
			})
		return cancel
	}
	stopA := run("a")
	t1 := <-terms
	stopB := run("b")
	defer stopB()
	select {
	case t2 := <-terms:
		t.Fatalf("b led (term %d) while a held the lock (term %d)", t2, t1)
	case <-time.After(time.Second):
	}
	stopA() // releases the lock: b leads without waiting for the TTL
	t2 := <-terms
	if t2 != t1+1 {
		t.Fatalf("terms %d then %d, want consecutive", t1, t2)
	}
	mu.Lock()
	defer mu.Unlock()
	if overlap {
		t.Fatal("two leaders at once")
	}
	if _, ok := leading["b"]; !ok {
		t.Fatalf("leaders: %v, want b", leading)
	}
}

// A session tied to a check (Options.Checks) ends the moment the check
// turns critical: the leader's lead context ends and the lock is free,
// long before the session's TTL. The check is a TTL check of a service
// of this test's own (never a node-level check: a critical one makes
// every service of the Consul agent non-passing).
func TestLockLostWhenTheTiedCheckFails(t *testing.T) {
	env := harness.Start(t, harness.Consul)
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{URL: harness.NewDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, _, err := store.Migrate(ctx, st.DB()); err != nil {
		t.Fatal(err)
	}
	cc := consul.DefaultConfig()
	cc.Address = env.Get(t, "GAIA_TEST_CONSUL_ADDR")
	c, err := consul.NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	cluster := fmt.Sprintf("unit-%d", time.Now().UnixNano())
	svc := "leader-test-" + cluster
	checkID := "service:" + svc
	if err := c.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: svc, Name: svc,
		Check: &consul.AgentServiceCheck{CheckID: checkID, TTL: "1h", Status: consul.HealthPassing}}); err != nil {
		t.Fatal(err)
	}
	defer c.Agent().ServiceDeregister(svc)

	led, ended := make(chan struct{}), make(chan time.Time, 1)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go leader.Run(cctx, leader.Options{Consul: c, Cluster: cluster, Holder: "a", SessionTTL: time.Hour,
		Checks: []string{"serfHealth", checkID}, Store: st, Log: slog.Default()},
		func(lctx context.Context, term int64) error {
			select {
			case <-led:
				return nil // a second term: not this test's business
			default:
			}
			close(led)
			<-lctx.Done()
			ended <- time.Now()
			<-cctx.Done()
			return nil
		})
	select {
	case <-led:
	case <-time.After(time.Minute):
		t.Fatal("never led")
	}
	failed := time.Now()
	if err := c.Agent().UpdateTTL(checkID, "test: dead", consul.HealthCritical); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-ended:
		t.Logf("lead context ended %s after the check turned critical (session TTL 1h)", at.Sub(failed).Round(time.Millisecond))
	case <-time.After(time.Minute):
		// The session TTL is an hour: only the check can end it.
		t.Fatal("the lock outlived its session's critical check")
	}
}
