package gc

import (
	"context"
	"errors"
	"fmt"
	"path"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/metadata"
)

// StagingSweeper is a driver that keeps temporary files of its own (the
// HDFS driver's @staging): SweepStaging removes those older than olderThan.
type StagingSweeper interface {
	SweepStaging(ctx context.Context, olderThan time.Duration) (int, error)
}

// WalkOptions pace the storage walk.
type WalkOptions struct {
	Every time.Duration // at most one walk of an IDC's storage this often (cluster-wide); default 24h
	Grace time.Duration // objects younger than this are left alone; default 24h
	Rate  float64       // storage entries examined per second at most; default 200
	// Staging, when set, also has its crash-left temporary files removed.
	Staging StagingSweeper
}

// WalkResult is what a walk did.
type WalkResult struct {
	Ran      bool // false: another worker holds the walk, or it ran within Every
	Examined int
	Removed  int
	Staging  int
}

// Walk removes, from this IDC's storage, blob objects no placement in the
// IDC records (what a server that crashed between putting a blob in place
// and recording it left behind), once older than Grace, and the driver's
// stale staging files. At most one worker walks an IDC at a time (a lease
// in gc_leases), at most once per Every, and it examines at most Rate
// entries a second so it never competes with clients. Upload data without
// a session and dead fills' staging directories are removed by every
// server's upload purge (uploadsession.SweepOrphans,
// replication.SweepFills), not here.
func (c *Collector) Walk(ctx context.Context, o WalkOptions) (WalkResult, error) {
	var res WalkResult
	if c.o.Driver == nil {
		return res, nil
	}
	if o.Every <= 0 {
		o.Every = 24 * time.Hour
	}
	if o.Grace <= 0 {
		o.Grace = 24 * time.Hour
	}
	if o.Rate <= 0 {
		o.Rate = 200
	}
	name := "walk:" + c.o.IDC
	var got bool
	err := c.o.DB.QueryRow(ctx, `
		INSERT INTO gc_leases (name, holder, lease_until) VALUES ($1, $2, now() + make_interval(secs => $3))
		ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until
		WHERE (gc_leases.lease_until < now() OR gc_leases.holder = EXCLUDED.holder)
		  AND (gc_leases.last_done IS NULL OR gc_leases.last_done < now() - make_interval(secs => $4))
		RETURNING true`, name, c.o.Holder, secs(c.o.Lease), secs(o.Every)).Scan(&got)
	if errors.Is(err, pgx.ErrNoRows) {
		return res, nil
	}
	if err != nil {
		return res, err
	}
	res.Ran = true
	renewed := time.Now()
	renew := func() error {
		if time.Since(renewed) < c.o.Lease/3 {
			return nil
		}
		renewed = time.Now()
		tag, err := c.o.DB.Exec(ctx, `UPDATE gc_leases SET lease_until = now() + make_interval(secs => $3)
			WHERE name = $1 AND holder = $2`, name, c.o.Holder, secs(c.o.Lease))
		if err == nil && tag.RowsAffected() == 0 {
			err = errors.New("storage walk: lease lost")
		}
		return err
	}
	tick := time.NewTicker(time.Duration(float64(time.Second) / o.Rate))
	defer tick.Stop()
	pace := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		res.Examined++
		return renew()
	}

	var errs []error
	if o.Staging != nil {
		n, err := o.Staging.SweepStaging(ctx, o.Grace)
		res.Staging = n
		c.o.Metrics.sweptN("staging", n)
		if err != nil {
			errs = append(errs, fmt.Errorf("staging: %w", err))
		}
	}
	algs, err := c.o.Driver.List(ctx, "/blobs")
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		return res, err
	}
walk:
	for _, alg := range algs {
		prefixes, err := c.o.Driver.List(ctx, alg)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, prefix := range prefixes {
			if err := pace(); err != nil {
				errs = append(errs, err)
				break walk
			}
			dirs, err := c.o.Driver.List(ctx, prefix)
			if err != nil {
				if !errors.As(err, new(storagedriver.PathNotFoundError)) {
					errs = append(errs, err)
				}
				continue
			}
			var ds []string
			for _, dir := range dirs {
				d := digest.NewDigestFromEncoded(digest.Algorithm(path.Base(alg)), path.Base(dir))
				if d.Validate() == nil {
					ds = append(ds, d.String())
				}
			}
			rows, _ := c.o.DB.Query(ctx, `SELECT d FROM unnest($1::text[]) d
				WHERE NOT EXISTS (SELECT 1 FROM blob_placements WHERE digest = d AND idc = $2)`, ds, c.o.IDC)
			unplaced, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, d := range unplaced {
				if err := pace(); err != nil {
					errs = append(errs, err)
					break walk
				}
				ok, err := c.sweepObject(ctx, d, o.Grace)
				if err != nil {
					c.o.Metrics.error("walk")
					errs = append(errs, err)
				}
				if ok {
					res.Removed++
					c.o.Metrics.sweptN("object", 1)
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		// The lease lapses; another worker (or this one) walks again.
		return res, err
	}
	_, err = c.o.DB.Exec(context.WithoutCancel(ctx), `UPDATE gc_leases SET last_done = now(), lease_until = now()
		WHERE name = $1 AND holder = $2`, name, c.o.Holder)
	return res, err
}

// sweepObject removes blob d's object from this IDC's storage if, under
// the IDC's lock on d, no placement here records it, and it is older than
// grace (a writer may have put it in place and be about to record it in
// a transaction of its own... which holds the lock: the age is for
// writers of older versions, and for a clock skew between hosts).
func (c *Collector) sweepObject(ctx context.Context, d string, grace time.Duration) (bool, error) {
	removed := false
	err := pgx.BeginFunc(ctx, c.o.DB, func(tx pgx.Tx) error {
		var got bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))`,
			metadata.BlobLockKey(c.o.IDC, d)).Scan(&got); err != nil || !got {
			return err
		}
		var placed bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM blob_placements WHERE digest = $1 AND idc = $2)`,
			d, c.o.IDC).Scan(&placed); err != nil || placed {
			return err
		}
		dir := blobDir(d)
		fi, err := c.o.Driver.Stat(ctx, dir+"/data")
		if err != nil {
			if errors.As(err, new(storagedriver.PathNotFoundError)) {
				fi, err = c.o.Driver.Stat(ctx, dir)
			}
			if err != nil {
				if errors.As(err, new(storagedriver.PathNotFoundError)) {
					return nil
				}
				return err
			}
		}
		if time.Since(fi.ModTime()) < grace {
			return nil
		}
		if err := c.o.Driver.Delete(ctx, dir); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
			return err
		}
		removed = true
		return nil
	})
	return removed, err
}
