package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// clock is a settable Options.Now.
type clock struct{ t atomic.Pointer[time.Time] }

func newClock(t time.Time) *clock { c := &clock{}; c.set(t); return c }
func (c *clock) set(t time.Time)  { c.t.Store(&t) }
func (c *clock) now() time.Time   { return *c.t.Load() }

// runUntilDrained runs w until every event recorded so far is written:
// it cancels Run and waits for it to return (the final flush).
func runUntilDrained(t *testing.T, w *Writer, record func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	record()
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

func count(t *testing.T, db *pgxpool.Pool, where string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(context.Background(), `SELECT count(*) FROM audit_events `+where, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func partitions(t *testing.T, db *pgxpool.Pool) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'audit_events'::regclass ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		out = append(out, n)
	}
	return out
}

// Batches of events are stored and read back by every filter, newest
// first, across pages that neither skip nor repeat (events of one
// instant included).
func TestWriteAndQuery(t *testing.T) {
	db := metadatatest.Pool(t)
	ctx := context.Background()
	base := time.Now().UTC().Truncate(time.Second)
	w := NewWriter(db, Options{BatchMax: 7, FlushEvery: time.Hour, Log: quiet}, nil)
	var want []Event
	runUntilDrained(t, w, func() {
		for i := range 40 {
			ns := []string{"alpha", "beta"}[i%2]
			ev := Event{
				At:         base.Add(-time.Duration(i/2) * time.Minute), // pairs share an instant
				Actor:      []string{"ann", "robot$ci", ""}[i%3],
				Action:     []string{ActionPush, ActionPull, ActionDelete, ActionPull}[i%4],
				Namespace:  ns,
				Repository: fmt.Sprintf("%s/app%d", ns, i%5),
				Reference:  fmt.Sprintf("v%d", i),
				Remote:     "10.0.0.1",
			}
			if i == 0 {
				ev.Detail = map[string]any{"why": "first"}
			}
			w.Record(ev)
			ev.ActorKind = ActorKind(ev.Actor)
			want = append(want, ev)
		}
	})
	if n := testutil.ToFloat64(w.written); n != 40 {
		t.Fatalf("written = %v", n)
	}
	all := func(f Filter) []Event {
		var out []Event
		for page := 0; ; page++ {
			evs, next, err := Query(ctx, db, f)
			if err != nil {
				t.Fatal(err)
			}
			if page > 50 {
				t.Fatal("paging does not end")
			}
			out = append(out, evs...)
			if next == "" {
				return out
			}
			if f.Limit > 0 && len(evs) != f.Limit {
				t.Fatalf("a page before the last holds %d events, limit %d", len(evs), f.Limit)
			}
			f.Cursor = next
		}
	}
	for _, tc := range []struct {
		f     Filter
		match func(Event) bool
	}{
		{Filter{}, func(Event) bool { return true }},
		{Filter{Namespace: "alpha"}, func(e Event) bool { return e.Namespace == "alpha" }},
		{Filter{Actor: "robot$ci"}, func(e Event) bool { return e.Actor == "robot$ci" }},
		{Filter{Action: ActionPull, Namespace: "beta"}, func(e Event) bool { return e.Action == ActionPull && e.Namespace == "beta" }},
		{Filter{Repository: "alpha/app2"}, func(e Event) bool { return e.Repository == "alpha/app2" }},
		{Filter{Since: base.Add(-5 * time.Minute), Until: base.Add(-time.Minute)},
			func(e Event) bool {
				return !e.At.Before(base.Add(-5*time.Minute)) && e.At.Before(base.Add(-time.Minute))
			}},
	} {
		for _, limit := range []int{0, 3, 7} {
			f := tc.f
			f.Limit = limit
			got := all(f)
			var exp []Event
			for _, e := range want {
				if tc.match(e) {
					exp = append(exp, e)
				}
			}
			if len(exp) == 0 {
				t.Fatalf("%+v: the test selects nothing", f)
			}
			if len(got) != len(exp) {
				t.Fatalf("%+v: %d events, want %d", f, len(got), len(exp))
			}
			for i := 1; i < len(got); i++ {
				a, b := got[i-1], got[i]
				if a.At.Before(b.At) || (a.At.Equal(b.At) && a.ID <= b.ID) {
					t.Fatalf("%+v: not newest first at %d: %v/%d then %v/%d", f, i, a.At, a.ID, b.At, b.ID)
				}
			}
			key := func(e Event) string { return e.Reference }
			gk, ek := make([]string, len(got)), make([]string, len(exp))
			for i := range got {
				gk[i], ek[i] = key(got[i]), key(exp[i])
			}
			sort.Strings(gk)
			sort.Strings(ek)
			if fmt.Sprint(gk) != fmt.Sprint(ek) {
				t.Fatalf("%+v: got %v, want %v", f, gk, ek)
			}
		}
	}
	evs, _, err := Query(ctx, db, Filter{Actor: "ann", Action: ActionPush, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	first := evs[len(evs)-1] // the oldest "ann push" is i == 36; the newest i == 0
	if last := evs[0]; last.Reference != "v0" || last.Detail["why"] != "first" || last.ActorKind != KindUser ||
		last.Repository != "alpha/app0" || last.Remote != "10.0.0.1" || !last.At.Equal(base) || last.ID == 0 {
		t.Fatalf("stored event: %+v", last)
	}
	if first.Detail != nil {
		t.Fatalf("an event without detail reads back %v", first.Detail)
	}
}

func TestQueryBadInput(t *testing.T) {
	db := metadatatest.Pool(t)
	for _, tc := range []struct {
		f     Filter
		field string
	}{
		{Filter{Cursor: "!!"}, "cursor"},
		{Filter{Cursor: "bm9wZQ"}, "cursor"}, // "nope"
		{Filter{Cursor: "MTIuYQ"}, "cursor"}, // "12.a"
		{Filter{Limit: -1}, "limit"},
	} {
		_, _, err := Query(context.Background(), db, tc.f)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%+v: %v, want a FieldError naming %s", tc.f, err, tc.field)
		}
	}
	evs, next, err := Query(context.Background(), db, Filter{Limit: 5000})
	if err != nil || len(evs) != 0 || next != "" {
		t.Fatalf("an over-large limit is clamped, not refused: %v %v %q", evs, err, next)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	if got, err := ParseTime("since", "24h", now); err != nil || !got.Equal(now.Add(-24*time.Hour)) {
		t.Fatalf("24h: %v %v", got, err)
	}
	if got, err := ParseTime("since", "2026-01-02T03:04:05Z", now); err != nil || !got.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Fatalf("RFC 3339: %v %v", got, err)
	}
	var fe *FieldError
	if _, err := ParseTime("until", "yesterday", now); !errors.As(err, &fe) || fe.Field != "until" {
		t.Fatalf("bad time: %v", err)
	}
}

// Partitions are created for today and the next two days, concurrently
// by several servers, and dropped once wholly older than the retention.
func TestPartitionsAndRetention(t *testing.T) {
	db := metadatatest.Pool(t)
	ctx := context.Background()
	clk := newClock(time.Date(2026, 1, 10, 15, 0, 0, 0, time.UTC))
	o := Options{Retention: 48 * time.Hour, Now: clk.now, Log: quiet}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- NewWriter(db, o, nil).Maintain(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Maintain: %v", err)
		}
	}
	want := []string{"audit_events_default", "audit_events_p20260110", "audit_events_p20260111", "audit_events_p20260112"}
	if got := partitions(t, db); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("partitions %v, want %v", got, want)
	}
	w := NewWriter(db, o, nil)
	runUntilDrained(t, w, func() {
		w.Record(Event{Action: ActionPull, Repository: "a/b"})                                   // now: the 10th
		w.Record(Event{Action: ActionPull, At: time.Date(2026, 1, 12, 1, 0, 0, 0, time.UTC)})    // the 12th
		w.Record(Event{Action: ActionPull, At: time.Date(2026, 1, 12, 23, 59, 59, 0, time.UTC)}) // the 12th
	})
	if n := count(t, db, `WHERE tableoid = 'audit_events_p20260110'::regclass`); n != 1 {
		t.Fatalf("%d events in the 10th's partition", n)
	}
	// Three days on (the 13th, 15:00; retention 48h: the cutoff is the
	// 11th 15:00): the 10th's partition goes, the 11th's (ending at the
	// cutoff's midnight, after it) stays.
	clk.set(time.Date(2026, 1, 13, 15, 0, 0, 0, time.UTC))
	if err := w.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	want = []string{"audit_events_default", "audit_events_p20260111", "audit_events_p20260112", "audit_events_p20260113",
		"audit_events_p20260114", "audit_events_p20260115"}
	if got := partitions(t, db); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("partitions %v, want %v", got, want)
	}
	if n := count(t, db, ""); n != 2 {
		t.Fatalf("%d events after retention, want the 12th's 2", n)
	}
	// Maintenance again changes nothing.
	if err := w.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if got := partitions(t, db); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("a second Maintain: partitions %v, want %v", got, want)
	}
}

