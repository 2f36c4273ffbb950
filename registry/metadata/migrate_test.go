package metadata

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gaia-registry/gaia/tests/harness"
)

// testDB connects to a fresh database of the test's own.
func testDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), harness.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func tables(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(),
		`SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestMigrationsAreWellFormed(t *testing.T) {
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 || Latest() != len(ms) {
		t.Fatalf("%d migrations, Latest() = %d", len(ms), Latest())
	}
}

func TestMigrateUpDownUp(t *testing.T) {
	ctx := context.Background()
	pool := testDB(t)

	if v, err := Version(ctx, pool); err != nil || v != 0 {
		t.Fatalf("empty database: version %d, %v", v, err)
	}
	from, to, err := Migrate(ctx, pool)
	if err != nil || from != 0 || to != Latest() {
		t.Fatalf("Migrate: %d -> %d, %v", from, to, err)
	}
	want := "audit_events audit_events_default blob_placements blobs gc_blob_deletions gc_blob_reviews gc_leases gc_manifest_reviews gc_totals gc_totals_deltas iam_members iam_namespaces iam_robots iam_users manifest_blobs manifest_pending_references manifest_references manifests mirror_rules mirror_runs namespace_blobs namespace_quotas namespace_usage replication_jobs repositories repository_blobs repository_usage retention_policies schema_migrations storage_usage_deltas tags upload_sessions"
	if got := strings.Join(tables(t, pool), " "); got != want {
		t.Fatalf("tables after migrate:\n got %s\nwant %s", got, want)
	}
	// Idempotent.
	if from, to, err := Migrate(ctx, pool); err != nil || from != to || to != Latest() {
		t.Fatalf("second Migrate: %d -> %d, %v", from, to, err)
	}
	// Reversible: all the way down leaves only the bookkeeping table.
	if _, to, err := Rollback(ctx, pool, Latest()); err != nil || to != 0 {
		t.Fatalf("Rollback: to %d, %v", to, err)
	}
	if got := strings.Join(tables(t, pool), " "); got != "schema_migrations" {
		t.Fatalf("tables after rollback: %s", got)
	}
	if _, to, err := Migrate(ctx, pool); err != nil || to != Latest() {
		t.Fatalf("Migrate after rollback: %d, %v", to, err)
	}
}

// Undoing 0012 keeps the collector's counts: pending deltas are folded
// into gc_totals before their table goes.
func TestGCTotalsDeltasRollbackKeepsCounts(t *testing.T) {
	ctx := context.Background()
	pool := testDB(t)
	if _, _, err := Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		INSERT INTO gc_totals (idc, blobs_deleted, bytes_reclaimed) VALUES ('a', 1, 10);
		INSERT INTO gc_totals_deltas (idc, manifests_deleted, blobs_deleted, bytes_reclaimed)
		VALUES ('a', 0, 2, 20), ('a', 0, 0, 5), ('', 3, 4, 0), ('b', 0, 0, 7)`); err != nil {
		t.Fatal(err)
	}
	if _, to, err := Rollback(ctx, pool, Latest()-11); err != nil || to != 11 {
		t.Fatalf("Rollback to 11: %d, %v", to, err)
	}
	rows, _ := pool.Query(ctx, `SELECT idc || ':' || manifests_deleted || '/' || blobs_deleted || '/' || bytes_reclaimed FROM gc_totals ORDER BY idc`)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if want := ":3/4/0 a:0/3/35 b:0/0/7"; strings.Join(got, " ") != want {
		t.Errorf("gc_totals after undoing 0012: %q, want %q", strings.Join(got, " "), want)
	}
}

// TestConcurrentMigrate: servers starting together apply each migration
// once (the advisory lock), and none fails.
func TestConcurrentMigrate(t *testing.T) {
	ctx := context.Background()
	pool := testDB(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	applied := make(chan int, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from, to, err := Migrate(ctx, pool)
			if err != nil {
				errs <- err
				return
			}
			applied <- to - from
		}()
	}
	wg.Wait()
	close(errs)
	close(applied)
	for err := range errs {
		t.Fatal(err)
	}
	total := 0
	for n := range applied {
		total += n
	}
	if total != Latest() {
		t.Fatalf("8 concurrent Migrate calls applied %d migrations in all; want %d", total, Latest())
	}
}

