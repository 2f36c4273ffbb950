// Package uploadsession runs blob uploads whose state lives in PostgreSQL,
// so that any registry server can take the next chunk of an upload another
// server began. A session row holds the offset and the serialized SHA-256
// state after it; the bytes are appended in place through the storage
// driver, so a chunk never re-reads what earlier chunks wrote. Finishing
// verifies the digest, moves the data to its content-addressed path (one
// object per blob, written once) and records the blob and its link to the
// repository.
//
// No database connection or transaction is held while a body streams: a
// chunk claims its session in one short statement (a writer token and a
// lease), streams to storage, and records the new offset and hash state in
// a second statement that checks the claim. While the body streams the
// lease is renewed; a server that dies mid-chunk leaves a claim that lapses
// on its own. A second writer on a claimed session is refused (RangeError
// with Busy set), so bytes of two requests never interleave.
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
	"os"
	"path"
	"strings"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/metadata"
)

var (
	// ErrUnknown: no such session in this repository (never started,
	// finished, cancelled or expired).
	ErrUnknown = errors.New("blob upload unknown")
	// ErrDigestMismatch: the bytes do not hash to the digest the client gave.
	ErrDigestMismatch = errors.New("digest does not match the uploaded content")
	// ErrInvalid: the session's data no longer matches its recorded state (a
	// chunk failed half-way, or its claim lapsed while it wrote); the client
	// has to start the upload again.
	ErrInvalid = errors.New("blob upload invalid")
	// ErrBodyBroken: the client's body broke off (it went away, or stalled
	// past the server's idle timeout). The bytes that arrived are kept.
	ErrBodyBroken = errors.New("the request body broke off")
)

// RangeError: a chunk did not start where the upload stands, or (Busy)
// another request is writing the session right now.
type RangeError struct {
	Size int64 // bytes recorded so far: the offset the next chunk must start at
	Busy bool
}

