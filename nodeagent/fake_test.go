package nodeagent

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/gaia-registry/gaia/scheduler/resource"
)

func testLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("GAIA_TEST_VERBOSE") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// fakeScheduler is the scheduler's side of the node protocol, in memory:
// the test sets the desired set, the agent polls it and reports.
type fakeScheduler struct {
	mu         sync.Mutex
	version    int
	instances  []DesiredInstance
	changedCh  chan struct{}
	reports    map[string]InstanceReport // latest report per instance
	reported   int                       // reports received
	nodeUsage  resource.Vector           // the latest report's node usage
	registered []RegisterRequest
}

func newFakeScheduler() *fakeScheduler {
	return &fakeScheduler{changedCh: make(chan struct{}), reports: map[string]InstanceReport{}}
}

// Set replaces the desired set.
func (f *fakeScheduler) Set(insts ...DesiredInstance) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.version++
	f.instances = append([]DesiredInstance(nil), insts...)
	close(f.changedCh)
	f.changedCh = make(chan struct{})
}

func (f *fakeScheduler) Register(_ context.Context, req RegisterRequest) (RegisterResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.registered = append(f.registered, req)
	return RegisterResponse{NodeID: req.Name}, nil
}

func (f *fakeScheduler) PollDesired(ctx context.Context, version string, wait time.Duration) (*DesiredSet, bool, error) {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		f.mu.Lock()
		if v := strconv.Itoa(f.version); v != version && f.version > 0 {
			set := &DesiredSet{Version: v, Instances: append([]DesiredInstance(nil), f.instances...)}
			f.mu.Unlock()
			return set, true, nil
		}
		ch := f.changedCh
		f.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			return nil, false, nil
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}

func (f *fakeScheduler) Report(_ context.Context, r Report) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reported++
	f.nodeUsage = r.Usage
	for _, in := range r.Instances {
		f.reports[in.ID] = in
	}
	return nil
}

// Reports is a copy of the latest report of every instance.
func (f *fakeScheduler) Reports() map[string]InstanceReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]InstanceReport{}
	for k, v := range f.reports {
		out[k] = v
	}
	return out
}

// ForgetReports drops what was reported so far.
func (f *fakeScheduler) ForgetReports() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = map[string]InstanceReport{}
}

// ServeHTTP is the node protocol over HTTP (for the agent's binary).
func (f *fakeScheduler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/node/register", func(w http.ResponseWriter, r *http.Request) {
		var req RegisterRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		resp, _ := f.Register(r.Context(), req)
		json.NewEncoder(w).Encode(resp)
	})
	mux.HandleFunc("GET /v1/node/{name}/desired", func(w http.ResponseWriter, r *http.Request) {
		wait, _ := time.ParseDuration(r.URL.Query().Get("wait"))
		set, changed, err := f.PollDesired(r.Context(), r.URL.Query().Get("version"), wait)
		if err != nil {
			return
		}
		if !changed {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		json.NewEncoder(w).Encode(set)
	})
	mux.HandleFunc("POST /v1/node/{name}/report", func(w http.ResponseWriter, r *http.Request) {
		var rep Report
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields() // as the scheduler does
		if err := dec.Decode(&rep); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		f.Report(r.Context(), rep)
		w.WriteHeader(http.StatusNoContent)
	})
	if r.Header.Get("Authorization") != "Bearer node-secret" {
		http.Error(w, `{"error":{"code":"unauthorized"}}`, http.StatusUnauthorized)
		return
	}
	mux.ServeHTTP(w, r)
}
