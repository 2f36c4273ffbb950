// Command gaia-mirror runs the mirror service: the admin REST API for
// mirror rules (mirror-sync/admin) over PostgreSQL, and a worker that runs
// the rules (mirror-sync/worker), writing into Gaia through its API with
// the robot credential of the registry section. Run as many as you like:
// runs are leased through PostgreSQL.
//
//	gaia-mirror --config FILE
//
// GAIA_MIRROR_* variables override config keys (GAIA_MIRROR_HTTP_ADDR,
// GAIA_MIRROR_DATABASE_URL, GAIA_MIRROR_ADMIN_TOKEN, ...).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gaia-registry/gaia/mirror-sync/admin"
	"github.com/gaia-registry/gaia/mirror-sync/store"
	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/mirror-sync/worker"
	"github.com/gaia-registry/gaia/registry/api"
	"github.com/gaia-registry/gaia/registry/httptimeouts"
	"github.com/gaia-registry/gaia/registry/logconfig"
	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/tlsfiles"
	"github.com/gaia-registry/gaia/registry/yamlconfig"
)

type config struct {
	Log  logconfig.Config `yaml:"log"`
	HTTP struct {
		Addr         string              `yaml:"addr"`         // default 127.0.0.1:5100
		DrainTimeout time.Duration       `yaml:"draintimeout"` // default 10s
		Timeouts     httptimeouts.Config `yaml:",inline"`      // readheadertimeout, bodyidletimeout, idletimeout
		TLS          tlsfiles.Config     `yaml:"tls"`          // HTTPS only (the admin token crosses it); replaced files are picked up
	} `yaml:"http"`
	Database struct {
		URL     string `yaml:"url"`
		Migrate bool   `yaml:"migrate"`
	} `yaml:"database"`
	Admin struct {
		Token string `yaml:"token"` // bearer token of the admin API
	} `yaml:"admin"`
	// Registry is the Gaia the worker writes into (a gateway or a server).
	Registry struct {
		URL      string `yaml:"url"`
		Username string `yaml:"username"` // the robot credential (htpasswd or token auth)
		Password string `yaml:"password"`
		TLS      struct {
			CA string `yaml:"ca"` // verifies an https registry.url (default: the system's roots)
		} `yaml:"tls"`
	} `yaml:"registry"`
	Worker struct {
		Disabled bool          `yaml:"disabled"` // serve the admin API only
		ID       string        `yaml:"id"`       // default hostname:pid
		Parallel int           `yaml:"parallel"` // tags copied at once per run (default 8)
		Lease    time.Duration `yaml:"lease"`    // default 30s
		Poll     time.Duration `yaml:"poll"`     // default 2s
	} `yaml:"worker"`
}

func main() {
	path := flag.String("config", "", "configuration file (YAML)")
	flag.Parse()
	if *path == "" {
		fmt.Fprintln(os.Stderr, "usage: gaia-mirror --config FILE")
		os.Exit(2)
	}
	if err := run(*path); err != nil {
		fmt.Fprintf(os.Stderr, "gaia-mirror: %v\n", err)
		os.Exit(1)
	}
}

