// Package server runs one stateless Gaia registry server: it reads the
// configuration, connects the PostgreSQL metadata store and the storage
// driver, and serves the OCI API (registry/api) behind authentication,
// metrics and request logs, with /healthz (liveness), /readyz (PostgreSQL
// reachable; storage reported) and /metrics (Prometheus) beside it. Shutdown is
// graceful: readiness fails at once, in-flight requests get the drain
// timeout to finish.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	consul "github.com/hashicorp/consul/api"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gaia-registry/gaia/mirror-sync/pullthrough"
	"github.com/gaia-registry/gaia/registry/api"
	"github.com/gaia-registry/gaia/registry/audit"
	"github.com/gaia-registry/gaia/registry/auth"
	"github.com/gaia-registry/gaia/registry/blobsign"
	"github.com/gaia-registry/gaia/registry/forwarded"
	"github.com/gaia-registry/gaia/registry/gc"
	"github.com/gaia-registry/gaia/registry/iam"
	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/replication"
	"github.com/gaia-registry/gaia/registry/retention"
	"github.com/gaia-registry/gaia/registry/tlsfiles"
	"github.com/gaia-registry/gaia/registry/tokenauth"
	"github.com/gaia-registry/gaia/registry/uploadsession"

	// Storage drivers selectable in `storage:`.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
	hdfsdriver "github.com/gaia-registry/gaia/storage-hdfs"
)

// testBcryptCost, when set, is the bcrypt cost of new passwords (tests:
// bcrypt.MinCost, so that creating and logging in users is fast).
var testBcryptCost int

// Server is one registry server, ready to Serve.
type Server struct {
	cfg          *Config
	log          *slog.Logger
	pool         *pgxpool.Pool
	driver       storagedriver.StorageDriver
	uploads      *uploadsession.Store
	storage      *StorageConfig
	metrics      *metrics
	handler      http.Handler
	certs        *tlsfiles.Reloader      // nil without http.tls
	repl         *replication.Replicator // nil without cluster.peers
	lockPool     *pgxpool.Pool           // cross-IDC fills' lock connections
	ptLockPool   *pgxpool.Pool           // pull-through manifest fetches' lock connections
	blobLockPool *pgxpool.Pool           // pull-through blob fetches' lock connections
	consul       *consul.Client          // nil without cluster.consul.addr
	gc           *gc.Collector
	retention    *retention.Store
	iam          *iam.Store         // nil without auth.builtin
	logins       *tokenauth.Limiter // auth.builtin's failed-login limiter (nil without it)
	// audit takes the audit log's events (Record never blocks): the
	// API's pushes, pulls and deletes, logins, changes to access.
	audit   *audit.Writer
	trusted forwarded.Trusted // proxies whose X-Forwarded-For names the client
	staging gc.StagingSweeper // the HDFS driver's @staging; nil for others
	ready   atomic.Bool
}

