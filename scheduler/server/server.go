// Package server runs one gaia-scheduler process: the configuration, the
// PostgreSQL store, the leader election in Consul, the leader's loop, the
// API (scheduler/api) with /healthz, /readyz and /metrics beside it, the
// Consul registration (service gaia-scheduler, tag cluster=NAME, and
// leader while it leads), and graceful shutdown.
//
// Every process serves reads from PostgreSQL. The one holding the Consul
// lock leads: it starts a new term, loads the state into an engine
// cluster, and runs the loop (reports, node liveness, Plan, a fenced write
// of the plan, Apply). Followers forward user writes to the leader and
// point nodes to it.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gaia-registry/gaia/scheduler/allocfile"
	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/leader"
	"github.com/gaia-registry/gaia/scheduler/store"
)

// Server is one scheduler process.
type Server struct {
	cfg     *Config
	log     *slog.Logger
	store   *store.Store
	consul  *consul.Client
	metrics *metrics
	images  *resolver
	handler http.Handler
	ready   atomic.Bool
	cur     atomic.Pointer[leaderState]
	// stopping is closed at shutdown: long polls answer at once.
	stopping chan struct{}

	poolsWatcher *allocfile.Watcher
	fileMu       sync.Mutex
	file         *filePools // nil without pools.file

	leaderMu  sync.Mutex
	leaderURL string
	leaderAt  time.Time
}

// TestHookIgnoreLoss names an environment variable for tests only: set to
// 1, the leader does not watch its Consul lock, so only the term check in
// PostgreSQL can stop a deposed leader (leader.Options.IgnoreLoss).
const TestHookIgnoreLoss = "GAIA_TESTHOOK_SCHEDULER_IGNORE_LOCK_LOSS"

// New connects to PostgreSQL (migrating when database.migrate is set, else
// refusing a schema it does not match) and to Consul.
func New(ctx context.Context, cfg *Config, log *slog.Logger) (*Server, error) {
	reg := prometheus.NewRegistry()
	s := &Server{cfg: cfg, log: log, metrics: newMetrics(reg), images: newResolver(cfg.Registry), stopping: make(chan struct{})}
	var err error
	s.store, err = store.Open(ctx, store.Options{URL: cfg.Database.URL, MaxConns: cfg.Database.MaxConns, OnDeposed: s.metrics.deposed.Inc})
	if err != nil {
		return nil, fmt.Errorf("database.url: %w", err)
	}
	if err := s.watchPoolsFile(); err != nil {
		s.store.Close()
		return nil, err
	}
	if err := s.checkSchema(ctx); err != nil {
		s.store.Close()
		return nil, err
	}
	cc := consul.DefaultConfig()
	cc.Address = cfg.Cluster.Consul.Addr
	cc.Token = cfg.Cluster.Consul.Token
	if s.consul, err = consul.NewClient(cc); err != nil {
		s.store.Close()
		return nil, fmt.Errorf("cluster.consul.addr: %w", err)
	}
	apiHandler := api.New(api.Options{
		Store: s.store, Backend: s, Leadership: s, Self: cfg.Cluster.Advertise, Log: log,
		AdminToken: cfg.Auth.AdminToken, SubmitTokens: cfg.Auth.SubmitTokens, NodeToken: cfg.Auth.NodeToken,
		MaxWait: 2 * cfg.Scheduler.PollInterval,
	})
	mux := http.NewServeMux()
	mux.Handle("/v1/", apiHandler)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", s.readyz)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	s.handler = instrument(mux, s.metrics)
	return s, nil
}

func (s *Server) checkSchema(ctx context.Context) error {
	if s.cfg.Database.Migrate {
		from, to, err := store.Migrate(ctx, s.store.DB())
		if err != nil {
			return fmt.Errorf("database: migrating: %w", err)
		}
		if from != to {
			s.log.Info("database migrated", "from", from, "to", to)
		}
		return nil
	}
	v, err := store.Version(ctx, s.store.DB())
	if err != nil {
		return fmt.Errorf("database: reading the schema version: %w", err)
	}
	if v != store.Latest() {
		return fmt.Errorf("database: schema is at version %d, this binary needs %d: run `gaia-scheduler migrate --config FILE` or set database.migrate: true", v, store.Latest())
	}
	return nil
}

