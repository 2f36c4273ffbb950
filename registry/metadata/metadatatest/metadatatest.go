// Package metadatatest gives tests a fresh PostgreSQL database carrying
// Gaia's metadata schema (tests/harness runs the server). It is for the
// tests of packages built on registry/metadata; metadata's own tests
// migrate by hand, since migrating is what they test.
package metadatatest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/tests/harness"
)

// Database creates an empty database for the test (dropped at its end),
// applies every migration, and returns its URL.
func Database(t testing.TB) string {
	t.Helper()
	url := harness.NewDatabase(t)
	pool := Open(t, url)
	if _, _, err := metadata.Migrate(context.Background(), pool); err != nil {
		t.Fatalf("metadatatest: migrating: %v", err)
	}
	return url
}

// Pool is a connection pool on a fresh migrated database.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return Open(t, Database(t))
}

// Open opens a pool on url, closed when the test ends.
func Open(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatalf("metadatatest: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}