func (e *RangeError) Error() string {
	if e.Busy {
		return fmt.Sprintf("the upload is being written by another request; it stands at offset %d", e.Size)
	}
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

// DefaultLease is how long a chunk's claim lasts without renewal. A writer
// renews it every third of the lease while its body streams, so only a
// writer whose server died (or lost PostgreSQL for a whole lease) loses it.
const DefaultLease = 30 * time.Second

// Store runs uploads against one database and one storage driver.
type Store struct {
	db     *pgxpool.Pool
	driver storagedriver.StorageDriver
	idc    string
	lease  time.Duration
	// parked, when set, is called at named steps of a request (tests park
	// a request there to crash or cut it at that exact point).
	parked func(step string)
	// localRoot, when set, is where the driver's files are on this machine
	// (WithLocalRoot); syncRange starts writeback of a file range.
	localRoot string
	syncRange func(f *os.File, off, n int64) error
}

// DefaultIDC is the IDC of a server that configures none.
const DefaultIDC = "default"

// New returns a Store. The database must have the metadata schema
// (registry/metadata). Finished blobs are recorded as held by DefaultIDC's
// storage unless InIDC says otherwise.
func New(db *pgxpool.Pool, driver storagedriver.StorageDriver) *Store {
	return &Store{db: db, driver: driver, idc: DefaultIDC, lease: DefaultLease}
}

// InIDC names the IDC whose storage the driver is.
func (s *Store) InIDC(idc string) *Store {
	s.idc = idc
	return s
}

// WithLease sets how long a chunk's claim lasts without renewal.
func (s *Store) WithLease(d time.Duration) *Store {
	if d > 0 {
		s.lease = d
	}
	return s
}

// Steps at which a test hook may park a request (see Hook).
const (
	StepStreamed = "streamed" // a chunk's bytes are in storage, its offset not yet recorded
	StepVerified = "verified" // a finishing upload's digest checked, its data not yet moved
	StepMoved    = "moved"    // a finished blob is at its content-addressed path, not yet recorded
	StepLost     = "lost"     // a renewal found the claim gone; the writer stops at its next read
	StepBusy     = "busy"     // a finishing upload found its blob locked in its IDC and pauses, no transaction open
)

// Hook sets a function called at each named step; tests use it to crash or
// cut a request at that point. Nil (the default) costs nothing.
func (s *Store) Hook(f func(step string)) *Store {
	s.parked = f
	return s
}

func (s *Store) step(name string) {
	if s.parked != nil {
		s.parked(name)
	}
}

// uploadDir holds a session's data in storage; removing it removes all.
func uploadDir(id string) string { return "/uploads/" + id }

// UploadPath is where a session's partial data lives in storage.
func UploadPath(id string) string { return uploadDir(id) + "/data" }

// AtEnd is the offset of a chunk that goes wherever the upload stands (a
// streamed chunk, sent without Content-Range).
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

// Get returns a session's state (the bytes recorded so far).
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

// claim is a session taken by one request. Every identifier comes from the
// row, never from the client's spelling of the session id (PostgreSQL reads
// "{A0...}" and "a0..." as the same uuid; storage paths do not).
type claim struct {
	token   string
	repo    string // the repository, by name (quota checks)
	id      string
	repoID  int64
	path    string
	size    int64
	hash    hash.Hash
	created time.Time
	lost    chan struct{} // closed when a renewal finds the claim gone
	stop    func()        // ends the renewals; idempotent
}

// claim takes the session for one request, or says why it cannot: ErrUnknown,
// or a Busy RangeError while another request holds an unexpired claim.
func (s *Store) claim(ctx context.Context, repo, id string) (*claim, error) {
	c := &claim{token: newID(), repo: repo, lost: make(chan struct{})}
	var state []byte
	var lapsed bool
	err := s.db.QueryRow(ctx, `
		WITH old AS (
			SELECT u.id, u.writer IS NOT NULL AS lapsed FROM upload_sessions u
			JOIN repositories r ON r.id = u.repository_id
			WHERE u.id = $1 AND r.name = $2 AND (u.writer IS NULL OR u.claimed_until < now())
			FOR UPDATE OF u)
		UPDATE upload_sessions u SET writer = $3, claimed_until = now() + make_interval(secs => $4)
		FROM old WHERE u.id = old.id
		RETURNING u.id::text, u.repository_id, u.storage_path, u.size, u.hash_state, u.created_at, old.lapsed`,
		id, repo, c.token, s.lease.Seconds()).Scan(&c.id, &c.repoID, &c.path, &c.size, &state, &c.created, &lapsed)
	if errors.Is(err, pgx.ErrNoRows) {
		// Unknown, or claimed by a live writer: one more look says which.
		sess, gerr := s.Get(ctx, repo, id)
		if gerr != nil {
			return nil, gerr
		}
		return nil, &RangeError{Size: sess.Size, Busy: true}
	}
	if err != nil {
		if isInvalidUUID(err) {
			return nil, ErrUnknown
		}
		return nil, err
	}
	if lapsed {
		// Its last writer's claim lapsed mid-chunk: that writer may be a
		// paused process that still writes, and nothing fences its bytes
		// off the data. The session cannot be trusted; the client starts
		// the upload again.
		c.stop = func() {}
		s.end(c)
		return nil, ErrInvalid
	}
	c.hash = sha256.New()
	if err := c.hash.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		s.release(c)
		return nil, fmt.Errorf("upload %s: stored hash state: %w", c.id, err)
	}
	c.stop = s.renew(c)
	return c, nil
}