// Handler is everything the server serves.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if !s.ready.Load() {
		http.Error(w, "not ready: not serving (starting or shutting down)", http.StatusServiceUnavailable)
		return
	}
	if err := s.store.DB().Ping(ctx); err != nil {
		http.Error(w, "not ready: database: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	role := "follower"
	if s.cur.Load() != nil {
		role = "leader"
	}
	fmt.Fprintf(w, "ok (%s)\n", role)
}

// Leading implements api.Leadership.
func (s *Server) Leading() bool { return s.cur.Load() != nil }

// LeaderURL finds the leader: the passing gaia-scheduler instance of the
// cluster tagged leader in Consul (cached for a second).
func (s *Server) LeaderURL(ctx context.Context) string {
	s.leaderMu.Lock()
	defer s.leaderMu.Unlock()
	if time.Since(s.leaderAt) < time.Second && s.leaderURL != "" {
		return s.leaderURL
	}
	entries, _, err := s.consul.Health().ServiceMultipleTags(s.cfg.Cluster.Consul.Service,
		[]string{"cluster=" + s.cfg.Cluster.Name, "leader"}, true, (&consul.QueryOptions{}).WithContext(ctx))
	if err != nil {
		s.log.Warn("finding the leader in Consul", "err", err)
		return ""
	}
	s.leaderURL = ""
	for _, e := range entries {
		addr := net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port))
		if addr == s.cfg.Cluster.Advertise {
			continue // a stale tag of our own
		}
		s.leaderURL = "http://" + addr
		break
	}
	s.leaderAt = time.Now()
	return s.leaderURL
}

func (s *Server) serviceID() string {
	return s.cfg.Cluster.Consul.Service + "-" + s.cfg.Cluster.Name + "-" + s.cfg.Cluster.Advertise
}

// checkTimeout is the /healthz check's timeout: the leader's session ends
// when the check turns critical, so a process that is only slow (two
// cores under load) must not fail it; a dead one refuses at once, so the
// timeout does not delay the failover after a crash.
func checkTimeout(interval time.Duration) time.Duration {
	return max(interval, 5*time.Second)
}

// checkID is the ID of this process's /healthz check in Consul, which its
// leader session is tied to.
func (s *Server) checkID() string { return "service:" + s.serviceID() }

// register (re)registers this process in Consul, tagged leader or not.
func (s *Server) register(leading bool) error {
	cl := s.cfg.Cluster
	host, portStr, _ := net.SplitHostPort(cl.Advertise)
	port, _ := strconv.Atoi(portStr)
	tags := []string{"cluster=" + cl.Name}
	if leading {
		tags = append(tags, "leader")
	}
	reg := &consul.AgentServiceRegistration{
		ID: s.serviceID(), Name: cl.Consul.Service, Address: host, Port: port, Tags: tags,
		Meta: map[string]string{"cluster": cl.Name},
		Check: &consul.AgentServiceCheck{
			CheckID:                        s.checkID(),
			HTTP:                           "http://" + cl.Advertise + "/healthz",
			Interval:                       cl.Consul.CheckInterval.String(),
			Timeout:                        checkTimeout(cl.Consul.CheckInterval).String(),
			DeregisterCriticalServiceAfter: cl.Consul.DeregisterAfter.String(),
			// Re-registered (the leader tag comes and goes) while serving:
			// the leader's session is tied to this check, so it must never
			// be reset to critical. Consul keeps a check that is
			// re-registered with the same ID and definition, and Status
			// passing is its state for a first registration (the process
			// is serving by then). The e2e failover test checks that the
			// leader keeps its lock across the re-registration.
			Status: consul.HealthPassing,
		},
	}
	if err := s.consul.Agent().ServiceRegister(reg); err != nil {
		return fmt.Errorf("cluster.consul: registering in Consul at %s: %w", cl.Consul.Addr, err)
	}
	return nil
}

