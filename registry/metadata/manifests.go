package metadata

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/coalesce"
)

// Manifest is a stored manifest.
type Manifest struct {
	Digest       digest.Digest
	MediaType    string
	ArtifactType string
	Subject      digest.Digest // "" when the manifest has none
	Annotations  map[string]string
	Content      []byte // the exact bytes pushed
}

// NewManifest is a manifest to store, with what it refers to.
type NewManifest struct {
	Manifest
	Blobs    []digest.Digest // must be linked in the repository
	Children []digest.Digest // must be manifests of the repository (unless Sparse)
	Tags     []string        // point these tags at it, in the same transaction
	// Sparse lets an index list children the repository does not have: a
	// mirror that copies some platforms of a multi-arch image keeps the
	// upstream's index, and so its digest, unchanged. References are
	// recorded for the children present.
	Sparse bool
}

// MissingError: a manifest refers to blobs or manifests the repository
// does not have.
type MissingError struct {
	Blobs     []digest.Digest
	Manifests []digest.Digest
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("manifest refers to %d unknown blobs and %d unknown manifests", len(e.Blobs), len(e.Manifests))
}

// Manifests stores manifests and tags.
type Manifests struct {
	db *pgxpool.Pool
	// Concurrent lookups of one tag or digest share a query (never one
	// that began before them: see registry/coalesce). Results are shared:
	// callers must not modify them.
	reads coalesce.Group[manifestKey, *Manifest]
	// parked, when set, is called at StepBeforeCommit (tests crash or cut
	// a request there).
	parked func(step string)
}

// StepBeforeCommit: a manifest PUT has written every row of its
// transaction and not yet committed.
const StepBeforeCommit = "manifest-before-commit"

// Hook sets a function called at the named steps of a Put (tests).
func (m *Manifests) Hook(f func(step string)) *Manifests {
	m.parked = f
	return m
}

type manifestKey struct{ repo, tag, digest string }

// NewManifests returns the manifest queries over db.
func NewManifests(db *pgxpool.Pool) *Manifests {
	m := &Manifests{db: db}
	m.reads.Timeout = 30 * time.Second
	return m
}

// IsFKViolation reports a foreign key violation (SQLSTATE 23503): for an
// insert, the row it refers to is gone (garbage collection won the race).
func IsFKViolation(err error) bool { return isFKViolation(err) }

// IsLockNotAvailable: a NOWAIT lock found the row locked (55P03).
func IsLockNotAvailable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55P03"
}

func isFKViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23503"
}

func digestStrings(ds []digest.Digest) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.String()
	}
	return out
}

// repositoryID returns a repository's id, creating the repository if new.
// It never locks an existing row (an upsert's DO UPDATE would, for the
// rest of the transaction, serialising every push to the repository);
// repositories are never deleted, so the lookup cannot go stale.
func repositoryID(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, name string) (int64, error) {
	var id int64
	for range 2 {
		err := q.QueryRow(ctx, `SELECT id FROM repositories WHERE name = $1`, name).Scan(&id)
		if !errors.Is(err, pgx.ErrNoRows) {
			return id, err
		}
		err = q.QueryRow(ctx, `INSERT INTO repositories (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id`, name).Scan(&id)
		if !errors.Is(err, pgx.ErrNoRows) {
			return id, err
		}
		// Created concurrently by another transaction: look again.
	}
	return 0, fmt.Errorf("repository %q: neither found nor created", name)
}