// renew extends c's lease every third of it until stop is called. A renewal
// that finds the claim gone (the lease lapsed and another writer took it, or
// the session ended) closes c.lost; one that cannot reach PostgreSQL retries
// until the lease would have lapsed, then gives the claim up too.
func (s *Store) renew(c *claim) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(s.lease / 3)
		defer t.Stop()
		held := time.Now()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), s.lease/3)
			tag, err := s.db.Exec(ctx, `UPDATE upload_sessions SET claimed_until = now() + make_interval(secs => $3)
				WHERE id = $1 AND writer = $2`, c.id, c.token, s.lease.Seconds())
			cancel()
			switch {
			case err == nil && tag.RowsAffected() == 1:
				held = time.Now()
			case err == nil || time.Since(held) >= s.lease:
				close(c.lost)
				s.step(StepLost)
				return
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// release gives a claim up without recording anything (the offset stays
// where it was).
func (s *Store) release(c *claim) {
	if c.stop != nil {
		c.stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.db.Exec(ctx, `UPDATE upload_sessions SET writer = NULL, claimed_until = NULL
		WHERE id = $1 AND writer = $2`, c.id, c.token)
}

// record stores the offset and hash state a chunk reached and releases the
// claim, in one statement that checks the claim is still ours.
func (s *Store) record(ctx context.Context, c *claim) error {
	state, err := marshalHash(c.hash)
	if err != nil {
		return err
	}
	tag, err := s.db.Exec(ctx, `UPDATE upload_sessions
		SET size = $3, hash_state = $4, writer = NULL, claimed_until = NULL, updated_at = now()
		WHERE id = $1 AND writer = $2`, c.id, c.token, c.size, state)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return ErrInvalid // the claim lapsed while we wrote: our bytes are not the session's
	}
	return nil
}

// at checks that a chunk starting at offset continues the upload.
func (c *claim) at(offset int64) error {
	if offset != AtEnd && offset != c.size {
		return &RangeError{Size: c.size}
	}
	return nil
}

// copyBuffers hold a chunk's bytes between the request body and storage:
// 256 KiB, which stays in the CPU cache from the read through the write
// and the hash. Each is filled before it is written: a body arrives in
// reads of a few KiB to a few hundred, and writing each read as it came
// cost a system call per read; with hundreds of uploads trickling in,
// those writes (blocking in the kernel under writeback) held the server's
// threads, and requests waited for them.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

const copyBufferSize = 256 << 10

// copyHashed copies src to dst a full buffer at a time and feeds h the
// bytes dst took: when it returns, h has consumed exactly the n bytes
// written, error or not. (Hashing on a goroutine of its own, overlapping
// the copy, cost more CPU than it saved on this project's 2-core machine,
// where the client and other requests keep both cores busy:
// docs/benchmarks.md.)
func copyHashed(dst io.Writer, h hash.Hash, src io.Reader) (n int64, err error) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	for {
		// Not io.ReadFull: it reports a body that ended mid-buffer as
		// io.ErrUnexpectedEOF, which is also what a body cut short says.
		nr := 0
		var rerr error
		for nr < len(buf) && rerr == nil {
			var k int
			k, rerr = src.Read(buf[nr:])
			nr += k
		}
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			if nw < 0 || nw > nr {
				nw, werr = 0, errors.New("uploadsession: invalid write result")
			}
			h.Write(buf[:nw])
			n += int64(nw)
			if werr == nil && nw < nr {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return n, werr
			}
		}
		switch rerr {
		case nil:
		case io.EOF:
			return n, nil
		default:
			return n, rerr
		}
	}
}

// body reads a request body for a claim: it stops once the claim is lost,
// and remembers whether the failure was the client's (a read error).
type body struct {
	r       io.Reader
	lost    <-chan struct{}
	readErr error
}

var errClaimLost = errors.New("upload claim lapsed while writing")

func (b *body) Read(p []byte) (int, error) {
	select {
	case <-b.lost:
		return 0, errClaimLost
	default:
	}
	n, err := b.r.Read(p)
	select {
	case <-b.lost: // lost while the read waited: these bytes are not ours to write
		return 0, errClaimLost
	default:
	}
	if err != nil && err != io.EOF {
		b.readErr = err
	}
	return n, err
}

// appendChunk appends r at the session's offset, feeding the hash. When the
// client's body fails part-way (it went away), the bytes that did arrive
// are kept and c.size covers them, so the client may resume from there.
func (s *Store) appendChunk(ctx context.Context, c *claim, r io.Reader) error {
	w, err := s.driver.Writer(ctx, c.path, c.size > 0)
	if err != nil {
		var nf storagedriver.PathNotFoundError
		if errors.As(err, &nf) {
			return ErrInvalid // the data vanished (expired and swept meanwhile)
		}
		return err
	}
	if w.Size() != c.size {
		// A chunk failed half-way: the data has bytes the session never
		// recorded, and the driver API cannot truncate them.
		w.Close()
		return ErrInvalid
	}
	b := &body{r: r, lost: c.lost}
	dst, done := s.newWriteback(w, c.path, c.size)
	n, err := copyHashed(dst, c.hash, b)
	done()
	cerr := w.Close()
	if err == nil {
		err = cerr
	}
	if err != nil {
		if b.readErr != nil && cerr == nil && w.Size() == c.size+n {
			// Every byte read was written and hashed: keep them.
			c.size += n
		}
		if errors.Is(err, errClaimLost) {
			return ErrInvalid
		}
		if b.readErr != nil {
			return fmt.Errorf("%w: %v", ErrBodyBroken, b.readErr)
		}
		return err
	}
	c.size += n
	return nil
}

