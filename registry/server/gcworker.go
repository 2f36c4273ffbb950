package server

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gaia-registry/gaia/registry/gc"
	hdfsdriver "github.com/gaia-registry/gaia/storage-hdfs"
)

// GCWorker is a garbage collector outside a server (`gaia-registry gc`):
// the same collector, over the configuration's database and its IDC's
// storage.
type GCWorker struct {
	*gc.Collector
	DB      *pgxpool.Pool
	Walk    gc.WalkOptions
	Cfg     *Config
	Metrics *prometheus.Registry
	close   func()
}

// collectorOptions: the collector a server runs and the one a worker
// runs, from the same configuration.
func collectorOptions(cfg *Config, db *pgxpool.Pool, drv storagedriver.StorageDriver, log *slog.Logger, reg prometheus.Registerer) gc.Options {
	return gc.Options{
		DB: db, IDC: cfg.Cluster.IDC, Driver: drv, ReviewAfter: cfg.GC.ReviewDelay(),
		KeepUntagged: cfg.GC.Manifests.Untagged == "keep", Batch: cfg.GC.Batch, Workers: cfg.GC.Workers,
		Rate: cfg.GC.Rate, Nice: cfg.GC.Niceness(), Log: log, Metrics: gc.NewMetrics(reg),
	}
}

// Close releases the worker's database pool.
func (w *GCWorker) Close() { w.close() }

// NewGCWorker connects to the configuration's database and storage.
func NewGCWorker(ctx context.Context, cfg *Config, log *slog.Logger) (*GCWorker, error) {
	sc, err := cfg.StorageConfig()
	if err != nil {
		return nil, err
	}
	pc, err := pgxpool.ParseConfig(cfg.Database.URL)
	if err != nil {
		return nil, fmt.Errorf("database.url: %w", err)
	}
	pc.ConnConfig.RuntimeParams["jit"] = "off"
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("database.url: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("database.url: %w", err)
	}
	drv, err := factory.Create(ctx, sc.Driver, sc.Parameters)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("storage.%s: %w", sc.Driver, err)
	}
	reg := prometheus.NewRegistry()
	w := &GCWorker{
		DB: pool, Cfg: cfg, Metrics: reg, close: pool.Close,
		Collector: gc.New(collectorOptions(cfg, pool, drv, log, reg)),
		Walk:      gc.WalkOptions{Every: cfg.GC.Walk.Every, Grace: cfg.GC.Walk.Grace, Rate: cfg.GC.Walk.Rate},
	}
	if hd, ok := drv.(*hdfsdriver.Driver); ok {
		w.Walk.Staging = hd
	}
	return w, nil
}

// IdleInterval is gc.interval with its default.
func (c GCConfig) IdleInterval() time.Duration {
	if c.Interval > 0 {
		return c.Interval
	}
	return time.Minute
}
