package gc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
)

func digestOf(s string) digest.Digest { return digest.Digest(s) }

func randomHolder() string {
	var b [4]byte
	rand.Read(b[:])
	host, _ := os.Hostname()
	return host + "-" + hex.EncodeToString(b[:])
}

// Queue is one review or deletion queue's state.
type Queue struct {
	Name   string        `json:"name"` // "manifests", "blobs", "bytes:<idc>"
	Depth  int64         `json:"depth"`
	Due    int64         `json:"due"`
	Oldest time.Duration `json:"oldest_due_age"` // how long the oldest due entry has been due (0: none)
}

// Totals is what the collector has deleted, for the cluster ("") or an IDC.
type Totals struct {
	IDC              string `json:"idc"`
	ManifestsDeleted int64  `json:"manifests_deleted"`
	BlobsDeleted     int64  `json:"blobs_deleted"`
	BytesReclaimed   int64  `json:"bytes_reclaimed"`
}

// Status is `gaia-registry gc status`.
type Status struct {
	ReviewAfter time.Duration `json:"review_after"`
	Queues      []Queue       `json:"queues"`
	Totals      []Totals      `json:"totals"`
}

// Status reads the queues and totals (reviewAfter says which entries are due).
func ReadStatus(ctx context.Context, db *pgxpool.Pool, reviewAfter time.Duration) (Status, error) {
	st := Status{ReviewAfter: reviewAfter}
	rows, _ := db.Query(ctx, `
		SELECT 'manifests', count(*), count(*) FILTER (WHERE queued_at <= now() - make_interval(secs => $1)),
		       coalesce(extract(epoch FROM now() - make_interval(secs => $1) - min(queued_at)), 0)
		FROM gc_manifest_reviews
		UNION ALL
		SELECT 'blobs', count(*), count(*) FILTER (WHERE queued_at <= now() - make_interval(secs => $1)),
		       coalesce(extract(epoch FROM now() - make_interval(secs => $1) - min(queued_at)), 0)
		FROM gc_blob_reviews
		UNION ALL
		(SELECT 'bytes:' || idc, count(*), count(*), extract(epoch FROM now() - min(queued_at))
		 FROM gc_blob_deletions GROUP BY idc ORDER BY idc)`, reviewAfter.Seconds())
	for rows.Next() {
		var q Queue
		var age float64
		if err := rows.Scan(&q.Name, &q.Depth, &q.Due, &age); err != nil {
			rows.Close()
			return st, err
		}
		if age > 0 && q.Due > 0 {
			q.Oldest = time.Duration(age * float64(time.Second)).Round(time.Millisecond)
		}
		st.Queues = append(st.Queues, q)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return st, err
	}
	rows, _ = db.Query(ctx, `
		SELECT idc, sum(manifests_deleted)::bigint, sum(blobs_deleted)::bigint, sum(bytes_reclaimed)::bigint FROM (
			SELECT idc, manifests_deleted, blobs_deleted, bytes_reclaimed FROM gc_totals
			UNION ALL
			SELECT idc, manifests_deleted, blobs_deleted, bytes_reclaimed FROM gc_totals_deltas) t
		GROUP BY idc ORDER BY idc`)
	tot, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Totals, error) {
		var t Totals
		err := r.Scan(&t.IDC, &t.ManifestsDeleted, &t.BlobsDeleted, &t.BytesReclaimed)
		return t, err
	})
	st.Totals = tot
	return st, err
}

