package server

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are one scheduler's Prometheus series, on a registry of its own.
type metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	isLeader      prometheus.Gauge
	term          prometheus.Gauge
	deposed       prometheus.Counter
	placements    prometheus.Counter
	stops         *prometheus.CounterVec
	unplaceable   prometheus.Gauge
	held          prometheus.Gauge
	failures      prometheus.Counter
	loop          prometheus.Histogram
	writes        *prometheus.CounterVec
	nodes         *prometheus.GaugeVec
	nodesDown     prometheus.Counter
	autoRollbacks prometheus.Counter
	polls         *prometheus.CounterVec
	reports       prometheus.Counter
	poolsFile     *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_scheduler_http_requests_total", Help: "API requests by route and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gaia_scheduler_http_request_duration_seconds", Help: "API request latency by route (desired-set polls include their wait).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"method", "route"}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "gaia_scheduler_is_leader", Help: "1 while this scheduler leads."}),
		term:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "gaia_scheduler_term", Help: "The term this scheduler leads in (0: not leading)."}),
		deposed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gaia_scheduler_deposed_writes_total", Help: "Writes refused because a newer leader's term is in PostgreSQL (this scheduler then stepped down).",
		}),
		placements: prometheus.NewCounter(prometheus.CounterOpts{Name: "gaia_scheduler_placements_total", Help: "Instances placed on nodes (committed)."}),
		stops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_scheduler_stops_total", Help: "Instances told to stop, by reason.",
		}, []string{"reason"}),
		unplaceable: prometheus.NewGauge(prometheus.GaugeOpts{Name: "gaia_scheduler_unplaceable_apps", Help: "Apps with instances no node has room for, at the last plan."}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gaia_scheduler_held_apps", Help: "Apps whose replacements are held back after instances failed (the back-off), at the last plan.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gaia_scheduler_instance_failures_total", Help: "Instances reported failed by their node while desired run (each starts or lengthens its app's back-off).",
		}),
		loop: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "gaia_scheduler_loop_seconds", Help: "One pass of the leader's loop: reports, liveness, plan and its write.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_scheduler_db_writes_total", Help: "Fenced write transactions by kind and result.",
		}, []string{"kind", "result"}),
		nodes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gaia_scheduler_nodes", Help: "Nodes by state (leader only)."}, []string{"state"}),
		poolsFile: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_scheduler_pools_file_loads_total", Help: "Loads of the allocation file (pools.file) by result: ok, or error (the last good set stays).",
		}, []string{"result"}),
		nodesDown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gaia_scheduler_nodes_down_total", Help: "Nodes marked down for missing heartbeats.",
		}),
		autoRollbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gaia_scheduler_auto_rollbacks_total", Help: "New app versions rolled back automatically (update.autoRollback).",
		}),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_scheduler_node_polls_total", Help: "Desired-set polls by result: changed (a body) or idle (304).",
		}, []string{"result"}),
		reports: prometheus.NewCounter(prometheus.CounterOpts{Name: "gaia_scheduler_node_reports_total", Help: "Node reports received."}),
	}
	reg.MustRegister(m.requests, m.duration, m.isLeader, m.term, m.deposed, m.placements, m.stops, m.unplaceable, m.held, m.failures,
		m.loop, m.writes, m.nodes, m.nodesDown, m.autoRollbacks, m.polls, m.reports, m.poolsFile,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// instrument counts and times requests by the route pattern they matched.
func instrument(h http.Handler, m *metrics) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		// the pattern that matched, without its method ("GET /v1/apps")
		route := r.Pattern
		if _, path, ok := strings.Cut(route, " "); ok {
			route = path
		}
		if route == "" {
			route = "other"
		}
		method := r.Method
		switch method {
		case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete:
		default:
			method = "other"
		}
		m.requests.WithLabelValues(method, route, strconv.Itoa(rec.code)).Inc()
		m.duration.WithLabelValues(method, route).Observe(time.Since(start).Seconds())
	})
}