// New connects to PostgreSQL (migrating when database.migrate is set, and
// otherwise refusing a schema it does not match) and to storage.
func New(ctx context.Context, cfg *Config, log *slog.Logger) (*Server, error) {
	sc, err := cfg.StorageConfig()
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, storage: sc}
	if cfg.HTTP.TLS.Enabled() {
		if s.certs, err = tlsfiles.Load(cfg.HTTP.TLS, "http.tls", "gaia_registry", log); err != nil {
			return nil, err
		}
	}
	trusted, err := forwarded.Parse(cfg.HTTP.TrustedProxies, "http.trustedproxies")
	if err != nil {
		return nil, err
	}

	pc, err := pgxpool.ParseConfig(cfg.Database.URL)
	if err != nil {
		return nil, fmt.Errorf("database.url: %w", err)
	}
	// Registry queries are short index lookups: JIT compilation (which
	// PostgreSQL may pick for a large catalog page) would cost far more.
	pc.ConnConfig.RuntimeParams["jit"] = "off"
	pc.MaxConns = max(4, int32(4*runtime.GOMAXPROCS(0)))
	if cfg.Database.MaxConns > 0 {
		pc.MaxConns = cfg.Database.MaxConns
	}
	if s.pool, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
		return nil, fmt.Errorf("database.url: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.pool.Ping(pingCtx); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("database.url: cannot reach PostgreSQL at %s:%d: %w", pc.ConnConfig.Host, pc.ConnConfig.Port, err)
	}
	if err := s.checkSchema(ctx); err != nil {
		s.pool.Close()
		return nil, err
	}

	drv, err := factory.Create(ctx, sc.Driver, sc.Parameters)
	if err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("storage.%s: %w", sc.Driver, err)
	}
	reg := prometheus.NewRegistry()
	s.metrics = newMetrics(reg, s.pool)
	if s.certs != nil {
		reg.MustRegister(s.certs)
	}
	if hd, ok := drv.(*hdfsdriver.Driver); ok {
		reg.MustRegister(hdfsCollector{hd})
		s.staging = hd
	}
	s.driver = timedDriver{StorageDriver: drv, m: s.metrics}
	s.uploads = uploadsession.New(s.pool, s.driver).InIDC(cfg.Cluster.IDC)
	if sc.Driver == "filesystem" {
		// Uploads start writeback as they stream (uploadsession.WithLocalRoot).
		root := "/var/lib/registry" // the driver's default
		if r, ok := sc.Parameters["rootdirectory"]; ok && fmt.Sprint(r) != "" {
			root = fmt.Sprint(r)
		}
		s.uploads.WithLocalRoot(root)
	}
	// Copies in progress (cross-IDC fills, pull-through fetches) hold a
	// connection each (their advisory lock) in a pool of their own, so a
	// burst of them cannot starve the API.
	lc := pc.Copy()
	lc.MaxConns, lc.MinConns = 16, 0
	if s.lockPool, err = pgxpool.NewWithConfig(ctx, lc); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("database.url: %w", err)
	}
	// Pull-through's manifest and blob fetches lock on pools of their own
	// (manifest fetches wait for blob fetches: one pool could deadlock;
	// neither may starve the fills).
	pl := pc.Copy()
	pl.MaxConns, pl.MinConns = 8, 0
	if s.ptLockPool, err = pgxpool.NewWithConfig(ctx, pl); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("database.url: %w", err)
	}
	if s.blobLockPool, err = pgxpool.NewWithConfig(ctx, pl.Copy()); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("database.url: %w", err)
	}
	if len(cfg.Cluster.Peers) > 0 {
		peerTLS, err := tlsfiles.ClientConfig(cfg.Cluster.TLS.CA, "cluster.tls.ca")
		if err != nil {
			s.pool.Close()
			return nil, err
		}
		s.repl = replication.New(replication.Options{
			IDC: cfg.Cluster.IDC, Peers: cfg.Cluster.Peers, Token: cfg.Cluster.InternalToken.Current(), TLS: peerTLS,
			Username: cfg.Cluster.Robot.Username, Password: cfg.Cluster.Robot.Password,
			Prefixes: cfg.Cluster.Replicate, DB: s.pool, LockDB: s.lockPool, Driver: s.driver, Log: log,
			Bytes: s.metrics.crossIDCBytes,
		})
	}
	if cfg.Cluster.Consul.Addr != "" {
		cc := consul.DefaultConfig()
		cc.Address = cfg.Cluster.Consul.Addr
		cc.Token = cfg.Cluster.Consul.Token
		if s.consul, err = consul.NewClient(cc); err != nil {
			s.pool.Close()
			return nil, fmt.Errorf("cluster.consul.addr: %w", err)
		}
	}

	var authOpts []auth.Option
	if b := cfg.Auth.Builtin; b != nil {
		if s.iam, err = b.NewStore(s.pool, reg, testBcryptCost); err != nil {
			s.pool.Close()
			return nil, err
		}
		authOpts = append(authOpts, auth.WithStore(s.iam))
	}
	authn, err := auth.New(cfg.Auth, authOpts...)
	if err != nil {
		s.pool.Close()
		return nil, err
	}
	s.gc = gc.New(collectorOptions(cfg, s.pool, s.driver, log, reg))
	s.retention = &retention.Store{DB: s.pool, Holder: cfg.Cluster.Advertise}
	reg.MustRegister(newUsageCollector(s.pool))
	s.audit = audit.NewWriter(s.pool, audit.Options{Buffer: cfg.Audit.Buffer, Retention: cfg.Audit.Retention, Log: log}, reg)
	s.trusted = trusted
	blobs, manifests := metadata.NewBlobs(s.pool), metadata.NewManifests(s.pool)
	if step := os.Getenv(TestHookPark); step != "" {
		park := parkAt(step, log)
		s.uploads.Hook(park)
		manifests.Hook(park)
	}
	apiHandler := api.New(api.Options{
		Uploads:    s.uploads,
		Blobs:      blobs,
		Manifests:  manifests,
		Driver:     s.driver,
		Log:        log,
		Delete:     sc.Delete,
		WriteIdle:  s.cfg.HTTP.WriteIdleTimeout,
		Replicator: s.repl,
		// On-demand mirror rules (stored in the same database by
		// gaia-mirror's admin API) make their namespaces pull-through.
		PullThrough: pullthrough.New(pullthrough.Options{
			DB: s.pool, LockDB: s.ptLockPool, BlobLockDB: s.blobLockPool, Manifests: manifests, Blobs: blobs, Uploads: s.uploads,
			Log: log, Metrics: reg,
			MaxFetches: cfg.PullThrough.MaxFetches, MaxBlindFetches: cfg.PullThrough.MaxBlindFetches, MaxWaiting: cfg.PullThrough.MaxWaiting,
			NegativeTTL: cfg.PullThrough.NegativeTTL, NegativeMax: cfg.PullThrough.NegativeMax,
		}),
	})
	v2 := instrument(s.internal(apiHandler, authn.Wrap(auditRequests(apiHandler, s.audit, trusted))), s.metrics, log, trusted, s.copied)
	mux := http.NewServeMux()
	mux.Handle("/v2/", v2)
	mux.Handle("/v2", v2)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", s.readyz)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	// The admin API in the request log and metrics too (route "admin").
	mux.Handle(AdminPrefix, instrument(s.adminHandler(), s.metrics, log, trusted, nil))
	s.logins = authn.LoginLimiter()
	if h := authn.TokenHandler(s.recordLogin, trusted, reg); h != nil {
		mux.Handle("/auth/", h)
	}
	s.handler = mux
	return s, nil
}

