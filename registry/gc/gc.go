// Package gc is Gaia's online garbage collector: it deletes untagged,
// unreferenced manifests and the blobs no manifest references, in every
// IDC's storage, while clients push and pull. There is no read-only window
// and no lock over the registry.
//
// The pieces (docs/architecture.md, "Garbage collection", has the safety
// argument):
//
//   - Review queues in PostgreSQL (gc_manifest_reviews, gc_blob_reviews),
//     filled by triggers in the transactions that add or drop a reference.
//     An entry is due once it is older than Options.ReviewAfter.
//   - A review decides in one transaction, under row locks on what it may
//     delete (the manifest row; the blob row and its repository links),
//     which every new reference to the same object conflicts with through
//     its foreign key: exactly one of the deletion and the reference
//     commits, and the loser's statement fails (the API answers
//     BLOB_UNKNOWN or MANIFEST_BLOB_UNKNOWN).
//   - Deleting a blob removes its rows and turns each of its placements
//     into a gc_blob_deletions row for that IDC, in the same transaction.
//     Only an IDC's own servers reach its storage: they delete the bytes
//     under the IDC's lock on the digest (metadata.BlobLockKey), unless a
//     new upload or fill placed the blob there again meanwhile.
//   - A rare, paced storage walk removes blob objects that no placement
//     records (a server that crashed between moving bytes into place and
//     recording them), once older than a grace period.
//
// Work is claimed with leases (lease_until) and FOR UPDATE SKIP LOCKED,
// so any number of servers and `gaia-registry gc` workers may run it.
package gc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/uploadsession"
)

// Options configure a Collector.
type Options struct {
	DB *pgxpool.Pool
	// IDC is the collector's IDC: it deletes bytes in Driver, that IDC's
	// storage, and only there. Reviews are cluster-wide.
	IDC    string
	Driver storagedriver.StorageDriver
	// ReviewAfter: an entry is reviewed once queued this long (0: at once).
	ReviewAfter time.Duration
	// KeepUntagged keeps untagged manifests (gc.manifests.untagged: keep);
	// blobs of deleted manifests are collected either way.
	KeepUntagged bool
	// Batch is how many entries one claim takes (default 100).
	Batch int
	// Workers review a claimed batch's entries concurrently (default 4):
	// each review is a few round trips to PostgreSQL.
	Workers int
	// Rate bounds the reviews and byte deletions this collector starts
	// per second (0: no bound), so a large backlog does not compete with
	// clients for CPU and PostgreSQL.
	Rate float64
	// Nice is the CPU niceness (0-19; 0: the process's) of the threads
	// Run and its review workers run on, so that a collector running flat
	// out takes the CPU the server's clients leave, not a share of what
	// they need (as compaction threads run in databases).
	Nice int
	// Lease is how long a claim lasts (default 5m): a worker that dies
	// loses its entries to others when it passes.
	Lease   time.Duration
	Log     *slog.Logger
	Metrics *Metrics // nil: none
	// Holder names this worker in leases (default: a random name).
	Holder string
	// Hook, when set, is called at named steps (tests).
	Hook func(step string)
}

// Steps for Options.Hook.
const (
	// StepBlobDecided: a blob review decided to delete, its row locks
	// are held, nothing is deleted yet.
	StepBlobDecided = "blob-decided"
	// StepBlobDeleted: a blob review's deletions are written, its
	// transaction not yet committed.
	StepBlobDeleted = "blob-deleted"
	// StepBytesChecked: a byte deletion found no placement in its IDC and
	// is about to delete the object (under the IDC's lock on the digest).
	StepBytesChecked = "bytes-checked"
)

// Collector runs garbage collection passes.
type Collector struct {
	o    Options
	pace *time.Ticker // Options.Rate; nil: none
}

