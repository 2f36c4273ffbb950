package store

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gaia-registry/gaia/mirror-sync/rule"
	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
)

func newStore(t *testing.T) (*Store, *pgxpool.Pool) {
	t.Helper()
	pool := metadatatest.Pool(t)
	return New(pool), pool
}

func mkRule(name string, enabled bool) *rule.Rule {
	r := &rule.Rule{Name: name, Upstream: rule.Upstream{URL: "http://127.0.0.1:1"}, Repositories: []string{"x"}, Schedule: "1h", Enabled: enabled}
	if err := r.Validate(); err != nil {
		panic(err)
	}
	return r
}

// Due rules get one scheduled run each, however many workers schedule at
// once; disabled rules and rules with a run under way get none.
func TestSchedule(t *testing.T) {
	st, pool := newStore(t)
	ctx := context.Background()
	for _, r := range []*rule.Rule{mkRule("due", true), mkRule("busy", true), mkRule("off", false), mkRule("later", true)} {
		if err := st.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	pool.Exec(ctx, `UPDATE mirror_rules SET next_run_at = now() - interval '1 minute' WHERE name IN ('due', 'busy', 'off')`)
	if _, _, err := st.RunNow(ctx, "busy"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var total int
	var mu sync.Mutex
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := st.Schedule(ctx, time.Now())
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	if total != 1 {
		t.Fatalf("%d runs queued by four schedulers; want 1 (rule 'due')", total)
	}
	var scheduled, next int
	pool.QueryRow(ctx, `SELECT count(*) FROM mirror_runs WHERE trigger = 'schedule' AND rule = 'due'`).Scan(&scheduled)
	pool.QueryRow(ctx, `SELECT count(*) FROM mirror_rules WHERE name IN ('due', 'busy') AND next_run_at > now() + interval '50 minutes'`).Scan(&next)
	if scheduled != 1 || next != 2 {
		t.Fatalf("scheduled runs of 'due': %d; rules moved on: %d", scheduled, next)
	}
}

// Claims are exclusive; a lease that runs out lets another worker resume
// the run; the old worker then cannot report or finish it.
func TestClaimLeaseFinish(t *testing.T) {
	st, pool := newStore(t)
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		st.Create(ctx, mkRule(n, true))
		st.RunNow(ctx, n)
	}
	claimed := make(chan int64, 8)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r, ok, err := st.Claim(ctx, "w"+string(rune('0'+i)), time.Minute); err != nil {
				t.Error(err)
			} else if ok {
				claimed <- r.ID
			}
		}()
	}
	wg.Wait()
	close(claimed)
	var ids []int64
	for id := range claimed {
		ids = append(ids, id)
	}
	if len(ids) != 2 || ids[0] == ids[1] {
		t.Fatalf("8 workers claimed %v of 2 runs", ids)
	}
	var worker string
	pool.QueryRow(ctx, `SELECT worker FROM mirror_runs WHERE id = $1`, ids[0]).Scan(&worker)
	if err := st.Progress(ctx, ids[0], worker, time.Minute, 1, 2, 3, 400); err != nil {
		t.Fatal(err)
	}
	// The worker dies: its lease runs out; another resumes the run.
	pool.Exec(ctx, `UPDATE mirror_runs SET lease_until = now() - interval '1 second' WHERE id = $1`, ids[0])
	r, ok, err := st.Claim(ctx, "rescuer", time.Minute)
	if err != nil || !ok || r.ID != ids[0] || r.Images != 1 || r.Bytes != 400 || r.StartedAt == nil {
		t.Fatalf("resume: %+v %v %v", r, ok, err)
	}
	if err := st.Progress(ctx, ids[0], worker, time.Minute, 1, 0, 0, 0); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("old worker's progress: %v", err)
	}
	if err := st.Finish(ctx, ids[0], worker, false, nil); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("old worker's finish: %v", err)
	}
	if err := st.Finish(ctx, ids[0], "rescuer", true, []string{"upstream 503"}); err != nil {
		t.Fatal(err)
	}
	runs, _ := st.Runs(ctx, r.Rule, 5)
	if len(runs) != 1 || runs[0].State != "failed" || len(runs[0].Errors) != 1 || runs[0].FinishedAt == nil {
		t.Fatalf("finished run: %+v", runs)
	}
	// A finished rule can run again.
	if _, created, err := st.RunNow(ctx, r.Rule); err != nil || !created {
		t.Fatalf("run again after finishing: %v %v", created, err)
	}
	if _, ok, _ := st.Claim(ctx, "w", time.Minute); !ok {
		t.Fatal("the new run cannot be claimed")
	}
}

// An update that leaves the password out keeps the stored one only while
// the upstream stays on the same host: moved, the update is refused and
// the stored rule (and password) stay as they were.
func TestUpdateKeepsPasswordForTheSameHostOnly(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	r := mkRule("private", true)
	r.Upstream.URL, r.Upstream.Username, r.Upstream.Password = "https://registry.corp.example", "bot", "s3cret"
	if err := st.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	same := *r
	same.Upstream.Password, same.Schedule = rule.Redacted, "2h"
	if err := st.Update(ctx, &same); err != nil {
		t.Fatal(err)
	}
	if e, _ := st.Get(ctx, "private"); e.Rule.Upstream.Password != "s3cret" || e.Rule.Schedule != "2h" {
		t.Fatalf("same host: stored %+v", e.Rule)
	}
	moved := *r
	moved.Upstream.URL, moved.Upstream.Password = "https://attacker.example", ""
	var fe *rule.FieldError
	if err := st.Update(ctx, &moved); !errors.As(err, &fe) || fe.Field != "upstream.password" {
		t.Fatalf("moved host without the password: %v", err)
	}
	if e, _ := st.Get(ctx, "private"); e.Rule.Upstream.URL != "https://registry.corp.example" || e.Rule.Upstream.Password != "s3cret" {
		t.Fatalf("after the refused update: %+v", e.Rule.Upstream)
	}
	moved.Upstream.Password = "new-pass"
	if err := st.Update(ctx, &moved); err != nil {
		t.Fatal(err)
	}
	if e, _ := st.Get(ctx, "private"); e.Rule.Upstream.Password != "new-pass" {
		t.Fatalf("moved with a password: %+v", e.Rule.Upstream)
	}
}
