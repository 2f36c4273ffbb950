// Package store is gaia-scheduler's state in PostgreSQL: its schema (numbered
// migrations embedded in the binary, applied by `gaia-scheduler migrate`),
// the loads a new leader rebuilds its memory from, the reads followers
// serve, and the leader's writes.
//
// Every write a leader makes runs in a transaction that first reads the
// term (the leader's epoch) in scheduler_term FOR SHARE and aborts with
// ErrDeposed when it is not the writer's. A new leader increments the term
// (BumpTerm) before its first write; the increment waits for the share
// locks of transactions under way, so a deposed leader's write either
// commits before the new term exists or is refused. Sessions that stall
// inside a transaction (a paused process) are ended by PostgreSQL after
// idle_in_transaction_session_timeout, so they cannot hold the term's row
// for long.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrDeposed is the answer to a write by a leader whose term is over: a
// newer leader has bumped the term. The writer must step down.
var ErrDeposed = errors.New("store: deposed: another scheduler holds a newer term")

// Store is the scheduler's database.
type Store struct {
	pool *pgxpool.Pool
	// deposed counts writes refused by the term check.
	deposed func()
}

// Options configure Open.
type Options struct {
	URL      string
	MaxConns int32 // default 8
	// StallTimeout is PostgreSQL's idle_in_transaction_session_timeout for
	// the scheduler's sessions (default 5s): a process paused inside a
	// transaction loses its session, and with it the term's share lock.
	StallTimeout time.Duration
	// OnDeposed is called for every write refused by the term check.
	OnDeposed func()
}

// Open connects to PostgreSQL and checks it answers.
func Open(ctx context.Context, o Options) (*Store, error) {
	pc, err := pgxpool.ParseConfig(o.URL)
	if err != nil {
		return nil, err
	}
	pc.ConnConfig.RuntimeParams["jit"] = "off"
	if o.StallTimeout == 0 {
		o.StallTimeout = 5 * time.Second
	}
	pc.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = fmt.Sprint(o.StallTimeout.Milliseconds())
	pc.ConnConfig.RuntimeParams["application_name"] = "gaia-scheduler"
	pc.MaxConns = 8
	if o.MaxConns > 0 {
		pc.MaxConns = o.MaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("cannot reach PostgreSQL at %s:%d: %w", pc.ConnConfig.Host, pc.ConnConfig.Port, err)
	}
	s := &Store{pool: pool, deposed: o.OnDeposed}
	if s.deposed == nil {
		s.deposed = func() {}
	}
	return s, nil
}

// DB is the connection pool (migrations, readiness).
func (s *Store) DB() *pgxpool.Pool { return s.pool }

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Term is the current term and its holder.
func (s *Store) Term(ctx context.Context) (term int64, holder string, err error) {
	err = s.pool.QueryRow(ctx, `SELECT term, holder FROM scheduler_term WHERE id = 1`).Scan(&term, &holder)
	return
}

// BumpTerm starts a new term for holder and returns it. Writes of every
// older term are refused from then on.
func (s *Store) BumpTerm(ctx context.Context, holder string) (int64, error) {
	var term int64
	err := s.pool.QueryRow(ctx,
		`UPDATE scheduler_term SET term = term + 1, holder = $1, changed_at = now() WHERE id = 1 RETURNING term`,
		holder).Scan(&term)
	return term, err
}

// Fenced runs fn in a transaction that holds term: it first reads the term
// FOR SHARE and returns ErrDeposed, running nothing, when it is not term.
// fn's error rolls the transaction back.
func (s *Store) Fenced(ctx context.Context, term int64, fn func(pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var current int64
	if err := tx.QueryRow(ctx, `SELECT term FROM scheduler_term WHERE id = 1 FOR SHARE`).Scan(&current); err != nil {
		return err
	}
	if current != term {
		s.deposed()
		return fmt.Errorf("%w (term %d, the database's is %d)", ErrDeposed, term, current)
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// Unavailable reports whether err means PostgreSQL could not serve the
// query (unreachable, restarting, out of connections): the request may
// succeed later unchanged (answered 503).
func Unavailable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:min(2, len(pgErr.Code))] {
		case "08", "53", "57":
			return true
		}
		return pgErr.Code == "25P03" // idle_in_transaction_session_timeout
	}
	if errors.As(err, new(*pgconn.ConnectError)) || errors.Is(err, pgconn.ErrConnClosed) || pgconn.Timeout(err) {
		return true
	}
	var conn interface{ SafeToRetry() bool }
	return errors.As(err, &conn)
}

// FlushHeartbeats records when each node was last heard from, in one
// statement for all of them, under term.
func (s *Store) FlushHeartbeats(ctx context.Context, term int64, beats map[string]time.Time) error {
	if len(beats) == 0 {
		return nil
	}
	names := make([]string, 0, len(beats))
	ats := make([]time.Time, 0, len(beats))
	for n, t := range beats {
		names = append(names, n)
		ats = append(ats, t)
	}
	return s.Fenced(ctx, term, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE nodes SET last_heartbeat = v.at
FROM unnest($1::text[], $2::timestamptz[]) AS v(name, at)
WHERE nodes.name = v.name AND (nodes.last_heartbeat IS NULL OR nodes.last_heartbeat < v.at)`, names, ats)
		return err
	})
}
