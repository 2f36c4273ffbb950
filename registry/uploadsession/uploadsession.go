// Package uploadsession runs blob uploads whose state lives in PostgreSQL,
// so that any registry server can take the next chunk of an upload another
// server began. A session row holds the offset and the serialized SHA-256
// state after it; the bytes are appended in place through the storage
// driver, so a chunk never re-reads what earlier chunks wrote. Finishing
// verifies the digest, moves the data to its content-addressed path (one
// object per blob, written once) and records the blob and its link to the
// repository.
//
// It does not parse HTTP or validate repository names: the API handlers do.
package uploadsession

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"
)

var (
	// ErrUnknown: no such session in this repository (never started,
	// finished, cancelled or expired).
	ErrUnknown = errors.New("blob upload unknown")
	// ErrDigestMismatch: the bytes do not hash to the digest the client gave.
	ErrDigestMismatch = errors.New("digest does not match the uploaded content")
	// ErrInvalid: the session's data no longer matches its recorded state (a
	// chunk failed half-way); the client has to start the upload again.
	ErrInvalid = errors.New("blob upload invalid")
)

// RangeError: a chunk did not start where the upload stands.
type RangeError struct {
	Size int64 // bytes received so far: the offset the next chunk must start at
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("chunk must start at offset %d", e.Size)
}

// Session is an upload's state.
type Session struct {
	ID         string
	Repository string
	Size       int64 // bytes received so far
	StartedAt  time.Time
}

// Blob is a finished upload.
type Blob struct {
	Digest digest.Digest
	Size   int64
}

// Store runs uploads against one database and one storage driver.
type Store struct {
	db     *pgxpool.Pool
	driver storagedriver.StorageDriver
	idc    string
}

// DefaultIDC is the IDC of a server that configures none.
const DefaultIDC = "default"

// New returns a Store. The database must have the metadata schema
// (registry/metadata). Finished blobs are recorded as held by DefaultIDC's
// storage unless InIDC says otherwise.
func New(db *pgxpool.Pool, driver storagedriver.StorageDriver) *Store {
	return &Store{db: db, driver: driver, idc: DefaultIDC}
}

// InIDC names the IDC whose storage the driver is.
func (s *Store) InIDC(idc string) *Store {
	s.idc = idc
	return s
}

// uploadDir holds a session's data in storage; removing it removes all.
func uploadDir(id string) string { return "/uploads/" + id }

// UploadPath is where a session's partial data lives in storage.
func UploadPath(id string) string { return uploadDir(id) + "/data" }

// AtEnd is the offset of a chunk that goes wherever the upload stands (a
// streamed chunk, sent without Content-Range). It is resolved under the
// session's row lock, so it cannot race another server's chunk.
const AtEnd int64 = -1

// BlobPath is the content-addressed path of a blob's bytes.
func BlobPath(d digest.Digest) string {
	return fmt.Sprintf("/blobs/%s/%s/%s/data", d.Algorithm(), d.Encoded()[:2], d.Encoded())
}

// Start opens a session in repository repo (created if new).
func (s *Store) Start(ctx context.Context, repo string) (Session, error) {
	id := newID()
	state, err := marshalHash(sha256.New())
	if err != nil {
		return Session{}, err
	}
	var sess Session
	err = s.db.QueryRow(ctx, `
		WITH repo AS (
			INSERT INTO repositories (name) VALUES ($2)
			ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
			RETURNING id)
		INSERT INTO upload_sessions (id, repository_id, storage_path, hash_state)
		SELECT $1, repo.id, $3, $4 FROM repo
		RETURNING id::text, size, created_at`, id, repo, UploadPath(id), state).
		Scan(&sess.ID, &sess.Size, &sess.StartedAt)
	sess.Repository = repo
	return sess, err
}

// Get returns a session's state.
func (s *Store) Get(ctx context.Context, repo, id string) (Session, error) {
	sess := Session{Repository: repo}
	err := s.db.QueryRow(ctx, `
		SELECT u.id::text, u.size, u.created_at FROM upload_sessions u
		JOIN repositories r ON r.id = u.repository_id
		WHERE u.id = $1 AND r.name = $2`, id, repo).Scan(&sess.ID, &sess.Size, &sess.StartedAt)
	if errors.Is(err, pgx.ErrNoRows) || isInvalidUUID(err) {
		return Session{}, ErrUnknown
	}
	return sess, err
}

