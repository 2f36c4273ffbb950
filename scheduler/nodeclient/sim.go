package nodeclient

import (
	"context"
	"maps"
	"sort"
	"sync"
	"time"

	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/model"
)

// Sim is a simulated node agent: it long-polls its desired set, "runs"
// each instance desired run at once (state running) and stops the others,
// and reports whenever what it runs changed. Tests and benchmarks run many
// in one process.
type Sim struct {
	C    *Client
	Wait time.Duration // the long-poll wait to ask for (default: the leader's pollInterval)

	mu      sync.Mutex
	running map[string]bool
	version string
	sets    int // desired sets received
	// OnChange, when set, is called (without locks) after each desired set
	// was applied.
	OnChange func()
	// Trace, when set, is called with what the agent runs (id → app
	// version) the moment a desired set changed it, before the report
	// leaves, under the agent's lock: a test's timeline of what ran.
	Trace    func(at time.Time, running map[string]int64)
	versions map[string]int64
	// State, when set, says what an instance desired run does here:
	// model.Running (the default), another live state it then stays in
	// (model.Starting: it never becomes healthy), or model.Failed (it
	// exits 1 at once and is reported failed).
	State  func(in api.DesiredInstance) model.InstanceState
	states map[string]model.InstanceState
	failed map[string]bool
}

// NewSim returns a simulated agent for the node in o.
func NewSim(o Options) *Sim {
	return &Sim{C: New(o), running: map[string]bool{}}
}

// Run registers and polls until ctx ends. Errors are retried.
func (s *Sim) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		r, err := s.C.Register(ctx)
		if err == nil {
			if s.Wait == 0 {
				s.Wait = r.PollInterval.D()
			}
			break
		}
		sleep(ctx, time.Second)
	}
	for ctx.Err() == nil {
		s.mu.Lock()
		v := s.version
		s.mu.Unlock()
		set, changed, err := s.C.Poll(ctx, v, s.Wait)
		if err != nil {
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		if !changed {
			continue
		}
		rep := s.apply(set)
		if rep != nil {
			for ctx.Err() == nil {
				if err := s.C.Report(ctx, rep); err == nil {
					break
				}
				sleep(ctx, 200*time.Millisecond)
			}
		}
		if s.OnChange != nil {
			s.OnChange()
		}
	}
	return ctx.Err()
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// apply makes the running set match the desired set and returns the
// report to send (nil when nothing changed).
func (s *Sim) apply(set *api.DesiredSet) *api.Report {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version = set.Version
	s.sets++
	want := map[string]bool{}
	changed := false
	var rep api.Report
	if s.versions == nil {
		s.versions = map[string]int64{}
	}
	if s.states == nil {
		s.states, s.failed = map[string]model.InstanceState{}, map[string]bool{}
	}
	for _, in := range set.Instances {
		if in.Desired == model.DesiredRun {
			if s.failed[in.ID] {
				continue
			}
			st := model.Running
			if s.State != nil {
				st = s.State(in)
			}
			if st == model.Failed {
				s.failed[in.ID] = true
				rep.Instances = append(rep.Instances, api.InstanceReport{ID: in.ID, State: model.Failed, ExitCode: 1, Reason: "exited 1 (simulated)"})
				changed = true
				continue
			}
			want[in.ID] = true
			if !s.running[in.ID] {
				s.running[in.ID] = true
				s.versions[in.ID] = in.Version
				s.states[in.ID] = st
				changed = true
			}
		}
	}
	for id := range s.running {
		if !want[id] {
			delete(s.running, id)
			delete(s.versions, id)
			delete(s.states, id)
			changed = true
			rep.Instances = append(rep.Instances, api.InstanceReport{ID: id, State: model.Stopped, Reason: "stopped by the scheduler"})
		}
	}
	// Instances told to stop that never ran here are reported stopped too.
	for _, in := range set.Instances {
		if in.Desired == model.DesiredStop && !want[in.ID] {
			found := false
			for _, r := range rep.Instances {
				found = found || r.ID == in.ID
			}
			if !found {
				rep.Instances = append(rep.Instances, api.InstanceReport{ID: in.ID, State: model.Stopped, Reason: "not running here"})
				changed = true
			}
		}
	}
	if !changed {
		return nil
	}
	if s.Trace != nil {
		s.Trace(time.Now(), maps.Clone(s.versions))
	}
	for id := range s.running {
		rep.Instances = append(rep.Instances, api.InstanceReport{ID: id, State: s.states[id]})
	}
	return &rep
}

// Running lists the instances the agent runs now, sorted.
func (s *Sim) Running() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.running))
	for id := range s.running {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// Sets is how many desired sets the agent has received.
func (s *Sim) Sets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sets
}
