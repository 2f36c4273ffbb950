// Package store keeps mirror rules and the record of their runs in
// PostgreSQL (tables mirror_rules and mirror_runs, migration 0004 of
// registry/metadata). The admin API and the workers share it.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gaia-registry/gaia/mirror-sync/rule"
)

var (
	ErrNotFound = errors.New("no such mirror rule")
	ErrExists   = errors.New("a mirror rule of that name exists")
)

// Run is one run of a rule.
type Run struct {
	ID         int64      `json:"id"`
	Rule       string     `json:"rule"`
	Trigger    string     `json:"trigger"` // schedule or manual
	State      string     `json:"state"`   // queued, running, succeeded, failed
	Worker     string     `json:"worker,omitempty"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	Images     int        `json:"images"`
	Tags       int        `json:"tags"`
	Blobs      int        `json:"blobs"`
	Bytes      int64      `json:"bytes"`
	Errors     []string   `json:"errors"`
	CreatedAt  time.Time  `json:"created_at"`
}

// Entry is a stored rule with its bookkeeping.
type Entry struct {
	Rule      rule.Rule  `json:"rule"`
	NextRunAt *time.Time `json:"next_run_at,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
}

// Store is the rules and runs in one database.
type Store struct{ db *pgxpool.Pool }

// New returns a Store over db (migrated by registry/metadata).
func New(db *pgxpool.Pool) *Store { return &Store{db: db} }

func nextRun(r *rule.Rule, now time.Time) *time.Time {
	if !r.Enabled {
		return nil
	}
	s, err := rule.ParseSchedule(r.Schedule)
	if err != nil {
		return nil
	}
	t := s.Next(now)
	return &t
}

// Create stores a new, valid rule.
func (s *Store) Create(ctx context.Context, r *rule.Rule) error {
	spec, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = s.db.Exec(ctx, `
		INSERT INTO mirror_rules (name, spec, enabled, on_demand, next_run_at) VALUES ($1, $2, $3, $4, $5)`,
		r.Name, spec, r.Enabled, r.OnDemand, nextRun(r, time.Now()))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return ErrExists
	}
	return err
}

// Update replaces a rule. A password left empty or redacted keeps the
// stored one (the API never shows it, so clients cannot send it back),
// unless the upstream moved to another host (rule.CarryPassword: a
// *rule.FieldError then).
func (s *Store) Update(ctx context.Context, r *rule.Rule) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		var old rule.Rule
		if err := tx.QueryRow(ctx, `SELECT spec FROM mirror_rules WHERE name = $1 FOR UPDATE`, r.Name).Scan(&old); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return ErrNotFound
			}
			return err
		}
		if err := r.CarryPassword(&old); err != nil {
			return err
		}
		spec, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `
			UPDATE mirror_rules SET spec = $2, enabled = $3, on_demand = $4, next_run_at = $5, updated_at = now()
			WHERE name = $1`, r.Name, spec, r.Enabled, r.OnDemand, nextRun(r, time.Now()))
		return err
	})
}

// Get returns a rule, password included (for workers; the API redacts).
func (s *Store) Get(ctx context.Context, name string) (*Entry, error) {
	var e Entry
	err := s.db.QueryRow(ctx, `SELECT spec, next_run_at, created_at, updated_at FROM mirror_rules WHERE name = $1`, name).
		Scan(&e.Rule, &e.NextRunAt, &e.CreatedAt, &e.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	return &e, err
}

// List returns every rule, by name.
func (s *Store) List(ctx context.Context) ([]Entry, error) {
	rows, _ := s.db.Query(ctx, `SELECT spec, next_run_at, created_at, updated_at FROM mirror_rules ORDER BY name`)
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Entry, error) {
		var e Entry
		err := row.Scan(&e.Rule, &e.NextRunAt, &e.CreatedAt, &e.UpdatedAt)
		return e, err
	})
}