// An event no day partition covers (a clock far ahead or behind) is
// stored all the same (DEFAULT), is found by queries, moves into its day's
// partition when that is created, and goes with the retention.
func TestEventOutsidePartitions(t *testing.T) {
	db := metadatatest.Pool(t)
	ctx := context.Background()
	clk := newClock(time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC))
	w := NewWriter(db, Options{Retention: 72 * time.Hour, Now: clk.now, Log: quiet}, nil)
	future := time.Date(2026, 1, 20, 8, 0, 0, 0, time.UTC)
	past := time.Date(2026, 1, 8, 8, 0, 0, 0, time.UTC)
	runUntilDrained(t, w, func() {
		w.Record(Event{Action: ActionPush, Actor: "skewed", At: future})
		w.Record(Event{Action: ActionPush, Actor: "late", At: past})
	})
	if n := count(t, db, `WHERE tableoid = 'audit_events_default'::regclass`); n != 2 {
		t.Fatalf("%d events in DEFAULT, want 2", n)
	}
	evs, _, err := Query(ctx, db, Filter{Actor: "skewed"})
	if err != nil || len(evs) != 1 || !evs[0].At.Equal(future) {
		t.Fatalf("query: %v %v", evs, err)
	}
	// The 20th arrives: its partition is created over DEFAULT's row for
	// it (attaching would fail were the row left there), and the 8th's
	// row, now past retention, goes.
	clk.set(time.Date(2026, 1, 20, 0, 30, 0, 0, time.UTC))
	if err := w.Maintain(ctx); err != nil {
		t.Fatalf("Maintain with DEFAULT holding a row of a new day: %v", err)
	}
	if n := count(t, db, `WHERE tableoid = 'audit_events_p20260120'::regclass AND actor = 'skewed'`); n != 1 {
		t.Fatalf("the skewed event did not move into its day's partition")
	}
	if n := count(t, db, ""); n != 1 {
		t.Fatalf("%d events, want only the skewed one (the late one is past retention)", n)
	}
}