// internal lets a peer IDC's server read blobs with the cluster's internal
// token, past auth. The token is good for what fills and replication do,
// a GET or HEAD of a blob, and nothing else (not manifests, tags or the
// catalog). Every other request goes through auth, stripped of the token:
// a peer that copies as a robot does too.
func (s *Server) internal(direct, authed http.Handler) http.Handler {
	tokens := s.cfg.Cluster.InternalToken
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if q := r.URL.Query(); blobsign.Signed(q) {
			s.signed(w, r, q, direct)
			return
		}
		got := r.Header.Get(replication.TokenHeader)
		if got != "" && (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
			api.RouteOf(r).Kind == "blob" && tokens.Match(got) {
			direct.ServeHTTP(w, r.WithContext(auth.WithUser(r.Context(), internalTokenUser)))
			return
		}
		if got != "" {
			s.metrics.internalRefused.Inc()
		}
		r.Header.Del(replication.TokenHeader)
		authed.ServeHTTP(w, r)
	})
}

// internalTokenUser is the user of a request the internal token let in
// (in the request log, and for copied).
const internalTokenUser = "(internal token)"

// copied counts the bytes of a blob GET answered to a peer IDC's copy:
// one that came with the internal token, or as the robot the copies use
// (cluster.robot, the same on every server), and named its IDC and
// cause. Anyone else's headers count nothing.
func (s *Server) copied(r *http.Request, user string, bytes int64) {
	peer := r.Header.Get(replication.IDCHeader)
	if peer == "" || (user != internalTokenUser && (user == "" || user != s.cfg.Cluster.Robot.Username)) {
		return
	}
	cause := r.Header.Get(replication.CauseHeader)
	if cause != replication.CauseReplication {
		cause = replication.CauseFill
	}
	if _, ok := s.cfg.Cluster.Peers[peer]; !ok {
		peer = "unknown"
	}
	s.metrics.crossIDCBytes.WithLabelValues("out", cause, peer).Add(float64(bytes))
}

