// Command gaia-mirror runs the mirror service: today the admin REST API for
// mirror rules (mirror-sync/admin) over PostgreSQL; the worker that runs
// the rules is the next step (queued runs wait for it).
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
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gaia-registry/gaia/mirror-sync/admin"
	"github.com/gaia-registry/gaia/mirror-sync/store"
	"github.com/gaia-registry/gaia/registry/logconfig"
	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/yamlconfig"
)

type config struct {
	Log  logconfig.Config `yaml:"log"`
	HTTP struct {
		Addr         string        `yaml:"addr"`         // default 127.0.0.1:5100
		DrainTimeout time.Duration `yaml:"draintimeout"` // default 10s
	} `yaml:"http"`
	Database struct {
		URL     string `yaml:"url"`
		Migrate bool   `yaml:"migrate"`
	} `yaml:"database"`
	Admin struct {
		Token string `yaml:"token"` // bearer token of the admin API
	} `yaml:"admin"`
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
	if err := yamlconfig.Load(path, os.Environ(), "GAIA_MIRROR_", []string{"log", "http", "database", "admin"}, &c); err != nil {
		return nil, err
	}
	if c.HTTP.Addr == "" {
		c.HTTP.Addr = "127.0.0.1:5100"
	}
	if c.HTTP.DrainTimeout == 0 {
		c.HTTP.DrainTimeout = 10 * time.Second
	}
	switch {
	case c.Database.URL == "":
		return nil, fmt.Errorf("%s: database.url: required", path)
	case len(c.Admin.Token) < 16:
		return nil, fmt.Errorf("%s: admin.token: required, at least 16 characters", path)
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
	mux := http.NewServeMux()
	mux.Handle(admin.Prefix, &admin.Handler{Store: store.New(pool), Token: cfg.Admin.Token, Log: log})
	mux.Handle(admin.Prefix+"/", &admin.Handler{Store: store.New(pool), Token: cfg.Admin.Token, Log: log})
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
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("gaia-mirror serving the mirror admin API", "addr", ln.Addr().String(),
		"note", "the worker that runs rules is not part of this build yet: runs stay queued")
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.HTTP.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}