// Record never blocks: with nobody writing, or the database unreachable,
// or slow, the queue fills and further events are dropped and counted.
func TestRecordNeverBlocks(t *testing.T) {
	t.Run("nobody writing", func(t *testing.T) {
		w := NewWriter(nil, Options{Buffer: 10}, nil)
		for range 100 {
			w.Record(Event{Action: ActionPull})
		}
		if n := testutil.ToFloat64(w.dropped.WithLabelValues("buffer_full")); n != 90 {
			t.Fatalf("dropped %v, want 90", n)
		}
	})
	t.Run("database unreachable", func(t *testing.T) {
		db, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		reg := prometheus.NewRegistry()
		w := NewWriter(db, Options{Buffer: 20, BatchMax: 5, FlushEvery: time.Millisecond, Retries: 1, RetryBackoff: time.Millisecond, Log: quiet}, reg)
		runUntilDrained(t, w, func() {
			for range 500 {
				w.Record(Event{Action: ActionPull})
			}
		})
		full, failed := testutil.ToFloat64(w.dropped.WithLabelValues("buffer_full")), testutil.ToFloat64(w.dropped.WithLabelValues("write_failed"))
		if testutil.ToFloat64(w.written) != 0 || full+failed != 500 || full == 0 || failed == 0 {
			t.Fatalf("written %v, dropped: buffer_full %v, write_failed %v; want all 500 dropped, both ways", testutil.ToFloat64(w.written), full, failed)
		}
	})
	t.Run("database slow", func(t *testing.T) {
		db := metadatatest.Pool(t)
		ctx := context.Background()
		now := time.Now()
		w := NewWriter(db, Options{Buffer: 50, BatchMax: 10, FlushEvery: time.Millisecond, Log: quiet}, nil)
		if err := w.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
		// Today's partition is locked: every write waits.
		tx, err := db.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, `LOCK TABLE `+partitionName(now.UTC().Truncate(day))+` IN ACCESS EXCLUSIVE MODE`); err != nil {
			t.Fatal(err)
		}
		const total = 50 + 10 + 40 // queue + one batch in hand + what must drop
		runUntilDrained(t, w, func() {
			for range total {
				w.Record(Event{Action: ActionPull, At: now})
			}
			// Every Record returned with the writer stuck.
			if n := testutil.ToFloat64(w.dropped.WithLabelValues("buffer_full")); n < 40 {
				t.Errorf("dropped %v with the database stuck, want ≥ 40", n)
			}
			tx.Rollback(ctx)
		})
		written := testutil.ToFloat64(w.written)
		if dropped := testutil.ToFloat64(w.dropped.WithLabelValues("buffer_full")); written+dropped != total || int(written) != count(t, db, "") {
			t.Fatalf("written %v + dropped %v != %d recorded (stored: %d)", written, dropped, total, count(t, db, ""))
		}
	})
}

// When Run's context ends, what is queued is written before it returns,
// however long before the next flush was due.
func TestShutdownFlushes(t *testing.T) {
	db := metadatatest.Pool(t)
	w := NewWriter(db, Options{FlushEvery: time.Hour, BatchMax: 1000, Log: quiet}, nil)
	runUntilDrained(t, w, func() {
		for range 2500 {
			w.Record(Event{Action: ActionPush})
		}
	})
	if n := count(t, db, ""); n != 2500 {
		t.Fatalf("%d events stored after shutdown, want 2500", n)
	}
}