// signed serves a blob GET or HEAD whose URL a gateway signed
// (registry/blobsign) instead of checking credentials: the signature is
// the authorization, for that method, repository and digest until it
// expires. The client's own Authorization header, if it sent one along,
// is dropped unread. Anything else with a signature, or a signature that
// does not verify, is answered 401 with the spec's error body.
func (s *Server) signed(w http.ResponseWriter, r *http.Request, q url.Values, direct http.Handler) {
	rt := api.RouteOf(r)
	var err error
	id := ""
	switch {
	case rt.Kind == "blob" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		id, err = blobsign.Verify(s.cfg.Cluster.SigningKeys, q, r.Method, rt.Name, rt.Ref, time.Now())
	case rt.Kind == "upload" && rt.Ref != "" && r.Method != http.MethodPost:
		// An upload session a gateway pointed the client at (redirect:
		// uploads): every request of that session, whose later Locations
		// carry the signature on.
		id, err = blobsign.Verify(s.cfg.Cluster.SigningKeys, q, blobsign.MethodUpload, rt.Name, rt.Ref, time.Now())
		if err == nil {
			w = &signedLocation{ResponseWriter: w, keys: s.cfg.Cluster.SigningKeys, id: id}
		}
	default:
		err = errors.New("a signature is good for blob GETs and HEADs and upload sessions only")
	}
	if err != nil {
		s.metrics.signedRequests.WithLabelValues("refused").Inc()
		s.log.Info("signed URL refused", "method", r.Method, "path", r.URL.Path, "err", err)
		errcode.ServeJSON(w, errcode.ErrorCodeUnauthorized.WithMessage(err.Error()))
		return
	}
	s.metrics.signedRequests.WithLabelValues("accepted").Inc()
	r.Header.Del("Authorization")
	r.Header.Del(replication.TokenHeader)
	direct.ServeHTTP(w, r.WithContext(auth.WithUser(r.Context(), id)))
}

// signedLocation signs the Location of a signed upload request's answer
// (the session's next request) afresh, for the same caller: a session
// stays usable while each of its requests follows the last within
// uploadSignedFor, however long the whole upload takes.
type signedLocation struct {
	http.ResponseWriter
	keys blobsign.Keys
	id   string
}

const uploadSignedFor = 5 * time.Minute

func (w *signedLocation) WriteHeader(code int) {
	if loc := w.Header().Get("Location"); loc != "" {
		if u, err := url.Parse(loc); err == nil {
			if rt := api.Parse(u.Path); rt.Kind == "upload" && rt.Ref != "" {
				q := u.Query()
				blobsign.Add(q, blobsign.Sign(w.keys, blobsign.MethodUpload, rt.Name, rt.Ref, time.Now().Add(uploadSignedFor), w.id))
				u.RawQuery = q.Encode()
				w.Header().Set("Location", u.String())
			}
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *signedLocation) Write(b []byte) (int, error) { return w.ResponseWriter.Write(b) }

// Unwrap lets http.ResponseController reach the connection.
func (w *signedLocation) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) checkSchema(ctx context.Context) error {
	if s.cfg.Database.Migrate {
		from, to, err := metadata.Migrate(ctx, s.pool)
		if err != nil {
			return fmt.Errorf("database: migrating: %w", err)
		}
		if from != to {
			s.log.Info("database migrated", "from", from, "to", to)
		}
		return nil
	}
	v, err := metadata.Version(ctx, s.pool)
	if err != nil {
		return fmt.Errorf("database: reading the schema version: %w", err)
	}
	if v != metadata.Latest() {
		return fmt.Errorf("database: schema is at version %d, this binary needs %d: run `gaia-registry migrate up --config FILE` or set database.migrate: true", v, metadata.Latest())
	}
	return nil
}

// Handler is everything the server serves (for tests that want no listener).
func (s *Server) Handler() http.Handler { return s.handler }

// readyz answers 200 only when PostgreSQL answers and the server is not
// shutting down; its body says when storage does not answer.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	fail := func(what string, err error) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s: %v\n", what, err)
	}
	if !s.ready.Load() {
		fail("server", errors.New("not serving (starting or shutting down)"))
		return
	}
	if err := s.pool.Ping(ctx); err != nil {
		fail("database", err)
		return
	}
	if _, err := s.driver.Stat(ctx, "/"); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		// Still ready: the servers of an IDC share its storage, so failing
		// here would take every one of them out of the gateways' rotation,
		// and with them the manifests, tags and catalog that PostgreSQL
		// alone serves. Blob requests answer 503 meanwhile.
		fmt.Fprintf(w, "ok, but storage is unavailable (blob requests answer 503): %v\n", err)
		return
	}
	w.Write([]byte("ok\n"))
}

