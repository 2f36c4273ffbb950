package audit

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Options tune a Writer; zero values take the defaults.
type Options struct {
	Buffer     int           // events queued at most (default 10000); more are dropped
	FlushEvery time.Duration // a partial batch waits this long at most (default 1s)
	BatchMax   int           // events per COPY at most (default 1000)
	Retention  time.Duration // partitions wholly older than this are dropped (default 720h)
	// MaintainEvery: partitions are created ahead and dropped this often
	// (default 1h; and once when Run starts).
	MaintainEvery time.Duration
	// Retries of a failed batch before it is dropped (default 3), the
	// first after RetryBackoff (default 200ms), doubling.
	Retries      int
	RetryBackoff time.Duration
	// ShutdownTimeout bounds the final flush when Run's context ends
	// (default 5s).
	ShutdownTimeout time.Duration
	Log             *slog.Logger     // default slog.Default()
	Now             func() time.Time // default time.Now (tests move time)
}

// Writer queues events and writes them in batches (Run).
type Writer struct {
	db      *pgxpool.Pool
	o       Options
	ch      chan Event
	dropped *prometheus.CounterVec
	written prometheus.Counter
	flush   prometheus.Histogram
}

// NewWriter returns a Writer on db; its metrics go to reg (nil: none).
func NewWriter(db *pgxpool.Pool, o Options, reg prometheus.Registerer) *Writer {
	if o.Buffer <= 0 {
		o.Buffer = 10000
	}
	if o.FlushEvery <= 0 {
		o.FlushEvery = time.Second
	}
	if o.BatchMax <= 0 {
		o.BatchMax = 1000
	}
	if o.Retention <= 0 {
		o.Retention = 720 * time.Hour
	}
	if o.MaintainEvery <= 0 {
		o.MaintainEvery = time.Hour
	}
	if o.Retries <= 0 {
		o.Retries = 3
	}
	if o.RetryBackoff <= 0 {
		o.RetryBackoff = 200 * time.Millisecond
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 5 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	w := &Writer{db: db, o: o, ch: make(chan Event, o.Buffer),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gaia_audit_events_dropped_total",
			Help: "Audit events lost: reason buffer_full (the queue was full: the database is slow or down) or write_failed (a batch failed every retry)."},
			[]string{"reason"}),
		written: prometheus.NewCounter(prometheus.CounterOpts{Name: "gaia_audit_events_written_total",
			Help: "Audit events stored in PostgreSQL."}),
		flush: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gaia_audit_flush_seconds",
			Help: "Time to write one batch of audit events (retries included).", Buckets: prometheus.DefBuckets}),
	}
	w.dropped.WithLabelValues("buffer_full")
	w.dropped.WithLabelValues("write_failed")
	if reg != nil {
		reg.MustRegister(w.dropped, w.written, w.flush, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gaia_audit_events_queued", Help: "Audit events waiting to be written.",
		}, func() float64 { return float64(len(w.ch)) }))
	}
	return w
}

// Record queues ev without ever blocking: when the queue is full, ev is
// dropped and counted (gaia_audit_events_dropped_total{reason="buffer_full"}).
func (w *Writer) Record(ev Event) {
	if ev.At.IsZero() {
		ev.At = w.o.Now()
	}
	if ev.ActorKind == "" {
		ev.ActorKind = ActorKind(ev.Actor)
	}
	select {
	case w.ch <- ev:
	default:
		w.dropped.WithLabelValues("buffer_full").Inc()
	}
}

// Run writes queued events until ctx ends, then writes what is still
// queued and returns, within Options.ShutdownTimeout of ctx's end (a
// write under way when ctx ends gets that time too). It keeps the
// partitions: created ahead (today and the next two days, UTC) and
// dropped after Options.Retention.
func (w *Writer) Run(ctx context.Context) {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(w.o.ShutdownTimeout, cancel) })
	defer stop()
	if err := w.Maintain(ctx); err != nil && ctx.Err() == nil {
		w.o.Log.Warn("audit: maintaining partitions", "err", err)
	}
	flushT := time.NewTicker(w.o.FlushEvery)
	defer flushT.Stop()
	maintT := time.NewTicker(w.o.MaintainEvery)
	defer maintT.Stop()
	batch := make([]Event, 0, w.o.BatchMax)
	for {
		select {
		case ev := <-w.ch:
			batch = append(batch, ev)
			if len(batch) >= w.o.BatchMax {
				batch = w.write(wctx, batch)
			}
		case <-flushT.C:
			batch = w.write(wctx, batch)
		case <-maintT.C:
			if err := w.Maintain(ctx); err != nil && ctx.Err() == nil {
				w.o.Log.Warn("audit: maintaining partitions", "err", err)
			}
		case <-ctx.Done():
			for { // drain: everything queued, while time is left
				for len(batch) < w.o.BatchMax {
					select {
					case ev := <-w.ch:
						batch = append(batch, ev)
						continue
					default:
					}
					break
				}
				if len(batch) == 0 {
					return
				}
				if batch = w.write(wctx, batch); wctx.Err() != nil {
					w.dropped.WithLabelValues("write_failed").Add(float64(len(w.ch)))
					return
				}
			}
		}
	}
}

