package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/gaia-registry/gaia/registry/api"
	"github.com/gaia-registry/gaia/registry/auth"
	"github.com/gaia-registry/gaia/registry/forwarded"
	hdfsdriver "github.com/gaia-registry/gaia/storage-hdfs"
)

// metrics are one server's Prometheus series, registered on their own
// registry (no globals: two servers in one test process do not collide).
type metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	bytesIn       *prometheus.CounterVec
	bytesOut      *prometheus.CounterVec
	inFlight      *prometheus.GaugeVec
	storage       *prometheus.HistogramVec
	storageErrors *prometheus.CounterVec
	uploadsPurged prometheus.Counter
	fillsSwept    prometheus.Counter
	crossIDCBytes *prometheus.CounterVec
	// internalRefused: requests with an internal token it did not pass
	// (wrong or retired token, or not a blob read): a rotation gone wrong.
	internalRefused prometheus.Counter
	// signedRequests: blob requests carrying a gateway's signature, by
	// outcome (accepted, refused).
	signedRequests *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry, pool *pgxpool.Pool) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_registry_http_requests_total", Help: "API requests by route, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gaia_registry_http_request_duration_seconds", Help: "API request latency by route and method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"route", "method"}),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_registry_http_request_bytes_total", Help: "Request body bytes received, by route.",
		}, []string{"route"}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_registry_http_response_bytes_total", Help: "Response body bytes sent, by route.",
		}, []string{"route"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gaia_registry_http_requests_in_flight", Help: "API requests being served, by route and method.",
		}, []string{"route", "method"}),
		storage: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gaia_registry_storage_action_seconds", Help: "Storage driver call latency by driver and action (streams: until opened).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"driver", "action"}),
		storageErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_registry_storage_action_errors_total", Help: "Storage driver calls that failed (not-found included).",
		}, []string{"driver", "action"}),
		uploadsPurged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gaia_registry_uploads_purged_total", Help: "Abandoned upload sessions expired and removed.",
		}),
		fillsSwept: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gaia_registry_fills_swept_total", Help: "Staging directories of cross-IDC fills interrupted mid-copy (a server killed) removed.",
		}),
		crossIDCBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_registry_cross_idc_bytes_total",
			Help: "Blob bytes moved between IDCs: direction in (copied here) or out (served to a peer IDC), cause fill or replication, peer IDC.",
		}, []string{"direction", "cause", "peer"}),
		signedRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_registry_signed_requests_total",
			Help: "Blob requests with a gateway-signed URL (redirect: blobs), by outcome: accepted, or refused (401).",
		}, []string{"outcome"}),
		internalRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gaia_registry_internal_token_refused_total",
			Help: "Requests carrying an internal token that did not let them past auth (a token not configured here, or not a blob GET/HEAD).",
		}),
	}
	reg.MustRegister(m.signedRequests, m.internalRefused, m.crossIDCBytes, m.requests, m.duration, m.bytesIn, m.bytesOut, m.inFlight, m.storage, m.storageErrors, m.uploadsPurged, m.fillsSwept,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		poolCollector{pool})
	return m
}

// poolCollector reports the PostgreSQL pool's state at scrape time.
type poolCollector struct{ pool *pgxpool.Pool }

var (
	poolConns    = prometheus.NewDesc("gaia_registry_db_pool_connections", "PostgreSQL pool connections by state.", []string{"state"}, nil)
	poolMax      = prometheus.NewDesc("gaia_registry_db_pool_max_connections", "PostgreSQL pool size limit.", nil, nil)
	poolAcquires = prometheus.NewDesc("gaia_registry_db_pool_acquires_total", "Connections acquired from the pool.", nil, nil)
	poolWaits    = prometheus.NewDesc("gaia_registry_db_pool_empty_acquires_total", "Acquires that had to wait for a connection.", nil, nil)
	poolWaitSecs = prometheus.NewDesc("gaia_registry_db_pool_acquire_seconds_total", "Time spent acquiring connections.", nil, nil)
)

