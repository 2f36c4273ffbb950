package store_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gaia-registry/gaia/scheduler/store"
	"github.com/gaia-registry/gaia/tests/harness"
)

func open(t *testing.T) (*store.Store, *atomic.Int64) {
	t.Helper()
	var deposed atomic.Int64
	ctx := context.Background()
	s, err := store.Open(ctx, store.Options{URL: harness.NewDatabase(t), OnDeposed: func() { deposed.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, _, err := store.Migrate(ctx, s.DB()); err != nil {
		t.Fatal(err)
	}
	return s, &deposed
}

func TestMigrateUpDownUp(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	if v, err := store.Version(ctx, s.DB()); err != nil || v != store.Latest() {
		t.Fatalf("version %d, %v; want %d", v, err, store.Latest())
	}
	if _, to, err := store.Rollback(ctx, s.DB(), store.Latest()); err != nil || to != 0 {
		t.Fatalf("rollback to %d: %v", to, err)
	}
	if _, to, err := store.Migrate(ctx, s.DB()); err != nil || to != store.Latest() {
		t.Fatalf("migrate to %d: %v", to, err)
	}
}

// A write under an old term is refused, and changes nothing.
func TestFencedRefusesOldTerm(t *testing.T) {
	s, deposed := open(t)
	ctx := context.Background()
	t1, err := s.BumpTerm(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	insert := func(term int64, name string) error {
		return s.Fenced(ctx, term, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO pools (name, pool) VALUES ($1, '{}')`, name)
			return err
		})
	}
	if err := insert(t1, "one"); err != nil {
		t.Fatal(err)
	}
	t2, err := s.BumpTerm(ctx, "b")
	if err != nil || t2 != t1+1 {
		t.Fatalf("bump: %d, %v", t2, err)
	}
	if err := insert(t1, "two"); !errors.Is(err, store.ErrDeposed) {
		t.Fatalf("write under term %d after %d: %v, want ErrDeposed", t1, t2, err)
	}
	if deposed.Load() != 1 {
		t.Fatalf("OnDeposed called %d times", deposed.Load())
	}
	var n int
	s.DB().QueryRow(ctx, `SELECT count(*) FROM pools WHERE name = 'two'`).Scan(&n)
	if n != 0 {
		t.Fatal("the refused write left a row")
	}
	if err := insert(t2, "three"); err != nil {
		t.Fatal(err)
	}
}

// The bump waits for a write of the old term under way: that write
// commits before the new term exists (and the new leader loads it), never
// after.
func TestBumpWaitsForWriteUnderWay(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	t1, _ := s.BumpTerm(ctx, "a")
	inTx, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.Fenced(ctx, t1, func(tx pgx.Tx) error {
			close(inTx)
			<-release
			_, err := tx.Exec(ctx, `INSERT INTO pools (name, pool) VALUES ('late', '{}')`)
			return err
		})
	}()
	<-inTx
	bumped := make(chan int64, 1)
	go func() {
		t2, err := s.BumpTerm(ctx, "b")
		if err != nil {
			t.Error(err)
		}
		bumped <- t2
	}()
	select {
	case <-bumped:
		t.Fatal("the term was bumped while a write of the old term held it")
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("the old term's write under way: %v", err)
	}
	<-bumped
	var n int
	s.DB().QueryRow(ctx, `SELECT count(*) FROM pools WHERE name = 'late'`).Scan(&n)
	if n != 1 {
		t.Fatal("write lost")
	}
}