// Put stores a manifest (a no-op if the repository already has it) and
// points its tags at it, all in one transaction: a tag is never visible
// before its manifest, and never points at a manifest whose blobs or
// children are missing. It returns a *MissingError when references are
// unknown.
func (m *Manifests) Put(ctx context.Context, repo string, nm NewManifest) error {
	return pgx.BeginFunc(ctx, m.db, func(tx pgx.Tx) error {
		repoID, err := repositoryID(ctx, tx, repo)
		if err != nil {
			return err
		}
		// A child stored while a sparse index that lists it is being stored
		// must see the index's pending reference, or the index see the
		// child: both take the child digest's lock (in digest order).
		locks := []string{nm.Digest.String()}
		if nm.Sparse {
			locks = append(locks, digestStrings(nm.Children)...)
		}
		slices.Sort(locks)
		for _, d := range slices.Compact(locks) {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, $2))`, d, repoID); err != nil {
				return err
			}
		}
		if err := CheckQuota(ctx, tx, repo, "", 0); err != nil {
			return err
		}
		missing := &MissingError{}
		if len(nm.Blobs) > 0 {
			rows, _ := tx.Query(ctx, `
				SELECT d FROM unnest($2::text[]) AS d
				WHERE NOT EXISTS (SELECT 1 FROM repository_blobs WHERE repository_id = $1 AND digest = d)`,
				repoID, digestStrings(nm.Blobs))
			ds, err := pgx.CollectRows(rows, pgx.RowTo[digest.Digest])
			if err != nil {
				return err
			}
			missing.Blobs = ds
		}
		if len(nm.Children) > 0 && !nm.Sparse {
			// FOR KEY SHARE: a child found here cannot be deleted before
			// this transaction records the index's reference to it.
			rows, _ := tx.Query(ctx, `
				SELECT d FROM unnest($2::text[]) AS d
				WHERE NOT EXISTS (SELECT 1 FROM manifests WHERE repository_id = $1 AND digest = d FOR KEY SHARE)`,
				repoID, digestStrings(nm.Children))
			ds, err := pgx.CollectRows(rows, pgx.RowTo[digest.Digest])
			if err != nil {
				return err
			}
			missing.Manifests = ds
		}
		if len(missing.Blobs)+len(missing.Manifests) > 0 {
			return missing
		}

		var subject *string
		if nm.Subject != "" {
			s := nm.Subject.String()
			subject = &s
		}
		var artifactType *string
		if nm.ArtifactType != "" {
			artifactType = &nm.ArtifactType
		}
		var id int64
		err = tx.QueryRow(ctx, `
			INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject_digest, annotations, content)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (repository_id, digest) DO NOTHING RETURNING id`,
			repoID, nm.Digest.String(), nm.MediaType, artifactType, subject, nm.Annotations, nm.Content).Scan(&id)
		switch {
		case errors.Is(err, pgx.ErrNoRows): // already there (perhaps pushed concurrently): same digest, same bytes
			err := tx.QueryRow(ctx, `SELECT id FROM manifests WHERE repository_id = $1 AND digest = $2`,
				repoID, nm.Digest.String()).Scan(&id)
			if errors.Is(err, pgx.ErrNoRows) { // deleted concurrently between the two statements
				return &MissingError{Manifests: []digest.Digest{nm.Digest}}
			}
			if err != nil {
				return err
			}
		case err != nil:
			return err
		default:
			// Blob links vanishing since the check above (a concurrent
			// unlink) fail this insert on its foreign key; children are
			// locked by the check.
			if _, err := tx.Exec(ctx, `
				INSERT INTO manifest_blobs (manifest_id, repository_id, digest)
				SELECT $1, $2, d FROM unnest($3::text[]) AS d ON CONFLICT DO NOTHING`,
				id, repoID, digestStrings(nm.Blobs)); err != nil {
				if isFKViolation(err) {
					return &MissingError{Blobs: nm.Blobs}
				}
				return err
			}
			if _, err := tx.Exec(ctx, `
				INSERT INTO manifest_references (parent_id, child_id, repository_id)
				SELECT $1, m.id, $2 FROM manifests m
				WHERE m.repository_id = $2 AND m.digest = ANY($3::text[]) ON CONFLICT DO NOTHING`,
				id, repoID, digestStrings(nm.Children)); err != nil {
				return err
			}
			if nm.Sparse && len(nm.Children) > 0 {
				if _, err := tx.Exec(ctx, `
					INSERT INTO manifest_pending_references (parent_id, repository_id, child_digest)
					SELECT $1, $2, d FROM unnest($3::text[]) AS d
					WHERE NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = $2 AND m.digest = d)
					ON CONFLICT DO NOTHING`, id, repoID, digestStrings(nm.Children)); err != nil {
					return err
				}
			}
			// A child that sparse indexes of the repository were waiting for.
			if _, err := tx.Exec(ctx, `
				WITH pending AS (
					DELETE FROM manifest_pending_references WHERE repository_id = $2 AND child_digest = $3
					RETURNING parent_id)
				INSERT INTO manifest_references (parent_id, child_id, repository_id)
				SELECT parent_id, $1, $2 FROM pending ON CONFLICT DO NOTHING`,
				id, repoID, nm.Digest.String()); err != nil {
				return err
			}
		}
		for _, tag := range nm.Tags {
			// A tag an enabled retention policy makes immutable is not
			// moved to another manifest: the update's WHERE refuses it,
			// and no row comes back.
			var moved bool
			err := tx.QueryRow(ctx, `
				INSERT INTO tags (repository_id, name, manifest_id) VALUES ($1, $2, $3)
				ON CONFLICT (repository_id, name) DO UPDATE SET manifest_id = EXCLUDED.manifest_id, updated_at = now()
				WHERE tags.manifest_id = EXCLUDED.manifest_id OR NOT EXISTS (
					SELECT 1 FROM retention_policies p
					WHERE p.enabled AND p.immutable_regex IS NOT NULL AND $4 ~ p.repository_regex AND EXCLUDED.name ~ p.immutable_regex)
				RETURNING true`,
				repoID, tag, id, repo).Scan(&moved)
			if errors.Is(err, pgx.ErrNoRows) {
				return immutableTag(ctx, tx, repo, repoID, tag)
			}
			if err != nil {
				if isFKViolation(err) { // the manifest was deleted under us
					return &MissingError{Manifests: []digest.Digest{nm.Digest}}
				}
				return err
			}
		}
		if m.parked != nil {
			m.parked(StepBeforeCommit)
		}
		return nil
	})
}

// immutableTag is the DENIED error for a push that would move an
// immutable tag, naming the policy and the digest the tag keeps.
func immutableTag(ctx context.Context, tx pgx.Tx, repo string, repoID int64, tag string) error {
	var policy, current string
	err := tx.QueryRow(ctx, `
		SELECT p.name, m.digest FROM tags t JOIN manifests m ON m.id = t.manifest_id, retention_policies p
		WHERE t.repository_id = $1 AND t.name = $2 AND p.enabled AND p.immutable_regex IS NOT NULL
		  AND $3 ~ p.repository_regex AND t.name ~ p.immutable_regex
		ORDER BY p.name LIMIT 1`, repoID, tag, repo).Scan(&policy, &current)
	if err != nil {
		policy, current = "?", "?"
	}
	return errcode.ErrorCodeDenied.WithMessage(fmt.Sprintf(
		"tag %s:%s is immutable (retention policy %q) and points at %s; push under a new tag", repo, tag, policy, current))
}

const manifestColumns = `m.digest, m.media_type, coalesce(m.artifact_type, ''), coalesce(m.subject_digest, ''), m.annotations, m.content`

func scanManifest(row pgx.Row) (*Manifest, error) {
	var mf Manifest
	err := row.Scan(&mf.Digest, &mf.MediaType, &mf.ArtifactType, &mf.Subject, &mf.Annotations, &mf.Content)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return &mf, nil
}

// ByDigest returns a manifest of the repository.
func (m *Manifests) ByDigest(ctx context.Context, repo string, d digest.Digest) (*Manifest, error) {
	return m.reads.Do(ctx, manifestKey{repo: repo, digest: d.String()}, func(ctx context.Context) (*Manifest, error) {
		return scanManifest(m.db.QueryRow(ctx, `
			SELECT `+manifestColumns+` FROM manifests m
			WHERE m.repository_id = (SELECT id FROM repositories WHERE name = $1) AND m.digest = $2`, repo, d.String()))
	})
}

// ByTag returns the manifest a tag points at.
func (m *Manifests) ByTag(ctx context.Context, repo, tag string) (*Manifest, error) {
	return m.reads.Do(ctx, manifestKey{repo: repo, tag: tag}, func(ctx context.Context) (*Manifest, error) {
		return scanManifest(m.db.QueryRow(ctx, `
			SELECT `+manifestColumns+` FROM tags t JOIN manifests m ON m.id = t.manifest_id
			WHERE t.repository_id = (SELECT id FROM repositories WHERE name = $1) AND t.name = $2`, repo, tag))
	})
}

// Pending reports whether an index of the repository lists d as a child
// the repository does not have yet (a sparse index's).
func (m *Manifests) Pending(ctx context.Context, repo string, d digest.Digest) (bool, error) {
	var ok bool
	err := m.db.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM manifest_pending_references
			WHERE repository_id = (SELECT id FROM repositories WHERE name = $1) AND child_digest = $2)`,
		repo, d.String()).Scan(&ok)
	return ok, err
}