func (poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolConns
	ch <- poolMax
	ch <- poolAcquires
	ch <- poolWaits
	ch <- poolWaitSecs
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.AcquiredConns()), "acquired")
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.ConstructingConns()), "constructing")
	ch <- prometheus.MustNewConstMetric(poolMax, prometheus.GaugeValue, float64(s.MaxConns()))
	ch <- prometheus.MustNewConstMetric(poolAcquires, prometheus.CounterValue, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolWaits, prometheus.CounterValue, float64(s.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolWaitSecs, prometheus.CounterValue, s.AcquireDuration().Seconds())
}

// hdfsCollector reports the HDFS driver's client pool at scrape time.
type hdfsCollector struct{ d *hdfsdriver.Driver }

var (
	hdfsClients  = prometheus.NewDesc("gaia_registry_hdfs_clients", "HDFS clients (NameNode connections) by state: in_use (by calls and open streams) or idle.", []string{"state"}, nil)
	hdfsMax      = prometheus.NewDesc("gaia_registry_hdfs_max_clients", "Cap on HDFS clients (storage.hdfs.maxclients).", nil, nil)
	hdfsWaiters  = prometheus.NewDesc("gaia_registry_hdfs_client_waiters", "Driver calls and streams waiting for an HDFS client now (all maxclients in use).", nil, nil)
	hdfsWaits    = prometheus.NewDesc("gaia_registry_hdfs_client_waits_total", "Borrows of an HDFS client that had to wait.", nil, nil)
	hdfsCreated  = prometheus.NewDesc("gaia_registry_hdfs_clients_created_total", "HDFS clients dialled.", nil, nil)
	hdfsReplaced = prometheus.NewDesc("gaia_registry_hdfs_clients_replaced_total", "HDFS clients found broken (NameNode restart, failover, dropped socket) and dialled again.", nil, nil)
)

func (hdfsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{hdfsClients, hdfsMax, hdfsWaiters, hdfsWaits, hdfsCreated, hdfsReplaced} {
		ch <- d
	}
}

func (c hdfsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.d.PoolStats()
	ch <- prometheus.MustNewConstMetric(hdfsClients, prometheus.GaugeValue, float64(s.Open-s.Idle), "in_use")
	ch <- prometheus.MustNewConstMetric(hdfsClients, prometheus.GaugeValue, float64(s.Idle), "idle")
	ch <- prometheus.MustNewConstMetric(hdfsMax, prometheus.GaugeValue, float64(s.Max))
	ch <- prometheus.MustNewConstMetric(hdfsWaiters, prometheus.GaugeValue, float64(s.Waiters))
	ch <- prometheus.MustNewConstMetric(hdfsWaits, prometheus.CounterValue, float64(s.Waited))
	ch <- prometheus.MustNewConstMetric(hdfsCreated, prometheus.CounterValue, float64(s.Created))
	ch <- prometheus.MustNewConstMetric(hdfsReplaced, prometheus.CounterValue, float64(s.Replaced))
}

// recorder captures the status and body size a handler wrote.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// ReadFrom keeps io.Copy's fast paths (sendfile) for blob downloads.
func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := r.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(r.ResponseWriter, src)
	}
	r.bytes += n
	return n, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// countingBody counts request body bytes as the handler reads them.
type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}

