package gateway

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	requests        *prometheus.CounterVec
	errors          *prometheus.CounterVec
	ejections       *prometheus.CounterVec
	retries         *prometheus.CounterVec
	failovers       *prometheus.CounterVec
	noUpstream      *prometheus.CounterVec
	bytes           *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	discoveryErrors prometheus.Counter
	replaySkipped   prometheus.Counter

	redirects         *prometheus.CounterVec
	blobBytes         prometheus.Counter
	cacheRequests     *prometheus.CounterVec
	cacheEvictions    *prometheus.CounterVec
	cacheDeletions    prometheus.Counter
	cacheListenErrors prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, g *Gateway) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_gateway_requests_total", Help: "Requests answered by each registry server (code \"cut\": the response broke off).",
		}, []string{"upstream", "idc", "code"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_gateway_upstream_errors_total", Help: "Connection failures and broken responses, per registry server.",
		}, []string{"upstream", "idc"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_gateway_ejections_total", Help: "Times a registry server was ejected after consecutive failures.",
		}, []string{"upstream", "idc"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_gateway_retries_total", Help: "Requests retried on another server, by the gateway's IDC.",
		}, []string{"idc"}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_gateway_failover_requests_total", Help: "Requests sent to another IDC's server (failover: any), by that IDC.",
		}, []string{"idc"}),
		noUpstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_gateway_unavailable_total", Help: "Requests answered 503: no registry server available.",
		}, []string{"idc"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_gateway_bytes_total", Help: "Body bytes through the gateway: in (client to server) and out (server to client).",
		}, []string{"direction", "upstream", "idc"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gaia_gateway_request_duration_seconds", Help: "Request latency through the gateway, by the answering server's IDC.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"idc"}),
		discoveryErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gaia_gateway_discovery_errors_total", Help: "Failed Consul queries.",
		}),
		replaySkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gaia_gateway_replay_skipped_total",
			Help: "Idempotent requests proxied without a replay copy of their body: replay.maxbytes was in use by others.",
		}),
		redirects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_gateway_redirects_total", Help: "Blob GETs answered 307 with a signed URL on a registry server (redirect: blobs), by that server's IDC.",
		}, []string{"idc"}),
		blobBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gaia_gateway_blob_bytes_total", Help: "Blob bytes (GET responses of blobs) that passed through the gateway: with redirect: blobs, only Range and signed-URL requests sent to it.",
		}),
		cacheRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_gateway_cache_requests_total", Help: "Cacheable requests (manifests and blob HEADs by digest), by kind and result: hit or miss.",
		}, []string{"kind", "result"}),
		cacheEvictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_gateway_cache_evictions_total", Help: "Cache entries removed, by reason: size (cache.maxbytes), deleted (the registry deleted it), reset (the deletion listener reconnected).",
		}, []string{"reason"}),
		cacheDeletions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gaia_gateway_cache_deletion_notices_total", Help: "Deletion notices heard from PostgreSQL.",
		}),
		cacheListenErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gaia_gateway_cache_listen_errors_total", Help: "Times the PostgreSQL connection the cache listens on failed or broke (the cache is off until it is back).",
		}),
	}
	replayBytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gaia_gateway_replay_bytes", Help: "Request body bytes held in memory now for replay on another server.",
	}, func() float64 { return float64(g.replayHeld.Load()) })
	cacheStat := func(i int) func() float64 {
		return func() float64 {
			if g.cache == nil {
				return 0
			}
			b, n, live := g.cache.stats()
			return [...]float64{float64(b), float64(n), map[bool]float64{true: 1}[live]}[i]
		}
	}
	reg.MustRegister(m.redirects, m.blobBytes, m.cacheRequests, m.cacheEvictions, m.cacheDeletions, m.cacheListenErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gaia_gateway_cache_bytes", Help: "Bytes the cache holds (cache.maxbytes bounds it)."}, cacheStat(0)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gaia_gateway_cache_entries", Help: "Entries the cache holds."}, cacheStat(1)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gaia_gateway_cache_live", Help: "1 while the cache is in use (listening for deletions), else 0."}, cacheStat(2)))
	reg.MustRegister(m.requests, m.errors, m.ejections, m.retries, m.failovers, m.noUpstream, m.bytes, m.duration,
		m.discoveryErrors, m.replaySkipped, replayBytes, upstreamCollector{g}, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// upstreamCollector reports the servers known at scrape time, per IDC and
// state.
type upstreamCollector struct{ g *Gateway }

var upstreamsDesc = prometheus.NewDesc("gaia_gateway_upstreams", "Healthy registry servers known from Consul, by IDC and state (live or ejected).", []string{"idc", "state"}, nil)
var inflightDesc = prometheus.NewDesc("gaia_gateway_upstream_in_flight", "Requests in flight per registry server.", []string{"upstream", "idc"}, nil)

func (upstreamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- upstreamsDesc
	ch <- inflightDesc
}

func (c upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	counts := map[[2]string]int{}
	for _, u := range c.g.Upstreams() {
		state := "live"
		if u.ejected(now) {
			state = "ejected"
		}
		counts[[2]string{u.IDC, state}]++
		ch <- prometheus.MustNewConstMetric(inflightDesc, prometheus.GaugeValue, float64(u.inflight.Load()), u.ID, u.IDC)
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(upstreamsDesc, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
}

// Series per registry server (requests, bytes, errors, ejections) go when
// the server leaves (SetUpstreams): servers come and go with every deploy
// and restart, and their series would otherwise pile up for good. They are
// added to only through these, which skip a server that has left, so a
// request still finishing on it cannot bring its series back.

// current reports whether u's series still exist: it is one of the
// servers, or left less than metricsGrace ago. The caller holds g.mu (read).
func (g *Gateway) current(u *Upstream) bool {
	if cur, ok := g.upstreams[u.ID]; ok && cur.IDC == u.IDC {
		return true
	}
	d, ok := g.departed[u.ID]
	return ok && d.u == u
}

func (g *Gateway) countRequest(u *Upstream, code string) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.current(u) {
		g.m.requests.WithLabelValues(u.ID, u.IDC, code).Inc()
	}
}

func (g *Gateway) countBytes(u *Upstream, direction string, n int64) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.current(u) {
		g.m.bytes.WithLabelValues(direction, u.ID, u.IDC).Add(float64(n))
	}
}

func (g *Gateway) countError(u *Upstream, ejected bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.current(u) {
		g.m.errors.WithLabelValues(u.ID, u.IDC).Inc()
		if ejected {
			g.m.ejections.WithLabelValues(u.ID, u.IDC).Inc()
		}
	}
}

// forget deletes the series of a server that left; the caller holds g.mu.
func (m *metrics) forget(u *Upstream) {
	l := prometheus.Labels{"upstream": u.ID, "idc": u.IDC}
	for _, v := range []*prometheus.MetricVec{m.requests.MetricVec, m.errors.MetricVec, m.ejections.MetricVec, m.bytes.MetricVec} {
		v.DeletePartialMatch(l)
	}
}