func load(path string) (*config, error) {
	var c config
	if err := yamlconfig.Load(path, os.Environ(), "GAIA_MIRROR_", []string{"log", "http", "database", "admin", "registry", "worker"}, &c); err != nil {
		return nil, err
	}
	if c.HTTP.Addr == "" {
		c.HTTP.Addr = "127.0.0.1:5100"
	}
	if c.HTTP.DrainTimeout == 0 {
		c.HTTP.DrainTimeout = 10 * time.Second
	}
	c.HTTP.Timeouts.ApplyDefaults()
	if err := c.HTTP.Timeouts.Validate("http"); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch {
	case c.Database.URL == "":
		return nil, fmt.Errorf("%s: database.url: required", path)
	case len(c.Admin.Token) < 16:
		return nil, fmt.Errorf("%s: admin.token: required, at least 16 characters", path)
	case !c.Worker.Disabled && c.Registry.URL == "":
		return nil, fmt.Errorf("%s: registry.url: required (the Gaia the worker writes into), or set worker.disabled", path)
	case (c.Registry.Username == "") != (c.Registry.Password == ""):
		return nil, fmt.Errorf("%s: registry.password: username and password go together", path)
	case c.Worker.Lease != 0 && c.Worker.Lease < 3*time.Second:
		return nil, fmt.Errorf("%s: worker.lease: %s is too short (at least 3s)", path, c.Worker.Lease)
	case c.Worker.Parallel < 0:
		return nil, fmt.Errorf("%s: worker.parallel: must not be negative (0: the default, 8)", path)
	}
	if c.Registry.URL != "" {
		if u, err := url.Parse(c.Registry.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("%s: registry.url: %q must be http(s)://host[:port]", path, c.Registry.URL)
		}
	}
	if err := c.HTTP.TLS.Check("http.tls"); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if _, err := tlsfiles.ClientConfig(c.Registry.TLS.CA, "registry.tls.ca"); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := c.Log.Check(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

func run(path string) error {
	cfg, err := load(path)
	if err != nil {
		return err
	}
	log := cfg.Log.New()
	var certs *tlsfiles.Reloader
	if cfg.HTTP.TLS.Enabled() {
		if certs, err = tlsfiles.Load(cfg.HTTP.TLS, "http.tls", "gaia_mirror", log); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	pool, err := pgxpool.New(ctx, cfg.Database.URL)
	if err != nil {
		return fmt.Errorf("database.url: %w", err)
	}
	defer pool.Close()
	if cfg.Database.Migrate {
		if _, _, err := metadata.Migrate(ctx, pool); err != nil {
			return fmt.Errorf("database: migrating: %w", err)
		}
	} else if v, err := metadata.Version(ctx, pool); err != nil || v != metadata.Latest() {
		return fmt.Errorf("database: schema version %d (%v), this binary needs %d: run gaia-registry migrate", v, err, metadata.Latest())
	}
	st := store.New(pool)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if certs != nil {
		reg.MustRegister(certs)
	}
	mux := http.NewServeMux()
	adminAPI := &admin.Handler{Store: st, Token: cfg.Admin.Token, Log: log}
	mux.Handle(admin.Prefix, adminAPI)
	mux.Handle(admin.Prefix+"/", adminAPI)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := pool.Ping(r.Context()); err != nil {
			http.Error(w, "not ready: database: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	ln, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("http.addr: %w", err)
	}
	srv := cfg.HTTP.Timeouts.Server(mux)
	scheme, errc := tlsfiles.Serve(srv, ln, certs)
	log.Info("gaia-mirror serving the mirror admin API", "addr", ln.Addr().String(), "scheme", scheme)
	workerDone := make(chan struct{})
	registryTLS, err := tlsfiles.ClientConfig(cfg.Registry.TLS.CA, "registry.tls.ca")
	if err != nil {
		return err
	}
	if cfg.Worker.Disabled {
		close(workerDone)
	} else {
		w := worker.New(worker.Options{
			Store: st,
			Registry: upstream.New(upstream.Options{
				URL: cfg.Registry.URL, Username: cfg.Registry.Username, Password: cfg.Registry.Password, TLS: registryTLS,
				Concurrency: 64, Timeout: 5 * time.Minute,
				// Its questions ("is this there yet?") must not set off
				// the registry's pull-through for on-demand rules.
				Header: http.Header{api.NoPullThroughHeader: {"1"}},
			}),
			ID: cfg.Worker.ID, Parallel: cfg.Worker.Parallel, Lease: cfg.Worker.Lease, Poll: cfg.Worker.Poll,
			Log: log, Metrics: worker.NewMetrics(reg),
		})
		adminAPI.Queued = w.Wake
		log.Info("mirror worker started", "id", w.ID(), "registry", cfg.Registry.URL)
		go func() { defer close(workerDone); w.Run(ctx) }()
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	<-workerDone // a run in progress stops where it is; its lease lets another worker resume it
	sctx, cancel := context.WithTimeout(context.Background(), cfg.HTTP.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}