// stepDown ends ls's term (an API write was refused by the term check).
func (s *Server) stepDown(ls *leaderState) {
	s.cur.CompareAndSwap(ls, nil)
	ls.deposeOnce.Do(func() { close(ls.deposed) })
}

// lead is one term: load, then loop until deposed or the lock is lost.
func (s *Server) lead(ctx context.Context, term int64) error {
	ls, err := s.newLeaderState(ctx, term)
	if err != nil {
		return err
	}
	s.cur.Store(ls)
	s.metrics.isLeader.Set(1)
	s.metrics.term.Set(float64(term))
	if err := s.register(true); err != nil {
		s.log.Warn("tagging this scheduler leader in Consul", "err", err)
	}
	s.log.Info("leader: state loaded", "term", term, "nodes", len(ls.nodes), "pools", len(ls.pools), "apps", len(ls.apps), "instances", len(ls.inst))
	done := make(chan error, 1)
	lctx, cancel := context.WithCancel(ctx)
	ls.ctx = lctx
	if s.cfg.Pools.File != "" {
		if err := s.locked(s.applyFilePools); err != nil {
			s.log.Error("pools.file: applying at the start of the term", "err", err)
		}
	}
	go func() { done <- ls.run() }()
	select {
	case err = <-done:
		cancel()
	case <-ls.deposed:
		// An API write found the term over. The loop's pass under way (if
		// any) fails its own next write; it is not waited for.
		err = store.ErrDeposed
		cancel()
	case <-ctx.Done():
		cancel()
		err = <-done
	}
	s.cur.CompareAndSwap(ls, nil)
	s.metrics.isLeader.Set(0)
	s.metrics.term.Set(0)
	if rerr := s.register(false); rerr != nil {
		s.log.Warn("untagging this scheduler in Consul", "err", rerr)
	}
	return err
}

// Serve listens on http.addr, campaigns for leadership, and runs until ctx
// ends; then it shuts down gracefully (the lock released, Consul told).
func (s *Server) Serve(ctx context.Context) error {
	defer s.store.Close()
	ln, err := net.Listen("tcp", s.cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("http.addr: %w", err)
	}
	srv := s.cfg.HTTP.Timeouts.Server(s.handler)
	srv.ErrorLog = slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.ready.Store(true)
	if err := s.register(false); err != nil {
		srv.Close()
		return err
	}
	if s.poolsWatcher != nil {
		wctx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		go s.poolsWatcher.Run(wctx, s.cfg.Pools.Reload)
	}
	s.log.Info("serving", "addr", ln.Addr().String(), "cluster", s.cfg.Cluster.Name, "advertise", s.cfg.Cluster.Advertise)
	ectx, stopElection := context.WithCancel(context.Background())
	elected := make(chan struct{})
	go func() {
		defer close(elected)
		leader.Run(ectx, leader.Options{
			Consul: s.consul, Cluster: s.cfg.Cluster.Name, Holder: s.cfg.Cluster.Advertise,
			SessionTTL: s.cfg.Cluster.Consul.SessionTTL, Store: s.store, Log: s.log,
			Checks:     []string{"serfHealth", s.checkID()},
			IgnoreLoss: os.Getenv(TestHookIgnoreLoss) == "1",
		}, s.lead)
	}()
	select {
	case err := <-errc:
		stopElection()
		<-elected
		return err
	case <-ctx.Done():
	}
	s.ready.Store(false)
	close(s.stopping)
	stopElection()
	<-elected // the lock is released: another scheduler may lead at once
	if err := s.consul.Agent().ServiceDeregister(s.serviceID()); err != nil {
		s.log.Warn("deregistering from Consul", "err", err)
	}
	s.log.Info("shutting down: draining in-flight requests", "timeout", s.cfg.HTTP.DrainTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.HTTP.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		var stacks strings.Builder
		pprof.Lookup("goroutine").WriteTo(&stacks, 1)
		s.log.Error("requests still running at the end of the drain", "goroutines", stacks.String())
		srv.Close()
		return fmt.Errorf("shutdown: requests still running after %s: %w", s.cfg.HTTP.DrainTimeout, err)
	}
	s.log.Info("stopped")
	return nil
}