// New returns a Collector.
func New(o Options) *Collector {
	if o.Batch <= 0 {
		o.Batch = 100
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.Lease <= 0 {
		o.Lease = 5 * time.Minute
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.IDC == "" {
		o.IDC = uploadsession.DefaultIDC
	}
	if o.Holder == "" {
		o.Holder = randomHolder()
	}
	c := &Collector{o: o}
	if o.Rate > 0 {
		c.pace = time.NewTicker(time.Duration(float64(time.Second) / o.Rate))
	}
	return c
}

// Decision is what a review decided, and why.
type Decision struct {
	Kind       string // "manifest" or "blob"
	Repository string // manifests only
	Digest     string
	Size       int64 // blobs only
	Delete     bool
	Reason     string
}

func (d Decision) String() string {
	verb := "keep"
	if d.Delete {
		verb = "delete"
	}
	if d.Kind == "manifest" {
		return fmt.Sprintf("%s manifest %s@%s: %s", verb, d.Repository, d.Digest, d.Reason)
	}
	return fmt.Sprintf("%s blob %s (%d bytes): %s", verb, d.Digest, d.Size, d.Reason)
}

// Stats counts what a pass did.
type Stats struct {
	ManifestsReviewed, ManifestsDeleted int
	BlobsReviewed, BlobsDeleted         int
	BytesDeleted                        int // byte objects removed from this IDC's storage
	BytesReclaimed                      int64
}

func (s *Stats) add(o Stats) {
	s.ManifestsReviewed += o.ManifestsReviewed
	s.ManifestsDeleted += o.ManifestsDeleted
	s.BlobsReviewed += o.BlobsReviewed
	s.BlobsDeleted += o.BlobsDeleted
	s.BytesDeleted += o.BytesDeleted
	s.BytesReclaimed += o.BytesReclaimed
}

func (s Stats) idle() bool {
	return s.ManifestsReviewed+s.BlobsReviewed+s.BytesDeleted == 0
}

// errDryRun rolls a dry run's decision back.
var errDryRun = errors.New("dry run")

// Pass reviews every due entry and deletes this IDC's queued bytes, batch
// after batch until none is left (entries that come due meanwhile are
// taken too). Manifests go first: the blobs they release are then due in
// the same pass when ReviewAfter is 0.
func (c *Collector) Pass(ctx context.Context) (Stats, error) {
	var total Stats
	for {
		var st Stats
		var errs []error
		n, err := c.manifestBatch(ctx, &st)
		if err != nil {
			errs = append(errs, err)
		}
		m, err := c.blobBatch(ctx, &st)
		if err != nil {
			errs = append(errs, err)
		}
		k, err := c.bytesBatch(ctx, &st)
		if err != nil {
			errs = append(errs, err)
		}
		total.add(st)
		// Each round folds the totals it appended (a pass over a large
		// backlog runs for long).
		c.foldTotals(ctx)
		if err := errors.Join(errs...); err != nil {
			return total, err
		}
		if n+m+k == 0 || ctx.Err() != nil {
			return total, ctx.Err()
		}
	}
}

// Run runs passes until ctx ends, sleeping idle between passes that
// found nothing to do, on a thread of niceness Options.Nice.
func (c *Collector) Run(ctx context.Context, idle time.Duration) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := yieldCPU(c.o.Nice); err != nil {
			c.o.Log.Warn("garbage collection: cannot lower the collector's CPU priority", "nice", c.o.Nice, "err", err)
		}
		c.run(ctx, idle)
	}()
	<-done
}

func (c *Collector) run(ctx context.Context, idle time.Duration) {
	for ctx.Err() == nil {
		st, err := c.Pass(ctx)
		if err != nil && ctx.Err() == nil {
			c.o.Log.Warn("garbage collection pass", "err", err)
		}
		if st.ManifestsDeleted+st.BlobsDeleted+st.BytesDeleted > 0 {
			c.o.Log.Info("garbage collected", "manifests", st.ManifestsDeleted, "blobs", st.BlobsDeleted,
				"objects_removed", st.BytesDeleted, "bytes_reclaimed", st.BytesReclaimed, "idc", c.o.IDC)
		}
		c.observeQueues(ctx)
		if _, err := metadata.FoldUsage(ctx, c.o.DB); err != nil && ctx.Err() == nil {
			c.o.Log.Warn("folding storage usage", "err", err)
		}
		if err == nil && !st.idle() {
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(idle):
		}
	}
}

func (c *Collector) hook(step string) {
	if c.o.Hook != nil {
		c.o.Hook(step)
	}
}

func secs(d time.Duration) float64 { return d.Seconds() }

