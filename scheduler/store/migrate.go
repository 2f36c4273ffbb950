package store

import (
	"context"
	"embed"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gaia-registry/gaia/registry/pgmigrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Schema is the scheduler's migrations. It keeps its own version table and
// advisory lock, so the scheduler may share a database with gaia-registry
// without either's migrations touching the other's.
var Schema = pgmigrate.Set{FS: migrationFiles, Dir: "migrations", Table: "scheduler_schema_migrations",
	Lock: 0x67616961_73636864} // "gaiaschd"

// Migration is one numbered schema change and its inverse.
type Migration = pgmigrate.Migration

// ErrSchemaNewer means the database was migrated by a newer binary.
var ErrSchemaNewer = pgmigrate.ErrSchemaNewer

// Migrations returns the embedded migrations in order.
func Migrations() ([]Migration, error) { return Schema.Migrations() }

// Latest is the newest schema version this binary knows.
func Latest() int { return Schema.Latest() }

// Version is the schema version applied (0 when none is).
func Version(ctx context.Context, pool *pgxpool.Pool) (int, error) { return Schema.Version(ctx, pool) }

// Migrate applies every pending migration, each in its own transaction.
func Migrate(ctx context.Context, pool *pgxpool.Pool) (from, to int, err error) {
	return Schema.Migrate(ctx, pool)
}

// Rollback reverts the newest steps migrations.
func Rollback(ctx context.Context, pool *pgxpool.Pool, steps int) (from, to int, err error) {
	return Schema.Rollback(ctx, pool, steps)
}