// instrument logs one structured line per request and records metrics.
// Health and metrics endpoints are not logged. The line names the client
// (remote): behind a trusted proxy, whom it forwarded for (with the
// proxy's own address as proxy). copied (if not nil) gets every blob GET
// answered 2xx, with the user auth found and the bytes sent.
func instrument(next http.Handler, m *metrics, log *slog.Logger, trusted forwarded.Trusted,
	copied func(r *http.Request, user string, bytes int64)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx, user := auth.TrackUser(r.Context()) // auth sets it on a request of its own, further in
		r = api.WithRoute(r.WithContext(ctx))    // the one parse auth and the handler use too
		route := api.RouteOf(r).Kind
		method := r.Method
		switch method { // a client's made-up method must not mint series
		case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
		default:
			method = "OTHER"
		}
		if route == "" {
			route = "other"
			if strings.HasPrefix(r.URL.Path, AdminPrefix) {
				route = "admin"
			}
		}
		// On every /v2 answer, auth refusals included: clients look for it.
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		rec := &recorder{ResponseWriter: w}
		body := &countingBody{ReadCloser: r.Body}
		r.Body = body
		inFlight := m.inFlight.WithLabelValues(route, method)
		inFlight.Inc()
		defer func() {
			inFlight.Dec()
			if rec.status == 0 {
				rec.status = http.StatusOK
			}
			elapsed := time.Since(start)
			m.requests.WithLabelValues(route, method, strconv.Itoa(rec.status)).Inc()
			m.duration.WithLabelValues(route, method).Observe(elapsed.Seconds())
			m.bytesIn.WithLabelValues(route).Add(float64(body.n))
			m.bytesOut.WithLabelValues(route).Add(float64(rec.bytes))
			if copied != nil && route == "blob" && r.Method == http.MethodGet && rec.status < 300 {
				copied(r, user(), rec.bytes)
			}
			level := slog.LevelInfo
			if rec.status >= 500 {
				level = slog.LevelError
			}
			attrs := []slog.Attr{slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.String("route", route),
				slog.Int("status", rec.status), slog.Int64("bytes_in", body.n), slog.Int64("bytes_out", rec.bytes),
				slog.Duration("duration", elapsed)}
			if client, proxied := trusted.Client(r); proxied {
				attrs = append(attrs, slog.String("remote", client), slog.String("proxy", r.RemoteAddr))
			} else {
				attrs = append(attrs, slog.String("remote", r.RemoteAddr))
			}
			attrs = append(attrs, slog.String("user", user()))
			log.LogAttrs(r.Context(), level, "request", attrs...)
		}()
		next.ServeHTTP(rec, r)
	})
}

// timedDriver times every storage driver call.
type timedDriver struct {
	storagedriver.StorageDriver
	m *metrics
}

func (d timedDriver) observe(action string, start time.Time, err error) {
	name := d.StorageDriver.Name()
	d.m.storage.WithLabelValues(name, action).Observe(time.Since(start).Seconds())
	if err != nil {
		d.m.storageErrors.WithLabelValues(name, action).Inc()
	}
}

func (d timedDriver) GetContent(ctx context.Context, path string) (b []byte, err error) {
	defer func(t time.Time) { d.observe("get_content", t, err) }(time.Now())
	return d.StorageDriver.GetContent(ctx, path)
}

func (d timedDriver) PutContent(ctx context.Context, path string, content []byte) (err error) {
	defer func(t time.Time) { d.observe("put_content", t, err) }(time.Now())
	return d.StorageDriver.PutContent(ctx, path, content)
}

func (d timedDriver) Reader(ctx context.Context, path string, offset int64) (rc io.ReadCloser, err error) {
	defer func(t time.Time) { d.observe("reader", t, err) }(time.Now())
	return d.StorageDriver.Reader(ctx, path, offset)
}

func (d timedDriver) Writer(ctx context.Context, path string, append bool) (fw storagedriver.FileWriter, err error) {
	defer func(t time.Time) { d.observe("writer", t, err) }(time.Now())
	return d.StorageDriver.Writer(ctx, path, append)
}

func (d timedDriver) Stat(ctx context.Context, path string) (fi storagedriver.FileInfo, err error) {
	defer func(t time.Time) { d.observe("stat", t, err) }(time.Now())
	return d.StorageDriver.Stat(ctx, path)
}

func (d timedDriver) List(ctx context.Context, path string) (l []string, err error) {
	defer func(t time.Time) { d.observe("list", t, err) }(time.Now())
	return d.StorageDriver.List(ctx, path)
}

func (d timedDriver) Move(ctx context.Context, src, dst string) (err error) {
	defer func(t time.Time) { d.observe("move", t, err) }(time.Now())
	return d.StorageDriver.Move(ctx, src, dst)
}

func (d timedDriver) Delete(ctx context.Context, path string) (err error) {
	defer func(t time.Time) { d.observe("delete", t, err) }(time.Now())
	return d.StorageDriver.Delete(ctx, path)
}