// Delete removes a rule and its history.
func (s *Store) Delete(ctx context.Context, name string) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM mirror_rules WHERE name = $1`, name)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return nil
}

const runColumns = `id, rule, trigger, state, coalesce(worker, ''), started_at, finished_at, images, tags, blobs, bytes, errors, created_at`

func scanRun(row pgx.Row) (Run, error) {
	var r Run
	err := row.Scan(&r.ID, &r.Rule, &r.Trigger, &r.State, &r.Worker, &r.StartedAt, &r.FinishedAt,
		&r.Images, &r.Tags, &r.Blobs, &r.Bytes, &r.Errors, &r.CreatedAt)
	return r, err
}

// RunNow queues a manual run, or returns the rule's queued or running one
// (a rule has at most one at a time); created says which.
func (s *Store) RunNow(ctx context.Context, name string) (run Run, created bool, err error) {
	run, err = scanRun(s.db.QueryRow(ctx, `
		INSERT INTO mirror_runs (rule, trigger) SELECT name, 'manual' FROM mirror_rules WHERE name = $1
		ON CONFLICT (rule) WHERE state IN ('queued', 'running') DO NOTHING
		RETURNING `+runColumns, name))
	if err == nil {
		return run, true, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return Run{}, false, err
	}
	run, err = scanRun(s.db.QueryRow(ctx, `
		SELECT `+runColumns+` FROM mirror_runs WHERE rule = $1 AND state IN ('queued', 'running')`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return Run{}, false, ErrNotFound // no such rule (or its run just ended: ask again)
	}
	return run, false, err
}

// Runs returns a rule's most recent runs, newest first.
func (s *Store) Runs(ctx context.Context, name string, limit int) ([]Run, error) {
	rows, _ := s.db.Query(ctx, `SELECT `+runColumns+` FROM mirror_runs WHERE rule = $1 ORDER BY id DESC LIMIT $2`, name, limit)
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Run, error) { return scanRun(row) })
}

// Schedule queues a run for every enabled rule whose next run is due (and
// has none queued or running) and moves its next run on; it returns how
// many runs it queued. Every worker may call it: each rule row is updated
// once per due time.
func (s *Store) Schedule(ctx context.Context, now time.Time) (int, error) {
	rows, _ := s.db.Query(ctx, `
		SELECT name, spec FROM mirror_rules
		WHERE enabled AND next_run_at <= $1 ORDER BY next_run_at FOR UPDATE SKIP LOCKED`, now)
	type due struct {
		name string
		r    rule.Rule
	}
	dues, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (due, error) {
		var d due
		return d, row.Scan(&d.name, &d.r)
	})
	if err != nil {
		return 0, err
	}
	queued := 0
	for _, d := range dues {
		err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
			// Re-check under the row lock: another worker may have moved it on.
			var next *time.Time
			if err := tx.QueryRow(ctx, `SELECT next_run_at FROM mirror_rules WHERE name = $1 FOR UPDATE`, d.name).Scan(&next); err != nil {
				return err
			}
			if next == nil || next.After(now) {
				return nil
			}
			tag, err := tx.Exec(ctx, `
				INSERT INTO mirror_runs (rule, trigger) VALUES ($1, 'schedule')
				ON CONFLICT (rule) WHERE state IN ('queued', 'running') DO NOTHING`, d.name)
			if err != nil {
				return err
			}
			queued += int(tag.RowsAffected())
			_, err = tx.Exec(ctx, `UPDATE mirror_rules SET next_run_at = $2 WHERE name = $1`, d.name, nextRun(&d.r, now))
			return err
		})
		if err != nil {
			return queued, err
		}
	}
	return queued, nil
}

// Claim gives worker the oldest queued run, or a running one whose lease
// ran out (its worker died: the new one resumes it), leased until
// now+lease. ok is false when there is nothing to do.
func (s *Store) Claim(ctx context.Context, worker string, lease time.Duration) (run Run, ok bool, err error) {
	run, err = scanRun(s.db.QueryRow(ctx, `
		UPDATE mirror_runs SET state = 'running', worker = $1, lease_until = now() + make_interval(secs => $2),
		       started_at = coalesce(started_at, now())
		WHERE id = (SELECT id FROM mirror_runs
		            WHERE state = 'queued' OR (state = 'running' AND lease_until < now())
		            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
		RETURNING `+runColumns, worker, lease.Seconds()))
	if errors.Is(err, pgx.ErrNoRows) {
		return Run{}, false, nil
	}
	return run, err == nil, err
}

// ErrLeaseLost: the run is no longer this worker's (its lease ran out and
// another worker took it, or it ended).
var ErrLeaseLost = errors.New("mirror run lease lost")

// Progress adds to a run's counters and extends its lease; it fails with
// ErrLeaseLost when the run is no longer worker's.
func (s *Store) Progress(ctx context.Context, id int64, worker string, lease time.Duration, images, tags, blobs int, bytes int64) error {
	tag, err := s.db.Exec(ctx, `
		UPDATE mirror_runs SET images = images + $3, tags = tags + $4, blobs = blobs + $5, bytes = bytes + $6,
		       lease_until = now() + make_interval(secs => $7)
		WHERE id = $1 AND worker = $2 AND state = 'running'`, id, worker, images, tags, blobs, bytes, lease.Seconds())
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrLeaseLost
	}
	return nil
}

// Finish ends a run as succeeded or failed, with its errors.
func (s *Store) Finish(ctx context.Context, id int64, worker string, failed bool, errs []string) error {
	state := "succeeded"
	if failed {
		state = "failed"
	}
	if errs == nil {
		errs = []string{}
	}
	tag, err := s.db.Exec(ctx, `
		UPDATE mirror_runs SET state = $3, errors = $4, finished_at = now(), lease_until = NULL
		WHERE id = $1 AND worker = $2 AND state = 'running'`, id, worker, state, errs)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrLeaseLost
	}
	return nil
}

// Release hands a run this worker is leaving (it is shutting down) back
// to the queue, so another worker resumes it at once.
func (s *Store) Release(ctx context.Context, id int64, worker string) error {
	_, err := s.db.Exec(ctx, `
		UPDATE mirror_runs SET state = 'queued', worker = NULL, lease_until = NULL
		WHERE id = $1 AND worker = $2 AND state = 'running'`, id, worker)
	return err
}
