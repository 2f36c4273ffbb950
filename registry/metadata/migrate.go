// Package metadata is the registry's PostgreSQL metadata store: its schema,
// kept as numbered, reversible migrations embedded in the binary (applied
// by registry/pgmigrate), and the queries over it. Handlers never build SQL
// themselves.
//
// It does not touch blob bytes: those live in the storage driver.
package metadata

import (
	"context"
	"embed"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gaia-registry/gaia/registry/pgmigrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Schema is the registry's migrations, recorded in schema_migrations.
var Schema = pgmigrate.Set{FS: migrationFiles, Dir: "migrations", Table: "schema_migrations",
	Lock: 0x67616961_6d696772} // "gaiamigr"

// Migration is one numbered schema change and its inverse.
type Migration = pgmigrate.Migration

// ErrSchemaNewer means the database was migrated by a newer binary.
var ErrSchemaNewer = pgmigrate.ErrSchemaNewer

// Migrations returns the embedded migrations in order.
func Migrations() ([]Migration, error) { return Schema.Migrations() }

// Latest is the newest schema version this binary knows.
func Latest() int { return Schema.Latest() }

// Version returns the schema version applied to the database (0 when
// nothing is).
func Version(ctx context.Context, pool *pgxpool.Pool) (int, error) { return Schema.Version(ctx, pool) }

// Migrate applies every pending migration, each in its own transaction,
// and returns the versions before and after.
func Migrate(ctx context.Context, pool *pgxpool.Pool) (from, to int, err error) {
	return Schema.Migrate(ctx, pool)
}

// Rollback reverts the newest `steps` applied migrations.
func Rollback(ctx context.Context, pool *pgxpool.Pool, steps int) (from, to int, err error) {
	return Schema.Rollback(ctx, pool, steps)
}
