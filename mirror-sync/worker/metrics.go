package worker

import (
	"net/url"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gaia-registry/gaia/mirror-sync/upstream"
)

// Metrics are the worker's Prometheus series.
type Metrics struct {
	runs      *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	blobs     *prometheus.CounterVec
	bytes     *prometheus.CounterVec
	manifests *prometheus.CounterVec
	retries   *prometheus.CounterVec

	mu      sync.Mutex
	clients []*upstream.Client
}

// NewMetrics registers the worker's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_mirror_runs_total", Help: "Mirror runs finished by this worker, by rule and result.",
		}, []string{"rule", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gaia_mirror_run_duration_seconds", Help: "Duration of the mirror runs this worker finished.",
			Buckets: prometheus.ExponentialBuckets(0.1, 4, 10),
		}, []string{"rule"}),
		blobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_mirror_blobs_total", Help: "Blobs brought into Gaia: copied from the upstream or mounted from another repository.",
		}, []string{"rule", "how"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_mirror_bytes_total", Help: "Blob bytes copied from upstreams into Gaia.",
		}, []string{"rule"}),
		manifests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_mirror_manifests_total", Help: "Image manifests stored in Gaia.",
		}, []string{"rule"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_mirror_blob_retries_total", Help: "Blob copies retried after a failed or torn transfer.",
		}, []string{"rule"}),
	}
	reg.MustRegister(m.runs, m.duration, m.blobs, m.bytes, m.manifests, m.retries, upstreamCollector{m})
	return m
}

func (m *Metrics) finished(rule string, failed bool, d time.Duration) {
	result := "succeeded"
	if failed {
		result = "failed"
	}
	m.runs.WithLabelValues(rule, result).Inc()
	m.duration.WithLabelValues(rule).Observe(d.Seconds())
}

func (m *Metrics) blob(rule, how string, size int64) {
	if m == nil {
		return
	}
	m.blobs.WithLabelValues(rule, how).Inc()
	if size > 0 {
		m.bytes.WithLabelValues(rule).Add(float64(size))
	}
}

func (m *Metrics) watch(c *upstream.Client) {
	m.mu.Lock()
	m.clients = append(m.clients, c)
	m.mu.Unlock()
}

var (
	upstreamRequests = prometheus.NewDesc("gaia_mirror_upstream_requests_total",
		"Requests sent to an upstream registry (token requests and retries included).", []string{"upstream"}, nil)
	upstreamThrottled = prometheus.NewDesc("gaia_mirror_upstream_throttled_total",
		"429 and 503 answers from an upstream (retried after their Retry-After while retries last).", []string{"upstream"}, nil)
)

// upstreamCollector reports each upstream client's request counters.
type upstreamCollector struct{ m *Metrics }

func (c upstreamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- upstreamRequests
	ch <- upstreamThrottled
}

func (c upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	clients := append([]*upstream.Client(nil), c.m.clients...)
	c.m.mu.Unlock()
	req, thr := map[string]float64{}, map[string]float64{}
	for _, cl := range clients {
		host := cl.URL()
		if u, err := url.Parse(host); err == nil {
			host = u.Host
		}
		req[host] += float64(cl.Requests.Load())
		thr[host] += float64(cl.Throttled.Load())
	}
	for h, v := range req {
		ch <- prometheus.MustNewConstMetric(upstreamRequests, prometheus.CounterValue, v, h)
		ch <- prometheus.MustNewConstMetric(upstreamThrottled, prometheus.CounterValue, thr[h], h)
	}
}