// locked is a session row held FOR UPDATE for the length of one chunk:
// chunks of one upload are serialised across all servers.
type locked struct {
	tx     pgx.Tx
	id     string
	repoID int64
	path   string
	size   int64
	hash   hash.Hash
}

func (s *Store) lock(ctx context.Context, repo, id string) (*locked, error) {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return nil, err
	}
	l := &locked{tx: tx, id: id}
	var state []byte
	err = tx.QueryRow(ctx, `
		SELECT u.repository_id, u.storage_path, u.size, u.hash_state FROM upload_sessions u
		JOIN repositories r ON r.id = u.repository_id
		WHERE u.id = $1 AND r.name = $2
		FOR UPDATE OF u`, id, repo).Scan(&l.repoID, &l.path, &l.size, &state)
	if err != nil {
		tx.Rollback(ctx)
		if errors.Is(err, pgx.ErrNoRows) || isInvalidUUID(err) {
			return nil, ErrUnknown
		}
		return nil, err
	}
	l.hash = sha256.New()
	if err := l.hash.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		tx.Rollback(ctx)
		return nil, fmt.Errorf("upload %s: stored hash state: %w", id, err)
	}
	return l, nil
}

// at checks that a chunk starting at offset continues the upload.
func (l *locked) at(offset int64) error {
	if offset != AtEnd && offset != l.size {
		return &RangeError{Size: l.size}
	}
	return nil
}

// copyBuffers: chunks are copied 1 MiB at a time, not io.Copy's 32 KiB,
// which cuts the read and write system calls of a large push 32-fold.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// appendChunk appends r at the session's offset, feeding the hash.
func (s *Store) appendChunk(ctx context.Context, l *locked, r io.Reader) error {
	w, err := s.driver.Writer(ctx, l.path, l.size > 0)
	if err != nil {
		var nf storagedriver.PathNotFoundError
		if errors.As(err, &nf) {
			return ErrInvalid // the data vanished (expired and swept meanwhile)
		}
		return err
	}
	if w.Size() != l.size {
		// A chunk failed half-way: the data has bytes the session never
		// recorded, and the driver API cannot truncate them.
		w.Close()
		return ErrInvalid
	}
	buf := copyBuffers.Get().(*[]byte)
	n, err := io.CopyBuffer(io.MultiWriter(w, l.hash), r, *buf)
	copyBuffers.Put(buf)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	l.size += n
	return nil
}

// Append adds one chunk that must start at offset (the session's size), or
// at AtEnd.
func (s *Store) Append(ctx context.Context, repo, id string, offset int64, r io.Reader) (Session, error) {
	l, err := s.lock(ctx, repo, id)
	if err != nil {
		return Session{}, err
	}
	defer l.tx.Rollback(ctx)
	if err := l.at(offset); err != nil {
		return Session{}, err
	}
	if err := s.appendChunk(ctx, l, r); err != nil {
		return Session{}, err
	}
	state, err := marshalHash(l.hash)
	if err != nil {
		return Session{}, err
	}
	sess := Session{ID: id, Repository: repo, Size: l.size}
	err = l.tx.QueryRow(ctx, `UPDATE upload_sessions SET size = $2, hash_state = $3, updated_at = now()
		WHERE id = $1 RETURNING created_at`, id, l.size, state).Scan(&sess.StartedAt)
	if err != nil {
		return Session{}, err
	}
	return sess, l.tx.Commit(ctx)
}

