package enforce

import "github.com/prometheus/client_golang/prometheus"

// Collector exports every instance's usage (Enforcer.Usage) as Prometheus
// metrics, read at scrape time:
//
//	gaia_nodeagent_instance_memory_bytes{instance}
//	gaia_nodeagent_instance_memory_request_bytes{instance}
//	gaia_nodeagent_instance_cpu_seconds_total{instance}
//	gaia_nodeagent_instance_disk_used_bytes{instance}, ..._disk_size_bytes
//	gaia_nodeagent_instance_io_bytes_total{instance,op="read|write"}
//	gaia_nodeagent_instance_net_bytes_total{instance,direction="in|out"}
//	gaia_nodeagent_instance_net_drops_total{instance,direction}
//	gaia_nodeagent_instance_net_overlimits_total{instance,direction}
//	gaia_nodeagent_instance_tcp_retransmits_total{instance}
func Collector(e Enforcer) prometheus.Collector { return &collector{e: e} }

type collector struct{ e Enforcer }

var (
	mdMem     = prometheus.NewDesc("gaia_nodeagent_instance_memory_bytes", "Memory the instance's cgroup uses.", []string{"instance"}, nil)
	mdMemReq  = prometheus.NewDesc("gaia_nodeagent_instance_memory_request_bytes", "The instance's memory request (its soft limit).", []string{"instance"}, nil)
	mdCPU     = prometheus.NewDesc("gaia_nodeagent_instance_cpu_seconds_total", "CPU time the instance used.", []string{"instance"}, nil)
	mdDisk    = prometheus.NewDesc("gaia_nodeagent_instance_disk_used_bytes", "Bytes used on the instance's volume.", []string{"instance"}, nil)
	mdDiskSz  = prometheus.NewDesc("gaia_nodeagent_instance_disk_size_bytes", "Size of the instance's volume.", []string{"instance"}, nil)
	mdIO      = prometheus.NewDesc("gaia_nodeagent_instance_io_bytes_total", "Block IO bytes of the instance.", []string{"instance", "op"}, nil)
	mdNet     = prometheus.NewDesc("gaia_nodeagent_instance_net_bytes_total", "Bytes through the instance's HTB class.", []string{"instance", "direction"}, nil)
	mdDrops   = prometheus.NewDesc("gaia_nodeagent_instance_net_drops_total", "Packets its HTB class dropped.", []string{"instance", "direction"}, nil)
	mdRetrans = prometheus.NewDesc("gaia_nodeagent_instance_tcp_retransmits_total", "TCP segments the instance retransmitted.", []string{"instance"}, nil)
	mdOverlim = prometheus.NewDesc("gaia_nodeagent_instance_net_overlimits_total", "Times its HTB class was over its rate.", []string{"instance", "direction"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mdMem, mdMemReq, mdCPU, mdDisk, mdDiskSz, mdIO, mdNet, mdDrops, mdOverlim, mdRetrans} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	g, ct := prometheus.GaugeValue, prometheus.CounterValue
	for id, u := range c.e.Usage() {
		ch <- prometheus.MustNewConstMetric(mdMem, g, float64(u.MemoryBytes), id)
		ch <- prometheus.MustNewConstMetric(mdMemReq, g, float64(u.MemoryRequest), id)
		ch <- prometheus.MustNewConstMetric(mdCPU, ct, float64(u.CPUNanos)/1e9, id)
		ch <- prometheus.MustNewConstMetric(mdDisk, g, float64(u.DiskUsedBytes), id)
		ch <- prometheus.MustNewConstMetric(mdDiskSz, g, float64(u.DiskSizeBytes), id)
		ch <- prometheus.MustNewConstMetric(mdIO, ct, float64(u.IOReadBytes), id, "read")
		ch <- prometheus.MustNewConstMetric(mdIO, ct, float64(u.IOWriteBytes), id, "write")
		ch <- prometheus.MustNewConstMetric(mdNet, ct, float64(u.NetOutBytes), id, "out")
		ch <- prometheus.MustNewConstMetric(mdNet, ct, float64(u.NetInBytes), id, "in")
		ch <- prometheus.MustNewConstMetric(mdDrops, ct, float64(u.NetOutDrops), id, "out")
		ch <- prometheus.MustNewConstMetric(mdDrops, ct, float64(u.NetInDrops), id, "in")
		ch <- prometheus.MustNewConstMetric(mdOverlim, ct, float64(u.NetOutOverlim), id, "out")
		ch <- prometheus.MustNewConstMetric(mdOverlim, ct, float64(u.NetInOverlimit), id, "in")
		ch <- prometheus.MustNewConstMetric(mdRetrans, ct, float64(u.TCPRetransmits), id)
	}
}