// retry runs a review's transaction again when PostgreSQL aborted it for
// a deadlock or a serialization failure (the queues' triggers take rows in
// a fixed order, so this is a second line of defence), at most 3 times.
func retry(f func() error) error {
	for attempt := 0; ; attempt++ {
		err := f()
		var pgErr *pgconn.PgError
		if attempt == 2 || !errors.As(err, &pgErr) || (pgErr.Code != "40P01" && pgErr.Code != "40001") {
			return err
		}
	}
}

// each runs f(0..n-1) on up to Workers goroutines, on threads of
// niceness Options.Nice (each goroutine ends with its thread).
func (c *Collector) each(n int, f func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(n, c.o.Workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			yieldCPU(c.o.Nice) // Run has said so if it cannot
			for i := range next {
				f(i)
			}
		}()
	}
	for i := range n {
		if c.pace != nil {
			<-c.pace.C
		}
		next <- i
	}
	close(next)
	wg.Wait()
}

// manifestBatch claims due manifest reviews and decides each.
func (c *Collector) manifestBatch(ctx context.Context, st *Stats) (int, error) {
	return reviewBatch(ctx, c, "manifest", "gc_manifest_reviews", "manifest_id", c.reviewManifest,
		func(deleted bool) {
			st.ManifestsReviewed++
			if deleted {
				st.ManifestsDeleted++
			}
		})
}

// reviewBatch claims up to Batch due entries of one review queue (table,
// keyed by the column key), decides each with review, and counts each
// decision with tally (under a lock). An entry whose review failed is
// leased again for a second, so another pass retries it soon.
func reviewBatch[K any](ctx context.Context, c *Collector, kind, table, key string,
	review func(context.Context, K, time.Time, bool) (Decision, error), tally func(deleted bool)) (int, error) {
	rows, _ := c.o.DB.Query(ctx, `
		UPDATE `+table+` r SET lease_until = now() + make_interval(secs => $3)
		FROM (SELECT `+key+` FROM `+table+`
		      WHERE queued_at <= now() - make_interval(secs => $1) AND (lease_until IS NULL OR lease_until < now())
		      ORDER BY queued_at LIMIT $2 FOR UPDATE SKIP LOCKED) due
		WHERE r.`+key+` = due.`+key+`
		RETURNING r.`+key+`, r.queued_at`, secs(c.o.ReviewAfter), c.o.Batch, secs(c.o.Lease))
	type entry struct {
		key K
		at  time.Time
	}
	var claimed []entry
	for rows.Next() {
		var e entry
		if err := rows.Scan(&e.key, &e.at); err != nil {
			rows.Close()
			return 0, err
		}
		claimed = append(claimed, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		c.o.Metrics.error("claim")
		return 0, err
	}
	var mu sync.Mutex
	var errs []error
	c.each(len(claimed), func(i int) {
		e := claimed[i]
		d, err := review(ctx, e.key, e.at, false)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			c.o.Metrics.error(kind)
			errs = append(errs, fmt.Errorf("%s %v: %w", kind, e.key, err))
			c.o.DB.Exec(context.WithoutCancel(ctx), `UPDATE `+table+` SET lease_until = now() + interval '1 second' WHERE `+key+` = $1`, e.key)
			return
		}
		tally(d.Delete)
		c.o.Metrics.reviewed(kind, d.Delete)
		if d.Delete {
			c.o.Log.Debug("gc", "decision", d.String())
		}
	})
	return len(claimed), errors.Join(errs...)
}