// DryRun decides about every due entry (up to limit of each kind) without
// deleting anything or claiming entries, and returns the decisions. What a
// deletion would release (the blobs of a manifest it deletes) is not
// followed: those come due in the run after.
func (c *Collector) DryRun(ctx context.Context, limit int) ([]Decision, error) {
	var out []Decision
	rows, _ := c.o.DB.Query(ctx, `SELECT manifest_id, queued_at FROM gc_manifest_reviews
		WHERE queued_at <= now() - make_interval(secs => $1) ORDER BY queued_at LIMIT $2`, secs(c.o.ReviewAfter), limit)
	type mEntry struct {
		id int64
		at time.Time
	}
	ms, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (mEntry, error) {
		var e mEntry
		return e, r.Scan(&e.id, &e.at)
	})
	if err != nil {
		return nil, err
	}
	for _, e := range ms {
		d, err := c.reviewManifest(ctx, e.id, e.at, true)
		if err != nil {
			return out, err
		}
		if d.Digest != "" {
			out = append(out, d)
		}
	}
	rows, _ = c.o.DB.Query(ctx, `SELECT digest, queued_at FROM gc_blob_reviews
		WHERE queued_at <= now() - make_interval(secs => $1) ORDER BY queued_at LIMIT $2`, secs(c.o.ReviewAfter), limit)
	type bEntry struct {
		d  string
		at time.Time
	}
	bs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (bEntry, error) {
		var e bEntry
		return e, r.Scan(&e.d, &e.at)
	})
	if err != nil {
		return nil, err
	}
	for _, e := range bs {
		d, err := c.reviewBlob(ctx, e.d, e.at, true)
		if err != nil {
			return out, err
		}
		if d.Size > 0 || d.Delete || d.Reason != "already deleted" {
			out = append(out, d)
		}
	}
	return out, nil
}

// Metrics are the collector's Prometheus metrics.
type Metrics struct {
	reviews   *prometheus.CounterVec
	deletions *prometheus.CounterVec
	bytes     *prometheus.CounterVec
	errors    *prometheus.CounterVec
	depth     *prometheus.GaugeVec
	lag       *prometheus.GaugeVec
	swept     *prometheus.CounterVec
}

// NewMetrics registers the collector's metrics in reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gaia_gc_reviews_total",
			Help: "Garbage collection reviews, by kind (manifest, blob) and outcome (delete, keep)."}, []string{"kind", "outcome"}),
		deletions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gaia_gc_deletions_total",
			Help: "Objects deleted by garbage collection: manifests, blobs (rows), objects (bytes in this IDC's storage)."}, []string{"kind"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gaia_gc_bytes_reclaimed_total",
			Help: "Bytes removed from storage by garbage collection, by IDC."}, []string{"idc"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gaia_gc_errors_total",
			Help: "Garbage collection errors, by stage (claim, manifest, blob, bytes, walk)."}, []string{"stage"}),
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gaia_gc_queue_depth",
			Help: "Entries in a garbage collection queue (manifests, blobs, bytes:<idc>), as last seen by this server."}, []string{"queue"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gaia_gc_queue_lag_seconds",
			Help: "How long the oldest due entry of a queue has been due, as last seen by this server."}, []string{"queue"}),
		swept: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gaia_gc_storage_swept_total",
			Help: "Objects the storage walk removed (blob objects no placement records; HDFS staging files)."}, []string{"kind"}),
	}
	reg.MustRegister(m.reviews, m.deletions, m.bytes, m.errors, m.depth, m.lag, m.swept)
	return m
}

func (m *Metrics) reviewed(kind string, deleted bool) {
	if m == nil {
		return
	}
	outcome := "keep"
	if deleted {
		outcome = "delete"
		m.deletions.WithLabelValues(kind).Inc()
	}
	m.reviews.WithLabelValues(kind, outcome).Inc()
}

func (m *Metrics) reclaimed(idc string, n int64) {
	if m == nil {
		return
	}
	m.deletions.WithLabelValues("object").Inc()
	m.bytes.WithLabelValues(idc).Add(float64(n))
}

func (m *Metrics) error(stage string) {
	if m != nil {
		m.errors.WithLabelValues(stage).Inc()
	}
}

func (m *Metrics) sweptN(kind string, n int) {
	if m != nil && n > 0 {
		m.swept.WithLabelValues(kind).Add(float64(n))
	}
}

func (c *Collector) observeQueues(ctx context.Context) {
	if c.o.Metrics == nil {
		return
	}
	st, err := ReadStatus(ctx, c.o.DB, c.o.ReviewAfter)
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			c.o.Metrics.error("status")
		}
		return
	}
	c.o.Metrics.depth.Reset()
	c.o.Metrics.lag.Reset()
	for _, q := range st.Queues {
		c.o.Metrics.depth.WithLabelValues(q.Name).Set(float64(q.Depth))
		c.o.Metrics.lag.WithLabelValues(q.Name).Set(q.Oldest.Seconds())
	}
}
