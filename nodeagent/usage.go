package nodeagent

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/gaia-registry/gaia/scheduler/resource"
)

// usageSample is a container's cumulative counters at one time.
type usageSample struct {
	at               time.Time
	cpuNs            uint64
	rx, tx, blkBytes uint64
}

// sampleUsage reads the container's counters (dockerd's one-shot stats)
// and sets the instance's usage: memory in use (less the page cache), and
// CPU, disk IO and network rates since the previous sample.
func (in *instance) sampleUsage(ctx context.Context, id string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err := in.a.o.Docker.ContainerStatsOneShot(ctx, id)
	if err != nil {
		return
	}
	defer r.Body.Close()
	var st container.StatsResponse
	if err := json.NewDecoder(r.Body).Decode(&st); err != nil {
		return
	}
	s := usageSample{at: st.Read, cpuNs: st.CPUStats.CPUUsage.TotalUsage}
	if s.at.IsZero() {
		s.at = time.Now()
	}
	for _, n := range st.Networks {
		s.rx += n.RxBytes
		s.tx += n.TxBytes
	}
	for _, e := range st.BlkioStats.IoServiceBytesRecursive {
		if strings.EqualFold(e.Op, "total") {
			s.blkBytes += e.Value
		}
	}
	var u resource.Vector
	mem := st.MemoryStats.Usage
	if c := st.MemoryStats.Stats["cache"]; c <= mem { // cgroup v1
		mem -= c
	}
	u[resource.Memory] = int64(mem)
	net := in.enforceUsage(&u)
	in.mu.Lock()
	defer in.mu.Unlock()
	in.net = net
	if p := in.lastSample; p != nil && s.at.After(p.at) && p.cpuNs <= s.cpuNs {
		secs := s.at.Sub(p.at).Seconds()
		u[resource.CPU] = int64(float64(s.cpuNs-p.cpuNs) / 1e6 / secs) // ns per s / 1e6 = millicores
		if s.blkBytes >= p.blkBytes {
			u[resource.DiskIO] = int64(float64(s.blkBytes-p.blkBytes) / secs)
		}
		if s.rx >= p.rx && s.tx >= p.tx {
			u[resource.NetIn] = int64(float64(s.rx-p.rx) * 8 / secs)
			u[resource.NetOut] = int64(float64(s.tx-p.tx) * 8 / secs)
		}
	} else if p != nil {
		u[resource.CPU] = in.usage[resource.CPU]
	}
	in.lastSample = &s
	in.usage = u
}

// usageLoop samples the running instances' usage every interval.
func (a *Agent) usageLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		var running []*instance
		for _, in := range a.insts {
			running = append(running, in)
		}
		a.mu.Unlock()
		for _, in := range running {
			in.mu.Lock()
			id, st := in.containerID, in.state
			in.mu.Unlock()
			if id != "" && (st == "running" || st == "healthy") {
				in.sampleUsage(ctx, id)
				in.checkWritableLayer(ctx, id)
			}
		}
	}
}
