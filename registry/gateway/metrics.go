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
	}
	reg.MustRegister(m.requests, m.errors, m.ejections, m.retries, m.failovers, m.noUpstream, m.bytes, m.duration,
		m.discoveryErrors, upstreamCollector{g}, collectors.NewGoCollector(),
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