// Append adds one chunk that must start at offset (the session's size), or
// at AtEnd.
func (s *Store) Append(ctx context.Context, repo, id string, offset int64, r io.Reader) (Session, error) {
	c, err := s.claim(ctx, repo, id)
	if err != nil {
		return Session{}, err
	}
	if err := c.at(offset); err != nil {
		s.release(c)
		return Session{}, err
	}
	was := c.size
	err = s.appendChunk(ctx, c, r)
	c.stop()
	if err == nil {
		s.step(StepStreamed)
		err = s.record(ctx, c)
	}
	if err != nil {
		s.settle(c, was, err)
		return Session{}, err
	}
	return Session{ID: c.id, Repository: repo, Size: c.size, StartedAt: c.created}, nil
}

// Finish appends an optional last chunk (at offset, or AtEnd), checks the
// content against want, stores the blob at its content-addressed path and
// links it to the repository. The session ends, whatever the outcome, except
// on a RangeError, ErrUnknown, a storage or a database failure.
func (s *Store) Finish(ctx context.Context, repo, id string, offset int64, last io.Reader, want digest.Digest) (Blob, error) {
	if err := want.Validate(); err != nil {
		return Blob{}, err
	}
	c, err := s.claim(ctx, repo, id)
	if err != nil {
		return Blob{}, err
	}
	was := c.size
	b, err := s.finish(ctx, c, offset, last, want)
	c.stop()
	if err != nil {
		s.settle(c, was, err)
	}
	return b, err
}

// settle leaves a claimed session after a request failed with err: a
// session whose data cannot be finished ends; one that took bytes before a
// failure (the client went away part-way, a later storage step failed)
// records them, so the client can resume from there; otherwise the claim is
// released and the offset stays. It runs on a context of its own, since the
// request's may be gone.
func (s *Store) settle(c *claim, was int64, err error) {
	switch {
	case errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrInvalid):
		s.end(c)
	case c.size != was:
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if s.record(ctx, c) == nil {
			return
		}
		s.release(c)
	default:
		s.release(c)
	}
}