// write copies batch into the database, retrying with backoff, and
// returns it emptied for reuse. A batch that fails every retry (or is
// still failing when ctx ends) is dropped and counted: memory stays
// bounded however long the database is away.
func (w *Writer) write(ctx context.Context, batch []Event) []Event {
	if len(batch) == 0 {
		return batch
	}
	start := time.Now()
	defer func() { w.flush.Observe(time.Since(start).Seconds()) }()
	backoff := w.o.RetryBackoff
	var err error
	for attempt := 0; ; attempt++ {
		if err = w.copy(ctx, batch); err == nil {
			w.written.Add(float64(len(batch)))
			return batch[:0]
		}
		if attempt >= w.o.Retries || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff *= 2
	}
	w.o.Log.Error("audit: dropping a batch of events that could not be written", "events", len(batch), "err", err)
	w.dropped.WithLabelValues("write_failed").Add(float64(len(batch)))
	return batch[:0]
}

var columns = []string{"at", "actor", "actor_kind", "action", "namespace", "repository", "reference", "remote", "detail"}

func (w *Writer) copy(ctx context.Context, batch []Event) error {
	_, err := w.db.CopyFrom(ctx, pgx.Identifier{"audit_events"}, columns, pgx.CopyFromSlice(len(batch), func(i int) ([]any, error) {
		e := &batch[i]
		var detail any
		if len(e.Detail) > 0 {
			detail = e.Detail
		}
		return []any{e.At, e.Actor, e.ActorKind, e.Action, e.Namespace, e.Repository, e.Reference, e.Remote, detail}, nil
	}))
	return err
}

// partitionLock serialises partition maintenance across servers.
const partitionLock = 0x67616961_61756469 // "gaiaaudi"

const partitionPrefix = "audit_events_p"

const day = 24 * time.Hour

func partitionName(d time.Time) string { return partitionPrefix + d.Format("20060102") }

// Maintain creates the partitions of today and the next two days (UTC)
// that are missing, moving into each any events the DEFAULT partition
// took for its day, and drops the partitions (and DEFAULT rows) wholly
// older than the retention. Several servers may run it at once: an
// advisory lock makes them take turns, and each step is idempotent.
func (w *Writer) Maintain(ctx context.Context) error {
	now := w.o.Now().UTC()
	today := now.Truncate(day)
	cutoff := now.Add(-w.o.Retention)
	tx, err := w.db.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// Attaching and dropping partitions needs strong locks on the table:
	// rather than queue the writers behind a long reader, give up and try
	// at the next round.
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '5s'`); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(partitionLock)); err != nil {
		return err
	}
	existing := map[string]bool{}
	rows, err := tx.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'audit_events'::regclass`)
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, n := range names {
		existing[n] = true
	}
	for i := 0; i < 3; i++ {
		lo := today.Add(time.Duration(i) * day)
		name := partitionName(lo)
		if existing[name] {
			continue
		}
		// Built detached, filled with what DEFAULT holds for its day, then
		// attached: attaching over rows DEFAULT still held would fail.
		id := pgx.Identifier{name}.Sanitize()
		if _, err := tx.Exec(ctx, `CREATE TABLE `+id+` (LIKE audit_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`); err != nil {
			return fmt.Errorf("creating partition %s: %w", name, err)
		}
		if _, err := tx.Exec(ctx, `WITH moved AS (DELETE FROM audit_events_default WHERE at >= $1 AND at < $2 RETURNING *)
			INSERT INTO `+id+` SELECT * FROM moved`, lo, lo.Add(day)); err != nil {
			return fmt.Errorf("moving DEFAULT's rows into %s: %w", name, err)
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf(`ALTER TABLE audit_events ATTACH PARTITION %s FOR VALUES FROM ('%s') TO ('%s')`,
			id, lo.Format(time.RFC3339), lo.Add(day).Format(time.RFC3339))); err != nil {
			return fmt.Errorf("attaching partition %s: %w", name, err)
		}
	}
	for _, n := range names {
		d, ok := strings.CutPrefix(n, partitionPrefix)
		if !ok {
			continue
		}
		lo, err := time.Parse("20060102", d)
		if err != nil || lo.Add(day).After(cutoff) {
			continue
		}
		if _, err := tx.Exec(ctx, `DROP TABLE `+pgx.Identifier{n}.Sanitize()); err != nil {
			return fmt.Errorf("dropping partition %s: %w", n, err)
		}
	}
	if _, err := tx.Exec(ctx, `DELETE FROM audit_events_default WHERE at < $1`, cutoff); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
