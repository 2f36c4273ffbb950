// Package metadata is the registry's PostgreSQL metadata store: its schema,
// kept as numbered, reversible migrations embedded in the binary, and the
// code that applies them. Queries over the schema arrive with the registry
// handlers that use them; handlers never build SQL themselves.
//
// It does not touch blob bytes: those live in the storage driver.
package metadata

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migration is one numbered schema change and its inverse.
type Migration struct {
	Version int
	Name    string
	Up      string
	Down    string
}

var migrationName = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$`)

// Migrations returns the embedded migrations in order. Versions start at 1
// and have no gaps, and every one has both directions.
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

// Latest is the newest schema version this binary knows.
func Latest() int {
	ms, err := Migrations()
	if err != nil {
		panic(err) // embedded files: a broken set is a build defect, caught by the tests
	}
	return len(ms)
}

// ErrSchemaNewer means the database was migrated by a newer binary.
var ErrSchemaNewer = errors.New("the database schema is newer than this binary")

// migrationLock is the advisory lock that serialises migrations, so that
// servers starting together apply each migration once.
const migrationLock int64 = 0x67616961_6d696772 // "gaiamigr"

const createVersionTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)`

// Version returns the schema version applied to the database (0 when
// nothing is).
func Version(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var v int
	err := pool.QueryRow(ctx, `SELECT COALESCE(max(version), 0) FROM schema_migrations`).Scan(&v)
	if err != nil {
		var exists bool
		if qerr := pool.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); qerr == nil && !exists {
			return 0, nil
		}
		return 0, err
	}
	return v, nil
}

// Migrate applies every pending migration, each in its own transaction,
// and returns the versions before and after.
func Migrate(ctx context.Context, pool *pgxpool.Pool) (from, to int, err error) {
	return migrateTo(ctx, pool, func(current, latest int) int { return latest })
}

// Rollback reverts the newest `steps` applied migrations.
func Rollback(ctx context.Context, pool *pgxpool.Pool, steps int) (from, to int, err error) {
	if steps < 1 {
		return 0, 0, fmt.Errorf("rollback needs at least one step, got %d", steps)
	}
	return migrateTo(ctx, pool, func(current, latest int) int { return max(current-steps, 0) })
}

func migrateTo(ctx context.Context, pool *pgxpool.Pool, target func(current, latest int) int) (from, to int, err error) {
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
	if err := conn.QueryRow(ctx, `SELECT COALESCE(max(version), 0) FROM schema_migrations`).Scan(&from); err != nil {
		return 0, 0, err
	}
	if from > len(ms) {
		return from, from, fmt.Errorf("%w: database at version %d, binary knows up to %d", ErrSchemaNewer, from, len(ms))
	}
	want := target(from, len(ms))
	to = from
	for to < want {
		m := ms[to]
		if err := runInTx(ctx, conn.Conn(), m.Up,
			`INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
			return from, to, fmt.Errorf("migration %04d_%s up: %w", m.Version, m.Name, err)
		}
		to++
	}
	for to > want {
		m := ms[to-1]
		if err := runInTx(ctx, conn.Conn(), m.Down,
			`DELETE FROM schema_migrations WHERE version = $1`, m.Version); err != nil {
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