func (s *Store) finish(ctx context.Context, c *claim, offset int64, last io.Reader, want digest.Digest) (Blob, error) {
	if last != nil {
		if err := c.at(offset); err != nil {
			return Blob{}, err
		}
		if err := s.appendChunk(ctx, c, last); err != nil {
			return Blob{}, err
		}
	}
	if c.size == 0 {
		// Nothing was written: make the empty object the blob path needs.
		if err := s.driver.PutContent(ctx, c.path, nil); err != nil {
			return Blob{}, err
		}
	}
	// The object must hold exactly the bytes the session recorded: a chunk
	// that failed half-way may have left more.
	fi, err := s.driver.Stat(ctx, c.path)
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return Blob{}, ErrInvalid
	}
	if err != nil {
		return Blob{}, err
	}
	if fi.Size() != c.size {
		return Blob{}, fmt.Errorf("%w: %d bytes stored, %d recorded", ErrInvalid, fi.Size(), c.size)
	}
	got, err := s.digestOf(ctx, c, want.Algorithm())
	if err != nil {
		return Blob{}, err
	}
	if got != want {
		return Blob{}, ErrDigestMismatch
	}
	s.step(StepVerified)
	// The move and the statement that records the blob run under the
	// IDC's lock on its bytes (metadata.BlobLockKey), which garbage
	// collection's deleters take too: bytes found at the blob's path here
	// cannot be deleted before this IDC's placement is recorded, and a
	// deletion that ran first has removed them. A foreign key violation is
	// a race lost to the collector deleting the blob's row between the
	// statement's parts: tried again, the statement records the blob anew.
	// The lock is tried, not waited for, inside the transaction: a
	// cross-IDC fill holds it for as long as it copies the blob, and a
	// finish waiting in the transaction would hold a database connection
	// meanwhile (issue 10's rule: no connection while bytes flow). A busy
	// lock ends the transaction and is tried again after a pause.
	var ended int
	pause := 20 * time.Millisecond
	for attempt := 0; ; {
		err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
			var got bool
			if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))`,
				metadata.BlobLockKey(s.idc, want.String())).Scan(&got); err != nil {
				return err
			}
			if !got {
				return errBlobBusy
			}
			// The blob's row, if there is one, is held next, before the
			// bytes move, as a review holds it first: a review deciding to
			// delete the blob has done so (the statement below then records
			// it anew, all of it) or waits for this transaction (and then
			// removes all of it). The statement's inserts alone take no lock
			// on the rows they find: one could find this IDC's old placement
			// while the others inserted after the review's delete, leaving
			// a row and a link without the placement, whose bytes the
			// review's deletion then removed. A review holding the row now
			// is waited for as a busy IDC lock is: outside the transaction
			// (the review's threads run at low CPU priority; waiting here
			// would hold this connection and the IDC lock behind them).
			if _, err := tx.Exec(ctx, `SELECT 1 FROM blobs WHERE digest = $1 FOR KEY SHARE NOWAIT`, want.String()); err != nil {
				if metadata.IsLockNotAvailable(err) {
					return errBlobBusy
				}
				return err
			}
			if err := metadata.CheckQuota(ctx, tx, c.repo, want.String(), c.size); err != nil {
				return err
			}
			// One object per blob, written once: if another upload already
			// stored this digest, keep that object; ours goes with the
			// directory below. An existing object of another size is not
			// this blob (a torn copy): ours replaces it.
			if fi, err := s.driver.Stat(ctx, BlobPath(want)); err != nil || fi.Size() != c.size {
				if err := s.driver.Move(ctx, c.path, BlobPath(want)); err != nil {
					return err
				}
			}
			s.step(StepMoved)
			// One statement: end the session if the claim is still ours,
			// record the blob, its link to the repository and this IDC's
			// copy. A crash before it leaves bytes without a row (the
			// collector's storage walk removes them), never a row without
			// bytes.
			return tx.QueryRow(ctx, `
				WITH s AS (DELETE FROM upload_sessions WHERE id = $1 AND writer = $2 RETURNING repository_id),
				b AS (INSERT INTO blobs (digest, size) SELECT $3, $4 FROM s ON CONFLICT (digest) DO NOTHING),
				l AS (INSERT INTO repository_blobs (repository_id, digest) SELECT repository_id, $3 FROM s ON CONFLICT DO NOTHING),
				p AS (INSERT INTO blob_placements (digest, idc) SELECT $3, $5 FROM s ON CONFLICT DO NOTHING)
				SELECT count(*) FROM s`, c.id, c.token, want.String(), c.size, s.idc).Scan(&ended)
		})
		if errors.Is(err, errBlobBusy) {
			s.step(StepBusy)
			select {
			case <-ctx.Done():
				return Blob{}, ctx.Err()
			case <-time.After(pause):
			}
			pause = min(2*pause, time.Second)
			continue
		}
		if err == nil || !metadata.IsFKViolation(err) || attempt == 2 {
			break
		}
		attempt++
	}
	if err != nil {
		return Blob{}, err
	}
	if ended != 1 {
		return Blob{}, ErrInvalid // the claim lapsed meanwhile
	}
	// Only now, so a failed statement leaves the session's data intact: what
	// is left is our unused copy or the empty directory after the move.
	// Not on the request's context: a client gone by now must not leave it.
	s.driver.Delete(context.WithoutCancel(ctx), uploadDir(c.id))
	return Blob{Digest: want, Size: c.size}, nil
}

// digestOf returns the content's digest in algorithm alg. SHA-256 comes from
// the running hash; any other algorithm re-reads the data once.
func (s *Store) digestOf(ctx context.Context, c *claim, alg digest.Algorithm) (digest.Digest, error) {
	if alg == digest.SHA256 {
		return digest.NewDigestFromBytes(digest.SHA256, c.hash.Sum(nil)), nil
	}
	if !alg.Available() {
		return "", fmt.Errorf("digest algorithm %q is not supported", alg)
	}
	rc, err := s.driver.Reader(ctx, c.path, 0)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	return alg.FromReader(rc)
}

// end removes a claimed session and its data. It runs on a context of its
// own: it also cleans up after requests whose client went away.
func (s *Store) end(c *claim) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tag, err := s.db.Exec(ctx, `DELETE FROM upload_sessions WHERE id = $1 AND writer = $2`, c.id, c.token)
	if err == nil && tag.RowsAffected() == 1 {
		s.driver.Delete(ctx, uploadDir(c.id))
	}
}

// Cancel ends a session and removes its data. A session another request is
// writing is not cancelled (Busy RangeError).
func (s *Store) Cancel(ctx context.Context, repo, id string) error {
	c, err := s.claim(ctx, repo, id)
	if err != nil {
		return err
	}
	c.stop()
	s.end(c)
	return nil
}

// Expire ends the sessions untouched for longer than maxIdle and removes
// their data; it returns how many it ended. Sessions under a live claim are
// skipped. A storage error on one session's data does not stop the others;
// all are reported together.
func (s *Store) Expire(ctx context.Context, maxIdle time.Duration) (int, error) {
	rows, err := s.db.Query(ctx, `
		DELETE FROM upload_sessions
		WHERE updated_at < now() - make_interval(secs => $1)
		  AND (claimed_until IS NULL OR claimed_until < now())
		RETURNING id::text`, maxIdle.Seconds())
	if err != nil {
		return 0, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, id := range ids {
		if err := s.driver.Delete(ctx, uploadDir(id)); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
			errs = append(errs, fmt.Errorf("upload %s: %w", id, err))
		}
	}
	return len(ids), errors.Join(errs...)
}

// SweepOrphans removes upload data that no session row owns, once it is
// older than olderThan: what a server that died between ending a session
// and deleting its data left, or a storage error during Expire. (A row is
// created before its data, and a session's data is deleted after its row,
// so young data without a row may be a session ending right now: the age
// leaves it alone.) It returns how many directories it removed.
func (s *Store) SweepOrphans(ctx context.Context, olderThan time.Duration) (int, error) {
	entries, err := s.driver.List(ctx, "/uploads")
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	var ids []string
	for _, p := range entries {
		if id := path.Base(p); canonicalID(id) {
			ids = append(ids, id)
		}
	}
	rows, err := s.db.Query(ctx, `SELECT id::text FROM upload_sessions WHERE id = ANY($1::uuid[])`, ids)
	if err != nil {
		return 0, err
	}
	live, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, err
	}
	owned := make(map[string]bool, len(live))
	for _, id := range live {
		owned[id] = true
	}
	removed := 0
	var errs []error
	for _, p := range entries {
		// Cross-IDC fills stage their copies beside the sessions, under
		// their own lock (replication.SweepFills): not ours.
		if name := path.Base(p); owned[name] || strings.HasPrefix(name, "fill-") {
			continue
		}
		fi, err := s.driver.Stat(ctx, p)
		if err != nil {
			if !errors.As(err, new(storagedriver.PathNotFoundError)) {
				errs = append(errs, err)
			}
			continue
		}
		if time.Since(fi.ModTime()) < olderThan {
			continue
		}
		if err := s.driver.Delete(ctx, p); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
			errs = append(errs, fmt.Errorf("orphaned upload data %s: %w", p, err))
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}

// canonicalID: a session id as the database spells it (lowercase UUID).
// Directories named otherwise (older versions used the client's spelling)
// belong to no row.
func canonicalID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i, c := range id {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case !('0' <= c && c <= '9' || 'a' <= c && c <= 'f'):
			return false
		}
	}
	return true
}

// errBlobBusy: another holder (a cross-IDC fill copying the blob, or the
// collector deleting it) has the IDC's lock on the blob's bytes, or a
// collector's review holds the blob's row.
var errBlobBusy = errors.New("the blob's bytes are locked in this IDC")

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