// Finish appends an optional last chunk (at offset, or AtEnd), checks the content
// against want, stores the blob at its content-addressed path and links it
// to the repository. The session ends, whatever the outcome, except on a
// RangeError, ErrUnknown or a database failure.
func (s *Store) Finish(ctx context.Context, repo, id string, offset int64, last io.Reader, want digest.Digest) (Blob, error) {
	if err := want.Validate(); err != nil {
		return Blob{}, err
	}
	l, err := s.lock(ctx, repo, id)
	if err != nil {
		return Blob{}, err
	}
	defer l.tx.Rollback(ctx)
	if last != nil {
		if err := l.at(offset); err != nil {
			return Blob{}, err
		}
		if err := s.appendChunk(ctx, l, last); err != nil {
			return Blob{}, err
		}
	}
	if l.size == 0 {
		// Nothing was written: make the empty object the blob path needs.
		if err := s.driver.PutContent(ctx, l.path, nil); err != nil {
			return Blob{}, err
		}
	}
	got, err := s.digestOf(ctx, l, want.Algorithm())
	if err != nil {
		return Blob{}, err
	}
	if got != want {
		s.end(ctx, l)
		return Blob{}, ErrDigestMismatch
	}
	// One object per blob, written once: if another upload already stored
	// this digest, keep that object; ours goes with the directory below.
	if _, err := s.driver.Stat(ctx, BlobPath(want)); err != nil {
		if err := s.driver.Move(ctx, l.path, BlobPath(want)); err != nil {
			return Blob{}, err
		}
	}
	if _, err := l.tx.Exec(ctx, `
		WITH b AS (INSERT INTO blobs (digest, size) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING)
		INSERT INTO repository_blobs (repository_id, digest) VALUES ($3, $1) ON CONFLICT DO NOTHING`,
		want.String(), l.size, l.repoID); err != nil {
		return Blob{}, err
	}
	// This IDC's storage holds it now (other IDCs fill from here).
	if _, err := l.tx.Exec(ctx, `INSERT INTO blob_placements (digest, idc) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
		want.String(), s.idc); err != nil {
		return Blob{}, err
	}
	if _, err := l.tx.Exec(ctx, `DELETE FROM upload_sessions WHERE id = $1`, id); err != nil {
		return Blob{}, err
	}
	if err := l.tx.Commit(ctx); err != nil {
		return Blob{}, err
	}
	// Only now, so a failed commit leaves the session's data intact: what
	// is left is our unused copy or the empty directory after the move.
	s.driver.Delete(ctx, uploadDir(id))
	return Blob{Digest: want, Size: l.size}, nil
}

// digestOf returns the content's digest in algorithm alg. SHA-256 comes from
// the running hash; any other algorithm re-reads the data once.
func (s *Store) digestOf(ctx context.Context, l *locked, alg digest.Algorithm) (digest.Digest, error) {
	if alg == digest.SHA256 {
		return digest.NewDigestFromBytes(digest.SHA256, l.hash.Sum(nil)), nil
	}
	if !alg.Available() {
		return "", fmt.Errorf("digest algorithm %q is not supported", alg)
	}
	rc, err := s.driver.Reader(ctx, l.path, 0)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	return alg.FromReader(rc)
}

// end removes a session and its data.
func (s *Store) end(ctx context.Context, l *locked) {
	l.tx.Exec(ctx, `DELETE FROM upload_sessions WHERE id = $1`, l.id)
	if l.tx.Commit(ctx) == nil {
		s.driver.Delete(ctx, uploadDir(l.id))
	}
}

// Cancel ends a session and removes its data.
func (s *Store) Cancel(ctx context.Context, repo, id string) error {
	l, err := s.lock(ctx, repo, id)
	if err != nil {
		return err
	}
	defer l.tx.Rollback(ctx)
	s.end(ctx, l)
	return nil
}

// Expire ends the sessions untouched for longer than maxIdle and removes
// their data; it returns how many it ended. Sessions whose chunk is being
// written right now are locked and skipped.
func (s *Store) Expire(ctx context.Context, maxIdle time.Duration) (int, error) {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx)
	rows, err := tx.Query(ctx, `
		DELETE FROM upload_sessions WHERE id IN (
			SELECT id FROM upload_sessions WHERE updated_at < now() - make_interval(secs => $1)
			FOR UPDATE SKIP LOCKED)
		RETURNING id::text`, maxIdle.Seconds())
	if err != nil {
		return 0, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	for _, id := range ids {
		if err := s.driver.Delete(ctx, uploadDir(id)); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
			return len(ids), err
		}
	}
	return len(ids), nil
}

func marshalHash(h hash.Hash) ([]byte, error) {
	return h.(encoding.BinaryMarshaler).MarshalBinary()
}

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// isInvalidUUID: a client-supplied session id that is not a UUID is an
// unknown session, not a server error.
func isInvalidUUID(err error) bool {
	var pgErr interface{ SQLState() string }
	return errors.As(err, &pgErr) && pgErr.SQLState() == "22P02"
}