// Delete removes a manifest and the tags pointing at it. It returns
// ErrNotFound, or ErrReferenced while an index of the repository lists it.
//
// The same statement notifies DeletedChannel ("manifest repo@digest"),
// delivered when it commits: gateways drop the manifest from their caches.
func (m *Manifests) Delete(ctx context.Context, repo string, d digest.Digest) error {
	return notifiedDelete(ctx, m.db, `
		DELETE FROM manifests m USING repositories r
		WHERE r.id = m.repository_id AND r.name = $1 AND m.digest = $2 RETURNING 1`, "manifest", repo, d)
}

// DeletedChannel is the PostgreSQL NOTIFY channel on which each deleted
// manifest ("manifest <repo>@<digest>") and each blob unlinked from a
// repository ("blob <repo>@<digest>") is announced, at commit. Gateways
// LISTEN on it to drop what they cache (registry/gateway).
const DeletedChannel = "gaia_deleted"

// notifiedDelete runs del (a DELETE ... RETURNING with the repository and
// digest as $1 and $2) and, in the same statement, a NOTIFY on
// DeletedChannel for each row it removed. Errors as deleted's.
func notifiedDelete(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, del, kind, repo string, d digest.Digest) error {
	var n int64
	err := db.QueryRow(ctx, `WITH d AS (`+del+`)
		SELECT count(*) FROM (SELECT pg_notify($3, $4 || ' ' || $1 || '@' || $2) FROM d) n`,
		repo, d.String(), DeletedChannel, kind).Scan(&n)
	if isFKViolation(err) {
		return ErrReferenced
	}
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

// deleted maps a DELETE's outcome: ErrReferenced when a foreign key
// still points at the row, ErrNotFound when there was none.
func deleted(tag pgconn.CommandTag, err error) error {
	if isFKViolation(err) {
		return ErrReferenced
	}
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return nil
}

// DeleteTag removes a tag; the manifest stays.
func (m *Manifests) DeleteTag(ctx context.Context, repo, name string) error {
	return deleted(m.db.Exec(ctx, `
		DELETE FROM tags t USING repositories r
		WHERE r.id = t.repository_id AND r.name = $1 AND t.name = $2`, repo, name))
}

// Tags returns up to n tag names after last, in lexical order, and whether
// more follow. A repository that does not exist is ErrNotFound.
func (m *Manifests) Tags(ctx context.Context, repo, last string, n int) ([]string, bool, error) {
	// The repository id as a scalar subquery (not a join) lets PostgreSQL
	// walk the (repository_id, name) primary key in order: an index-only
	// range scan, no sort, whatever the statistics say. The page comes
	// back as one comma-joined value (tag names hold no commas) instead of
	// a row per tag.
	var repoID *int64
	var joined *string
	err := m.db.QueryRow(ctx, `
		SELECT (SELECT id FROM repositories WHERE name = $1), string_agg(name, ',')
		FROM (SELECT t.name FROM tags t
		      WHERE t.repository_id = (SELECT id FROM repositories WHERE name = $1) AND t.name > $2
		      ORDER BY t.name LIMIT $3) page`, repo, last, n+1).Scan(&repoID, &joined)
	if err != nil {
		return nil, false, err
	}
	if repoID == nil {
		return nil, false, ErrNotFound
	}
	names, more := split(joined, n)
	return names, more, nil
}

// Repositories returns up to n names of repositories holding at least one
// manifest after last, in lexical order, and whether more follow.
func (m *Manifests) Repositories(ctx context.Context, last string, n int) ([]string, bool, error) {
	var joined *string
	err := m.db.QueryRow(ctx, `
		SELECT string_agg(name, ',') FROM (
			SELECT name FROM repositories r
			WHERE name > $1 AND EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id)
			ORDER BY name LIMIT $2) page`, last, n+1).Scan(&joined)
	if err != nil {
		return nil, false, err
	}
	names, more := split(joined, n)
	return names, more, nil
}

// split turns a page of up to n+1 comma-joined names into at most n, and
// whether there were more. The aggregate keeps its ordered subquery's
// order; a sort check guards that assumption.
func split(joined *string, n int) ([]string, bool) {
	if joined == nil || *joined == "" {
		return []string{}, false
	}
	names := strings.Split(*joined, ",")
	if !slices.IsSorted(names) {
		slices.Sort(names)
	}
	if len(names) > n {
		return names[:n], true
	}
	return names, false
}

// Referrer is a manifest whose subject is a given digest.
type Referrer struct {
	Digest       digest.Digest
	MediaType    string
	ArtifactType string
	Size         int64
	Annotations  map[string]string
}

// Referrers lists up to n of the repository's manifests whose subject is
// d, those of artifactType only when it is not empty, oldest first, after
// the manifest last (empty: from the first). A page also ends before its
// descriptors (annotations and all) pass about maxBytes, though it always
// holds one: a client takes a whole page in memory. more says whether
// others follow. ErrNotFound: last names no manifest of the repository
// (deleted since the page it ended).
func (m *Manifests) Referrers(ctx context.Context, repo string, d digest.Digest, artifactType string, last digest.Digest, n, maxBytes int) ([]Referrer, bool, error) {
	// The running size is PostgreSQL's: rows beyond the budget come back
	// without their annotations, so neither side holds more than a page.
	rows, _ := m.db.Query(ctx, `
		SELECT digest, media_type, artifact_type, size, CASE WHEN used <= $6 OR rn = 1 THEN annotations END, used
		FROM (SELECT m.digest, m.media_type, coalesce(m.artifact_type, '') AS artifact_type, length(m.content) AS size,
		             m.annotations,
		             sum(octet_length(coalesce(m.annotations::text, '')) + octet_length(m.media_type) +
		                 octet_length(coalesce(m.artifact_type, '')) + 160) OVER w AS used,
		             row_number() OVER w AS rn
		      FROM manifests m JOIN repositories r ON r.id = m.repository_id
		      WHERE r.name = $1 AND m.subject_digest = $2 AND ($3 = '' OR m.artifact_type = $3)
		        AND m.id > CASE WHEN $4 = '' THEN 0 ELSE
		                     (SELECT l.id FROM manifests l WHERE l.repository_id = r.id AND l.digest = $4) END
		      WINDOW w AS (ORDER BY m.id)
		      ORDER BY m.id LIMIT $5) page
		ORDER BY rn`, repo, d.String(), artifactType, last.String(), n+1, maxBytes)
	var (
		out  []Referrer
		more bool
	)
	for rows.Next() {
		var r Referrer
		var used int64
		if err := rows.Scan(&r.Digest, &r.MediaType, &r.ArtifactType, &r.Size, &r.Annotations, &used); err != nil {
			rows.Close()
			return nil, false, err
		}
		if len(out) == n || (len(out) > 0 && used > int64(maxBytes)) {
			more = true
			break
		}
		out = append(out, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	if len(out) == 0 && last != "" {
		var known bool
		err := m.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM manifests m JOIN repositories r ON r.id = m.repository_id
			WHERE r.name = $1 AND m.digest = $2)`, repo, last.String()).Scan(&known)
		if err != nil {
			return nil, false, err
		}
		if !known {
			return nil, false, ErrNotFound
		}
	}
	return out, more, nil
}