func TestSchemaNewerThanBinary(t *testing.T) {
	ctx := context.Background()
	pool := testDB(t)
	if _, _, err := Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_the_future')`, Latest()+1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Migrate(ctx, pool); !errors.Is(err, ErrSchemaNewer) {
		t.Fatalf("Migrate on a newer schema: %v; want ErrSchemaNewer", err)
	}
}

// TestSchemaRefusesDanglingReferences: the constraints, not the handlers,
// make dangling references impossible.
func TestSchemaRefusesDanglingReferences(t *testing.T) {
	ctx := context.Background()
	pool := testDB(t)
	if _, _, err := Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	mustExec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	violates := func(what, sql string, args ...any) {
		t.Helper()
		_, err := pool.Exec(ctx, sql, args...)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23503" { // foreign_key_violation
			t.Errorf("%s: got %v; want a foreign key violation", what, err)
		}
	}
	// mustID runs an INSERT ... RETURNING id: an error, or an id of 0,
	// would make every check below pass without testing anything.
	mustID := func(sql string, args ...any) int64 {
		t.Helper()
		var id int64
		if err := pool.QueryRow(ctx, sql, args...).Scan(&id); err != nil || id == 0 {
			t.Fatalf("%s: id %d, %v", sql, id, err)
		}
		return id
	}
	repoA := mustID(`INSERT INTO repositories (name) VALUES ('a') RETURNING id`)
	repoB := mustID(`INSERT INTO repositories (name) VALUES ('b') RETURNING id`)
	mustExec(`INSERT INTO blobs (digest, size) VALUES ('sha256:layer', 10)`)
	violates("manifest blob not linked to the repository",
		`WITH m AS (INSERT INTO manifests (repository_id, digest, media_type, content) VALUES ($1, 'sha256:m0', 'x', '') RETURNING id)
		 INSERT INTO manifest_blobs (manifest_id, repository_id, digest) SELECT id, $1, 'sha256:layer' FROM m`, repoA)
	mustExec(`INSERT INTO repository_blobs (repository_id, digest) VALUES ($1, 'sha256:layer')`, repoA)
	layerManifest := mustID(`INSERT INTO manifests (repository_id, digest, media_type, content) VALUES ($1, 'sha256:m1', 'x', '') RETURNING id`, repoA)
	mustExec(`INSERT INTO manifest_blobs (manifest_id, repository_id, digest) VALUES ($1, $2, 'sha256:layer')`, layerManifest, repoA)
	violates("unlinking a blob a manifest references",
		`DELETE FROM repository_blobs WHERE repository_id = $1 AND digest = 'sha256:layer'`, repoA)

	index := mustID(`INSERT INTO manifests (repository_id, digest, media_type, content) VALUES ($1, 'sha256:i1', 'x', '') RETURNING id`, repoA)
	mustExec(`INSERT INTO manifest_references (parent_id, child_id, repository_id) VALUES ($1, $2, $3)`, index, layerManifest, repoA)
	violates("deleting a manifest an index refers to", `DELETE FROM manifests WHERE id = $1`, layerManifest)

	otherRepoManifest := mustID(`INSERT INTO manifests (repository_id, digest, media_type, content) VALUES ($1, 'sha256:mb', 'x', '') RETURNING id`, repoB)
	violates("a tag pointing at another repository's manifest",
		`INSERT INTO tags (repository_id, name, manifest_id) VALUES ($1, 'latest', $2)`, repoA, otherRepoManifest)
	violates("an index child from another repository",
		`INSERT INTO manifest_references (parent_id, child_id, repository_id) VALUES ($1, $2, $3)`, index, otherRepoManifest, repoA)

	// Deleting a manifest deletes its tags; deleting the index frees its child.
	mustExec(`INSERT INTO tags (repository_id, name, manifest_id) VALUES ($1, 'v1', $2)`, repoA, index)
	mustExec(`DELETE FROM manifests WHERE id = $1`, index)
	var tagsLeft int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM tags`).Scan(&tagsLeft); err != nil {
		t.Fatal(err)
	}
	if tagsLeft != 0 {
		t.Errorf("%d tags left pointing at a deleted manifest", tagsLeft)
	}
	mustExec(`DELETE FROM manifests WHERE id = $1`, layerManifest)
}