// purgeUploads expires abandoned upload sessions and their data, on every
// server (sessions being written are skipped; each is ended once), removes
// upload data no session owns, and removes what cross-IDC fills killed
// mid-copy left in storage.
func (s *Server) purgeUploads(ctx context.Context) {
	if s.storage.UploadScan == 0 {
		return
	}
	t := time.NewTicker(s.storage.UploadScan)
	defer t.Stop()
	for {
		n, err := s.uploads.Expire(ctx, s.storage.UploadAge)
		if n > 0 {
			s.metrics.uploadsPurged.Add(float64(n))
			s.log.Info("expired abandoned uploads", "count", n, "older_than", s.storage.UploadAge)
		}
		if err != nil && ctx.Err() == nil {
			s.log.Warn("expiring uploads", "err", err)
		}
		n, err = s.uploads.SweepOrphans(ctx, s.storage.UploadAge)
		if n > 0 {
			s.metrics.uploadsPurged.Add(float64(n))
			s.log.Info("removed upload data no session owned", "count", n, "older_than", s.storage.UploadAge)
		}
		if err != nil && ctx.Err() == nil {
			s.log.Warn("sweeping orphaned upload data", "err", err)
		}
		s.sweepFills(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// walkStorage offers to walk the IDC's storage for crash-left objects
// (gc.Collector.Walk); the walk's lease makes one server of the IDC do it,
// at most once per gc.walk.every.
func (s *Server) walkStorage(ctx context.Context) {
	o := gc.WalkOptions{Every: s.cfg.GC.Walk.Every, Grace: s.cfg.GC.Walk.Grace, Rate: s.cfg.GC.Walk.Rate, Staging: s.staging}
	every := o.Every
	if every <= 0 {
		every = 24 * time.Hour
	}
	for {
		res, err := s.gc.Walk(ctx, o)
		if err != nil && ctx.Err() == nil {
			s.log.Warn("storage walk", "err", err)
		}
		if res.Removed+res.Staging > 0 {
			s.log.Info("storage walk removed crash-left data", "objects", res.Removed, "staging_files", res.Staging, "examined", res.Examined)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(every, time.Hour)):
		}
	}
}

// sweepFills removes the staging directories of fills whose server died
// mid-copy (replication.SweepFills), whether or not this server fills.
func (s *Server) sweepFills(ctx context.Context) {
	n, err := replication.SweepFills(ctx, s.lockPool, s.cfg.Cluster.IDC, s.driver, s.storage.UploadAge)
	if n > 0 {
		s.metrics.fillsSwept.Add(float64(n))
		s.log.Info("removed the staging data of interrupted fills", "count", n)
	}
	if err != nil && ctx.Err() == nil {
		s.log.Warn("sweeping interrupted fills", "err", err)
	}
}

func (s *Server) serviceID() string {
	return s.cfg.Cluster.Consul.Service + "-" + s.cfg.Cluster.IDC + "-" + s.cfg.Cluster.Advertise
}

// register puts this server in Consul's catalog with its IDC and a check
// of its readiness endpoint.
func (s *Server) register(scheme string) error {
	cl := s.cfg.Cluster
	host, portStr, _ := net.SplitHostPort(cl.Advertise)
	port, _ := strconv.Atoi(portStr)
	reg := &consul.AgentServiceRegistration{
		ID:      s.serviceID(),
		Name:    cl.Consul.Service,
		Address: host,
		Port:    port,
		Tags:    []string{"idc-" + cl.IDC},
		Meta:    map[string]string{"idc": cl.IDC, "scheme": scheme},
		Check: &consul.AgentServiceCheck{
			HTTP:                           scheme + "://" + cl.Advertise + "/readyz",
			Interval:                       cl.Consul.CheckInterval.String(),
			Timeout:                        cl.Consul.CheckInterval.String(),
			TLSSkipVerify:                  scheme == "https",
			DeregisterCriticalServiceAfter: cl.Consul.DeregisterAfter.String(),
		},
	}
	if err := s.consul.Agent().ServiceRegister(reg); err != nil {
		return fmt.Errorf("cluster.consul: registering in Consul at %s: %w", cl.Consul.Addr, err)
	}
	s.log.Info("registered in Consul", "service", cl.Consul.Service, "id", reg.ID, "idc", cl.IDC)
	return nil
}

func (s *Server) deregister() {
	if s.consul == nil {
		return
	}
	if err := s.consul.Agent().ServiceDeregister(s.serviceID()); err != nil {
		s.log.Warn("deregistering from Consul", "err", err)
	}
}

// TestHookPark names an environment variable for crash tests only: a
// server started with it set to a step name (uploadsession.Step*,
// metadata.StepBeforeCommit) parks every request that reaches that step
// for good, after logging "test hook: parked", so a test can kill the
// process -9 at exactly that point. Never set it in production.
const TestHookPark = "GAIA_TESTHOOK_PARK"

func parkAt(step string, log *slog.Logger) func(string) {
	log.Warn("test hook set: requests reaching this step park forever", "env", TestHookPark, "step", step)
	return func(s string) {
		if s == step {
			log.Warn("test hook: parked", "step", s)
			select {}
		}
	}
}

// Serve listens on http.addr until ctx ends, then shuts down gracefully:
// /readyz fails at once, the listener closes, and in-flight requests get
// http.draintimeout to finish. It closes the database pool on return.
func (s *Server) Serve(ctx context.Context) error {
	defer s.pool.Close()
	if s.blobLockPool != nil {
		defer s.blobLockPool.Close()
		defer s.ptLockPool.Close()
	}
	if s.lockPool != nil {
		defer s.lockPool.Close()
	}
	ln, err := net.Listen("tcp", s.cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("http.addr: %w", err)
	}
	srv := s.cfg.HTTP.Timeouts.Server(s.handler)
	srv.ErrorLog = slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()
	// The audit log is written until the last request has ended, then
	// flushed (bounded) before the pool closes.
	auditCtx, stopAudit := context.WithCancel(context.Background())
	auditDone := make(chan struct{})
	go func() { s.audit.Run(auditCtx); close(auditDone) }()
	defer func() { stopAudit(); <-auditDone }()
	go s.purgeUploads(bg)
	if s.cfg.HTTP.Debug.Addr != "" {
		dbg := http.NewServeMux()
		dbg.HandleFunc("/debug/pprof/", pprof.Index)
		dbg.HandleFunc("/debug/pprof/profile", pprof.Profile)
		dbg.HandleFunc("/debug/pprof/trace", pprof.Trace)
		dbg.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		dl, err := net.Listen("tcp", s.cfg.HTTP.Debug.Addr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("http.debug.addr: %w", err)
		}
		dsrv := &http.Server{Handler: dbg, ReadHeaderTimeout: 10 * time.Second}
		go dsrv.Serve(dl)
		defer dsrv.Close()
	}

	_, errc := tlsfiles.Serve(srv, ln, s.certs)
	s.ready.Store(true)
	scheme := "http"
	if s.certs != nil {
		scheme = "https"
	}
	if s.repl != nil {
		go s.repl.Run(bg, 2*time.Second)
	}
	go s.retention.Loop(bg, 30*time.Second, func(err error) { s.log.Warn("retention run", "err", err) })
	if !s.cfg.GC.Disabled {
		go s.gc.Run(bg, s.cfg.GC.IdleInterval())
		if !s.cfg.GC.Walk.Disabled {
			go s.walkStorage(bg)
		}
	}
	if s.consul != nil {
		if err := s.register(scheme); err != nil {
			srv.Close()
			return err
		}
	}
	s.log.Info("serving", "addr", ln.Addr().String(), "scheme", scheme, "storage", s.storage.Driver,
		"delete", s.storage.Delete, "idc", s.cfg.Cluster.IDC)
	select {
	case err := <-errc:
		s.deregister()
		return err
	case <-ctx.Done():
	}
	s.ready.Store(false)
	if s.consul != nil {
		// Gateways stop sending before the listener closes: Consul tells
		// them through blocking queries, which takes a moment.
		s.deregister()
		select {
		case <-time.After(min(time.Second, s.cfg.HTTP.DrainTimeout/4)):
		case err := <-errc:
			return err
		}
	}
	s.log.Info("shutting down: draining in-flight requests", "timeout", s.cfg.HTTP.DrainTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.HTTP.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		return fmt.Errorf("shutdown: requests still running after %s: %w", s.cfg.HTTP.DrainTimeout, err)
	}
	s.log.Info("stopped")
	return nil
}
