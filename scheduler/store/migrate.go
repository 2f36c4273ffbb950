package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"

	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migration is one numbered schema change and its inverse.
type Migration struct {
	Version  int
	Name     string
	Up, Down string
}

var migrationName = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$`)

// Migrations returns the embedded migrations in order (1, 2, 3, ... with
// both directions each).
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
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
		body, err := fs.ReadFile(migrationFiles, "migrations/"+e.Name())
		if err != nil {
			return nil, err
		}
		mig := byVersion[v]
		if mig == nil {
			mig = &Migration{Version: v, Name: m[2]}
			byVersion[v] = mig
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
		if m.Version != i+1 || m.Up == "" || m.Down == "" {
			return nil, fmt.Errorf("migration %04d_%s: versions must be 1, 2, 3, ... each with .up.sql and .down.sql", m.Version, m.Name)
		}
	}
	return out, nil
}

// Latest is the newest schema version this binary knows.
func Latest() int {
	ms, err := Migrations()
	if err != nil {
		panic(err) // embedded files: a build defect, caught by the tests
	}
	return len(ms)
}

// ErrSchemaNewer means the database was migrated by a newer binary.
var ErrSchemaNewer = errors.New("the scheduler's database schema is newer than this binary")

// The scheduler keeps its own version table and advisory lock, so it may
// share a database with gaia-registry without either's migrations
// touching the other's.
const (
	migrationLock      int64 = 0x67616961_73636864 // "gaiaschd"
	createVersionTable       = `CREATE TABLE IF NOT EXISTS scheduler_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)`
)

// Version is the schema version applied (0 when none is).
func Version(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('scheduler_schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, err
	}
	if !exists {
		return 0, nil
	}
	var v int
	err := pool.QueryRow(ctx, `SELECT COALESCE(max(version), 0) FROM scheduler_schema_migrations`).Scan(&v)
	return v, err
}

// Migrate applies every pending migration, each in its own transaction.
func Migrate(ctx context.Context, pool *pgxpool.Pool) (from, to int, err error) {
	return migrateTo(ctx, pool, func(cur, latest int) int { return latest })
}

// Rollback reverts the newest steps migrations.
func Rollback(ctx context.Context, pool *pgxpool.Pool, steps int) (from, to int, err error) {
	if steps < 1 {
		return 0, 0, fmt.Errorf("rollback needs at least one step, got %d", steps)
	}
	return migrateTo(ctx, pool, func(cur, latest int) int { return max(cur-steps, 0) })
}

func migrateTo(ctx context.Context, pool *pgxpool.Pool, target func(cur, latest int) int) (from, to int, err error) {
	ms, err := Migrations()
	if err != nil {
		return 0, 0, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrationLock); err != nil {
		return 0, 0, fmt.Errorf("taking the migration lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, migrationLock)
	if _, err := conn.Exec(ctx, createVersionTable); err != nil {
		return 0, 0, err
	}
	if err := conn.QueryRow(ctx, `SELECT COALESCE(max(version), 0) FROM scheduler_schema_migrations`).Scan(&from); err != nil {
		return 0, 0, err
	}
	if from > len(ms) {
		return from, from, fmt.Errorf("%w: database at version %d, binary knows up to %d", ErrSchemaNewer, from, len(ms))
	}
	want := target(from, len(ms))
	run := func(body, record string, args ...any) error {
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
	for to = from; to < want; to++ {
		m := ms[to]
		if err := run(m.Up, `INSERT INTO scheduler_schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
			return from, to, fmt.Errorf("migration %04d_%s up: %w", m.Version, m.Name, err)
		}
	}
	for ; to > want; to-- {
		m := ms[to-1]
		if err := run(m.Down, `DELETE FROM scheduler_schema_migrations WHERE version = $1`, m.Version); err != nil {
			return from, to, fmt.Errorf("migration %04d_%s down: %w", m.Version, m.Name, err)
		}
	}
	return from, to, nil
}
