package nodeagent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the agent's Prometheus metrics (gaia_nodeagent_*).
type Metrics struct {
	pulls       *prometheus.CounterVec
	pullSeconds prometheus.Histogram
	pullBytes   prometheus.Counter
	startSecs   *prometheus.HistogramVec
	reconciles  prometheus.Counter
	containerOp *prometheus.CounterVec
	instances   *prometheus.GaugeVec
	reports     *prometheus.CounterVec
	polls       *prometheus.CounterVec
}

// NewMetrics registers the agent's metrics with reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gaia_nodeagent_pulls_total",
			Help: "Image pull attempts, by result (ok; error: the registry refused; unreachable: no answer, retried until it is back)."}, []string{"result"}),
		pullSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gaia_nodeagent_pull_seconds",
			Help: "Duration of successful image pull attempts.", Buckets: prometheus.ExponentialBuckets(0.1, 2, 12)}),
		pullBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "gaia_nodeagent_pull_bytes_total",
			Help: "Bytes of layers downloaded by successful pulls."}),
		startSecs: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "gaia_nodeagent_start_seconds",
			Help: "From the desired set that assigned an instance reaching the agent to the instance healthy and registered in Consul, " +
				"by image (present: already on the node; pulled: the start waited for a pull).",
			Buckets: []float64{.1, .25, .5, 1, 2, 5, 10, 30, 60, 120, 300, 600}}, []string{"image"}),
		reconciles: prometheus.NewCounter(prometheus.CounterOpts{Name: "gaia_nodeagent_reconciles_total",
			Help: "Reconciliations of the desired set against dockerd's containers."}),
		containerOp: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gaia_nodeagent_container_operations_total",
			Help: "Container operations, by operation (create, start, stop, remove, adopt, restart)."}, []string{"op"}),
		instances: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gaia_nodeagent_instances",
			Help: "Instances on this node, by state."}, []string{"state"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gaia_nodeagent_reports_total",
			Help: "Reports sent to the scheduler, by result (ok, error)."}, []string{"result"}),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gaia_nodeagent_polls_total",
			Help: "Desired-set polls, by result (changed, unchanged, error)."}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.pulls, m.pullSeconds, m.pullBytes, m.startSecs, m.reconciles, m.containerOp, m.instances, m.reports, m.polls)
	}
	return m
}
