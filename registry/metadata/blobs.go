package metadata

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/coalesce"
)

var (
	// ErrNotFound: the repository does not hold the object.
	ErrNotFound = errors.New("not found")
	// ErrReferenced: a manifest still refers to the blob.
	ErrReferenced = errors.New("still referenced by a manifest")
)

// Blobs answers questions about blobs and their repository links.
type Blobs struct {
	db      *pgxpool.Pool
	lookups coalesce.Group[[3]string, BlobInfo] // concurrent pulls of one layer share the lookup
}

// BlobInfo is what a pull needs to know about a linked blob.
type BlobInfo struct {
	Size  int64
	Local bool // the asking IDC's storage holds it
}

// NewBlobs returns the blob queries over db.
func NewBlobs(db *pgxpool.Pool) *Blobs {
	b := &Blobs{db: db}
	b.lookups.Timeout = 30 * time.Second
	return b
}

// Lookup returns the size of a blob the repository may serve and whether
// IDC idc's storage holds it.
func (b *Blobs) Lookup(ctx context.Context, repo string, d digest.Digest, idc string) (BlobInfo, error) {
	return b.lookups.Do(ctx, [3]string{repo, d.String(), idc}, func(ctx context.Context) (BlobInfo, error) {
		var info BlobInfo
		err := b.db.QueryRow(ctx, `
			SELECT bl.size, EXISTS (SELECT 1 FROM blob_placements p WHERE p.digest = bl.digest AND p.idc = $3)
			FROM repository_blobs rb JOIN blobs bl ON bl.digest = rb.digest
			WHERE rb.repository_id = (SELECT id FROM repositories WHERE name = $1) AND rb.digest = $2`,
			repo, d.String(), idc).Scan(&info.Size, &info.Local)
		if errors.Is(err, pgx.ErrNoRows) {
			return BlobInfo{}, ErrNotFound
		}
		return info, err
	})
}

// Mount links a blob into repository to (created if new) without any
// bytes moving, from one of the repositories in from: the blob must be
// linked in one of them. It returns the blob's size, or ErrNotFound (also
// when from is empty).
func (b *Blobs) Mount(ctx context.Context, to string, from []string, d digest.Digest) (int64, error) {
	if len(from) == 0 {
		return 0, ErrNotFound
	}
	return b.mount(ctx, to, from, d)
}

// MountAny links a blob the registry holds in any repository into to.
// Only for callers that proved the right to the bytes some other way
// (pull-through, after the upstream said it has them; a client whose
// grant covers every repository): linking by digest alone would let
// anyone read any blob whose digest they know.
func (b *Blobs) MountAny(ctx context.Context, to string, d digest.Digest) (int64, error) {
	return b.mount(ctx, to, nil, d)
}

// Holders lists up to limit repositories that link blob d, by name.
func (b *Blobs) Holders(ctx context.Context, d digest.Digest, limit int) ([]string, error) {
	rows, err := b.db.Query(ctx, `SELECT r.name FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id
		WHERE rb.digest = $1 ORDER BY r.name LIMIT $2`, d.String(), limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// mount: from nil, any repository.
func (b *Blobs) mount(ctx context.Context, to string, from []string, d digest.Digest) (int64, error) {
	var size int64
	err := b.db.QueryRow(ctx, `
		WITH src AS (
			SELECT bl.digest, bl.size FROM blobs bl
			WHERE bl.digest = $3 AND ($2::text[] IS NULL OR EXISTS (
				SELECT 1 FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id
				WHERE r.name = ANY($2::text[]) AND rb.digest = bl.digest))),
		repo AS (
			INSERT INTO repositories (name) SELECT $1 WHERE EXISTS (SELECT 1 FROM src)
			ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
			RETURNING id),
		link AS (
			INSERT INTO repository_blobs (repository_id, digest)
			SELECT repo.id, src.digest FROM repo, src
			ON CONFLICT DO NOTHING)
		SELECT size FROM src`, to, from, d.String()).Scan(&size)
	// A foreign key violation: garbage collection deleted the blob
	// between the lookup and the link (its row lock orders the two).
	if errors.Is(err, pgx.ErrNoRows) || isFKViolation(err) {
		return 0, ErrNotFound
	}
	return size, err
}

// Unlink removes a blob from a repository. The bytes stay (other
// repositories may link them); garbage collection reclaims unlinked blobs.
// It is announced on DeletedChannel ("blob repo@digest") at commit.
func (b *Blobs) Unlink(ctx context.Context, repo string, d digest.Digest) error {
	return notifiedDelete(ctx, b.db, `
		DELETE FROM repository_blobs rb USING repositories r
		WHERE r.id = rb.repository_id AND r.name = $1 AND rb.digest = $2 RETURNING 1`, "blob", repo, d)
}