// reviewManifest decides about one manifest (by id) in one transaction
// and, unless dry, acts. The manifest's row is locked FOR UPDATE first: a
// tag or an index reference to it takes a KEY SHARE lock on it (foreign
// key, or Put's FOR KEY SHARE of children), so whichever commits first
// is seen by the other.
func (c *Collector) reviewManifest(ctx context.Context, id int64, queuedAt time.Time, dry bool) (Decision, error) {
	d := Decision{Kind: "manifest"}
	err := retry(func() error {
		d = Decision{Kind: "manifest"}
		return pgx.BeginFunc(ctx, c.o.DB, func(tx pgx.Tx) error {
			var repoID int64
			var subject *string
			err := tx.QueryRow(ctx, `
			SELECT m.repository_id, r.name, m.digest, m.subject_digest FROM manifests m JOIN repositories r ON r.id = m.repository_id
			WHERE m.id = $1 FOR UPDATE OF m`, id).Scan(&repoID, &d.Repository, &d.Digest, &subject)
			if errors.Is(err, pgx.ErrNoRows) {
				d.Reason = "already deleted"
				return c.dropManifestReview(ctx, tx, id, queuedAt, dry)
			}
			if err != nil {
				return err
			}
			var tagged, indexed, pending, subjectHere bool
			if err := tx.QueryRow(ctx, `
			SELECT EXISTS (SELECT 1 FROM tags WHERE manifest_id = $1),
			       EXISTS (SELECT 1 FROM manifest_references WHERE child_id = $1),
			       EXISTS (SELECT 1 FROM manifest_pending_references WHERE repository_id = $2 AND child_digest = $3),
			       $4::text IS NOT NULL AND EXISTS (SELECT 1 FROM manifests WHERE repository_id = $2 AND digest = $4)`,
				id, repoID, d.Digest, subject).Scan(&tagged, &indexed, &pending, &subjectHere); err != nil {
				return err
			}
			switch {
			case tagged:
				d.Reason = "tagged"
			case indexed:
				d.Reason = "listed by an index"
			case pending:
				d.Reason = "awaited by a sparse index"
			case subjectHere:
				d.Reason = "a referrer of " + *subject + ", which is present"
			case c.o.KeepUntagged:
				d.Reason = "untagged, kept by policy (gc.manifests.untagged: keep)"
			default:
				d.Delete = true
				d.Reason = "untagged and unreferenced"
			}
			if !d.Delete || dry {
				return c.dropManifestReview(ctx, tx, id, queuedAt, dry)
			}
			// Its referrers lose their subject: review them too.
			if _, err := tx.Exec(ctx, `
			SELECT gc_queue_manifest(id) FROM manifests WHERE repository_id = $1 AND subject_digest = $2`,
				repoID, d.Digest); err != nil {
				return err
			}
			// Cascades: its blob references (the trigger queues the blobs)
			// and its references to children (queued too).
			if _, err := tx.Exec(ctx, `DELETE FROM manifests WHERE id = $1`, id); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM gc_manifest_reviews WHERE manifest_id = $1`, id); err != nil {
				return err
			}
			return c.addTotals(ctx, tx, "", 1, 0, 0)
		})
	})
	if errors.Is(err, errDryRun) {
		err = nil
	}
	return d, err
}

// dropManifestReview removes a reviewed entry unless it was queued again
// meanwhile (a newer reason to look).
func (c *Collector) dropManifestReview(ctx context.Context, tx pgx.Tx, id int64, queuedAt time.Time, dry bool) error {
	if dry {
		return errDryRun
	}
	_, err := tx.Exec(ctx, `DELETE FROM gc_manifest_reviews WHERE manifest_id = $1 AND queued_at = $2`, id, queuedAt)
	return err
}

// blobBatch claims due blob reviews and decides each.
func (c *Collector) blobBatch(ctx context.Context, st *Stats) (int, error) {
	return reviewBatch(ctx, c, "blob", "gc_blob_reviews", "digest", c.reviewBlob,
		func(deleted bool) {
			st.BlobsReviewed++
			if deleted {
				st.BlobsDeleted++
			}
		})
}

// reviewBlob decides about one blob in one transaction and, unless dry,
// deletes its rows and queues its bytes' deletion in every IDC holding
// them. Locks, in this order (every writer takes them in the same one):
//
//   - the blobs row FOR UPDATE: a new repository link (upload finishing,
//     mount, pull-through) checks its foreign key with KEY SHARE on it;
//   - its repository_blobs rows FOR UPDATE: a manifest PUT naming the
//     blob checks manifest_blobs' foreign key with KEY SHARE on them.
//
// Only then, in a statement that sees everything committed before the
// locks were granted, is manifest_blobs looked at. A reference that
// commits first is seen (the blob stays); one that comes later waits for
// this transaction and then fails its foreign key.
func (c *Collector) reviewBlob(ctx context.Context, dg string, queuedAt time.Time, dry bool) (Decision, error) {
	d := Decision{Kind: "blob", Digest: dg}
	err := retry(func() error {
		d = Decision{Kind: "blob", Digest: dg}
		return pgx.BeginFunc(ctx, c.o.DB, func(tx pgx.Tx) error {
			// The locks and the check go in one round trip (pipelined):
			// PostgreSQL still runs them one after another, each statement
			// with its own snapshot, so the check sees what committed
			// before the locks were granted.
			var refs int
			var repo *string
			b := &pgx.Batch{}
			b.Queue(`SELECT size FROM blobs WHERE digest = $1 FOR UPDATE`, dg).QueryRow(func(r pgx.Row) error {
				return r.Scan(&d.Size)
			})
			b.Queue(`SELECT 1 FROM repository_blobs WHERE digest = $1 FOR UPDATE`, dg).Exec(func(pgconn.CommandTag) error { return nil })
			b.Queue(`
			SELECT count(*), min(r.name) FROM manifest_blobs mb JOIN repositories r ON r.id = mb.repository_id
			WHERE mb.digest = $1`, dg).QueryRow(func(r pgx.Row) error { return r.Scan(&refs, &repo) })
			err := tx.SendBatch(ctx, b).Close()
			if errors.Is(err, pgx.ErrNoRows) {
				d.Reason = "already deleted"
				return c.dropBlobReview(ctx, tx, dg, queuedAt, dry)
			}
			if err != nil {
				return err
			}
			if refs > 0 {
				d.Reason = fmt.Sprintf("referenced by %d manifest(s), in %s among others", refs, *repo)
				return c.dropBlobReview(ctx, tx, dg, queuedAt, dry)
			}
			d.Delete = true
			d.Reason = "no manifest references it"
			if dry {
				return errDryRun
			}
			c.hook(StepBlobDecided)
			// Rows first: from here on nothing can reach the bytes. Each
			// IDC holding them gets a deletion for its own servers. The links
			// go in a statement before the blob's row (storage accounting's
			// trigger on them reads the blob's size).
			if _, err := tx.Exec(ctx, `
			WITH del AS (
				INSERT INTO gc_blob_deletions (digest, idc, size, queued_at)
				SELECT digest, idc, $2, clock_timestamp() FROM blob_placements WHERE digest = $1
				ON CONFLICT (idc, digest) DO UPDATE SET queued_at = EXCLUDED.queued_at, lease_until = NULL)
			DELETE FROM repository_blobs WHERE digest = $1`, dg, d.Size); err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `
			WITH blob AS (DELETE FROM blobs WHERE digest = $1),  -- placements and replication jobs cascade
			review AS (DELETE FROM gc_blob_reviews WHERE digest = $1)
			INSERT INTO gc_totals_deltas (idc, blobs_deleted) VALUES ('', 1)`, dg)
			if err != nil {
				return err
			}
			c.hook(StepBlobDeleted)
			return nil
		})
	})
	if errors.Is(err, errDryRun) {
		err = nil
	}
	return d, err
}

func (c *Collector) dropBlobReview(ctx context.Context, tx pgx.Tx, dg string, queuedAt time.Time, dry bool) error {
	if dry {
		return errDryRun
	}
	_, err := tx.Exec(ctx, `DELETE FROM gc_blob_reviews WHERE digest = $1 AND queued_at = $2`, dg, queuedAt)
	return err
}

// foldTotals folds the appended totals into gc_totals (one fold at a
// time cluster-wide; a busy fold is left to the next round).
func (c *Collector) foldTotals(ctx context.Context) {
	if _, err := c.o.DB.Exec(ctx, `SELECT gc_totals_fold()`); err != nil && ctx.Err() == nil {
		c.o.Log.Warn("folding garbage collection totals", "err", err)
	}
}

// addTotals appends to the running totals (gc_totals_deltas: appends
// never wait on each other; every round of a pass folds them).
func (c *Collector) addTotals(ctx context.Context, tx pgx.Tx, idc string, manifests, blobs, bytes int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO gc_totals_deltas (idc, manifests_deleted, blobs_deleted, bytes_reclaimed) VALUES ($1, $2, $3, $4)`,
		idc, manifests, blobs, bytes)
	return err
}

// blobDir is the directory holding a blob's object: removing it removes all.
func blobDir(dg string) string { return path.Dir(uploadsession.BlobPath(digestOf(dg))) }

// bytesBatch claims this IDC's queued byte deletions and performs each.
func (c *Collector) bytesBatch(ctx context.Context, st *Stats) (int, error) {
	if c.o.Driver == nil {
		return 0, nil
	}
	rows, _ := c.o.DB.Query(ctx, `
		UPDATE gc_blob_deletions x SET lease_until = now() + make_interval(secs => $3)
		FROM (SELECT idc, digest FROM gc_blob_deletions
		      WHERE idc = $1 AND (lease_until IS NULL OR lease_until < now())
		      ORDER BY queued_at LIMIT $2 FOR UPDATE SKIP LOCKED) due
		WHERE x.idc = due.idc AND x.digest = due.digest
		RETURNING x.digest, x.size, x.queued_at`, c.o.IDC, c.o.Batch, secs(c.o.Lease))
	type entry struct {
		d    string
		size int64
		at   time.Time
	}
	var claimed []entry
	for rows.Next() {
		var e entry
		if err := rows.Scan(&e.d, &e.size, &e.at); err != nil {
			rows.Close()
			return 0, err
		}
		claimed = append(claimed, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		c.o.Metrics.error("claim")
		return 0, err
	}
	var mu sync.Mutex
	var errs []error
	c.each(len(claimed), func(i int) {
		e := claimed[i]
		removed, err := c.deleteBytes(ctx, e.d, e.size, e.at)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			c.o.Metrics.error("bytes")
			errs = append(errs, fmt.Errorf("bytes of %s in %s: %w", e.d, c.o.IDC, err))
			c.o.DB.Exec(context.WithoutCancel(ctx), `UPDATE gc_blob_deletions SET lease_until = now() + interval '1 second' WHERE idc = $1 AND digest = $2`, c.o.IDC, e.d)
			return
		}
		if removed {
			st.BytesDeleted++
			st.BytesReclaimed += e.size
			c.o.Metrics.reclaimed(c.o.IDC, e.size)
		}
	})
	return len(claimed), errors.Join(errs...)
}

// deleteBytes removes blob dg's object from this IDC's storage, under the
// IDC's lock on dg, unless a placement here was recorded again meanwhile
// (a new upload or fill of the same digest, which took the same lock to
// put the bytes in place): then the bytes are that placement's and stay.
// The queue row goes either way, unless queued again meanwhile (the blob
// re-stored here and deleted again after the check: that deletion needs
// its own look). A lock held elsewhere (a fill of dg copying right now)
// leaves the row for a later pass.
func (c *Collector) deleteBytes(ctx context.Context, dg string, size int64, queuedAt time.Time) (removed bool, err error) {
	err = pgx.BeginFunc(ctx, c.o.DB, func(tx pgx.Tx) error {
		var got bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))`,
			metadata.BlobLockKey(c.o.IDC, dg)).Scan(&got); err != nil {
			return err
		}
		if !got {
			_, err := tx.Exec(ctx, `UPDATE gc_blob_deletions SET lease_until = now() + interval '5 seconds' WHERE idc = $1 AND digest = $2`, c.o.IDC, dg)
			return err
		}
		var placed bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM blob_placements WHERE digest = $1 AND idc = $2)`,
			dg, c.o.IDC).Scan(&placed); err != nil {
			return err
		}
		if !placed {
			c.hook(StepBytesChecked)
			if err := c.o.Driver.Delete(ctx, blobDir(dg)); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
				return err
			}
			removed = true
		}
		var reclaimed int64
		if removed {
			reclaimed = size
		}
		_, err := tx.Exec(ctx, `
			WITH done AS (DELETE FROM gc_blob_deletions WHERE idc = $1 AND digest = $2 AND queued_at = $3)
			INSERT INTO gc_totals_deltas (idc, bytes_reclaimed) SELECT $1, $4::bigint WHERE $4::bigint > 0`,
			c.o.IDC, dg, queuedAt, reclaimed)
		return err
	})
	return removed, err
}
