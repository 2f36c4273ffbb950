// Package pgmigrate applies a daemon's PostgreSQL schema: numbered,
// reversible migrations embedded in its binary (NNNN_name.up.sql and
// NNNN_name.down.sql), each applied with its bookkeeping in one
// transaction, serialised across processes by an advisory lock, and
// recorded in a version table of the schema's own, so that schemas sharing
// one database (the registry's, the scheduler's) never touch each other's.
// Command is the `migrate` subcommand every daemon with a schema offers.
//
// It knows nothing of any schema's tables.
package pgmigrate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Migration is one numbered schema change and its inverse.
type Migration struct {
	Version int
	Name    string
	Up      string
	Down    string
}

// Set is one schema's migrations and where it records them.
type Set struct {
	FS    fs.FS  // holds Dir
	Dir   string // the directory of NNNN_name.{up,down}.sql files
	Table string // its version table ("schema_migrations")
	Lock  int64  // the advisory lock serialising its migrations
}

// ErrSchemaNewer means the database was migrated by a newer binary.
var ErrSchemaNewer = errors.New("the database schema is newer than this binary")

var migrationName = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$`)

// Migrations returns the set's migrations in order. Versions start at 1
// and have no gaps, and every one has both directions.
func (s Set) Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(s.FS, s.Dir)
	if err != nil {
		return nil, err
	}
	byVersion := map[int]*Migration{}
	for _, e := range entries {
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migration file %q is not named NNNN_name.up.sql or NNNN_name.down.sql", e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		body, err := fs.ReadFile(s.FS, s.Dir+"/"+e.Name())
		if err != nil {
			return nil, err
		}
		mig := byVersion[v]
		if mig == nil {
			mig = &Migration{Version: v, Name: m[2]}
			byVersion[v] = mig
		} else if mig.Name != m[2] {
			return nil, fmt.Errorf("migration %04d has two names: %s and %s", v, mig.Name, m[2])
		}
		if m[3] == "up" {
			mig.Up = string(body)
		} else {
			mig.Down = string(body)
		}
	}
	out := make([]Migration, 0, len(byVersion))
	for _, m := range byVersion {
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i, m := range out {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migrations must be numbered 1, 2, 3, ...: found %04d at position %d", m.Version, i+1)
		}
		if m.Up == "" || m.Down == "" {
			return nil, fmt.Errorf("migration %04d_%s needs both an .up.sql and a .down.sql file", m.Version, m.Name)
		}
	}
	return out, nil
}

// Latest is the newest schema version the set holds.
func (s Set) Latest() int {
	ms, err := s.Migrations()
	if err != nil {
		panic(err) // embedded files: a broken set is a build defect, caught by the tests
	}
	return len(ms)
}

// Version returns the schema version applied to the database (0 when
// nothing is).
func (s Set) Version(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, s.Table).Scan(&exists); err != nil {
		return 0, err
	}
	if !exists {
		return 0, nil
	}
	var v int
	err := pool.QueryRow(ctx, `SELECT COALESCE(max(version), 0) FROM `+s.Table).Scan(&v)
	return v, err
}

// Migrate applies every pending migration, each in its own transaction,
// and returns the versions before and after.
func (s Set) Migrate(ctx context.Context, pool *pgxpool.Pool) (from, to int, err error) {
	return s.migrateTo(ctx, pool, func(current, latest int) int { return latest })
}

// Rollback reverts the newest `steps` applied migrations.
func (s Set) Rollback(ctx context.Context, pool *pgxpool.Pool, steps int) (from, to int, err error) {
	if steps < 1 {
		return 0, 0, fmt.Errorf("rollback needs at least one step, got %d", steps)
	}
	return s.migrateTo(ctx, pool, func(current, latest int) int { return max(current-steps, 0) })
}

func (s Set) migrateTo(ctx context.Context, pool *pgxpool.Pool, target func(current, latest int) int) (from, to int, err error) {
	ms, err := s.Migrations()
	if err != nil {
		return 0, 0, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, s.Lock); err != nil {
		return 0, 0, fmt.Errorf("taking the migration lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, s.Lock)

	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+s.Table+` (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)`); err != nil {
		return 0, 0, err
	}
	if err := conn.QueryRow(ctx, `SELECT COALESCE(max(version), 0) FROM `+s.Table).Scan(&from); err != nil {
		return 0, 0, err
	}
	if from > len(ms) {
		return from, from, fmt.Errorf("%w: %s at version %d, binary knows up to %d", ErrSchemaNewer, s.Table, from, len(ms))
	}
	want := target(from, len(ms))
	to = from
	for to < want {
		m := ms[to]
		if err := runInTx(ctx, conn.Conn(), m.Up,
			`INSERT INTO `+s.Table+` (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
			return from, to, fmt.Errorf("migration %04d_%s up: %w", m.Version, m.Name, err)
		}
		to++
	}
	for to > want {
		m := ms[to-1]
		if err := runInTx(ctx, conn.Conn(), m.Down,
			`DELETE FROM `+s.Table+` WHERE version = $1`, m.Version); err != nil {
			return from, to, fmt.Errorf("migration %04d_%s down: %w", m.Version, m.Name, err)
		}
		to--
	}
	return from, to, nil
}

// runInTx runs a migration's SQL and the bookkeeping statement together:
// a migration is applied (and recorded) whole or not at all.
func runInTx(ctx context.Context, conn *pgx.Conn, body, record string, args ...any) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, body); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, record, args...); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
