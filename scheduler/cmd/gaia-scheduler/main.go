// Command gaia-scheduler runs Gaia's scheduler.
//
//	gaia-scheduler serve --config FILE      (also: gaia-scheduler --config FILE)
//	gaia-scheduler migrate [up | down N | status] [--config FILE] [--database-url URL]
//
// `serve` runs one scheduler process (scheduler/server): state in
// PostgreSQL, the leader elected with a Consul lock; run several for high
// availability. GAIA_* variables override config keys. SIGINT or SIGTERM
// release the leadership, drain in-flight requests and exit 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.yaml.in/yaml/v3"

	"github.com/gaia-registry/gaia/scheduler/server"
	"github.com/gaia-registry/gaia/scheduler/store"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage: gaia-scheduler [serve] --config FILE\n       gaia-scheduler migrate [up | down N | status] [--config FILE] [--database-url URL]\n")
	os.Exit(2)
}

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		usage()
	}
	cmd := args[0]
	if strings.HasPrefix(cmd, "-") && cmd != "-h" && cmd != "--help" {
		cmd, args = "serve", append([]string{"serve"}, args...)
	}
	switch cmd {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ExitOnError)
		configPath := fs.String("config", "", "scheduler configuration file (YAML)")
		fs.Parse(args[1:])
		if *configPath == "" {
			fmt.Fprintln(os.Stderr, "gaia-scheduler serve: --config FILE is required")
			os.Exit(2)
		}
		if err := serve(*configPath); err != nil {
			fmt.Fprintf(os.Stderr, "gaia-scheduler: %v\n", err)
			os.Exit(1)
		}
	case "migrate":
		if err := migrateCmd(args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "gaia-scheduler: %v\n", err)
			os.Exit(1)
		}
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "gaia-scheduler: unknown command %q\n", cmd)
		usage()
	}
}

func serve(configPath string) error {
	cfg, err := server.LoadConfig(configPath, os.Environ())
	if err != nil {
		return err
	}
	log := cfg.Log.New()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := server.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	return srv.Serve(ctx)
}

const migrateUsage = `usage: gaia-scheduler migrate [up | down N | status] [--config FILE] [--database-url URL]

Applies (up, the default), reverts (down N) or shows (status) the
scheduler's PostgreSQL schema. The database comes from --database-url, else
$GAIA_DATABASE_URL, else database.url in the --config file.
`

func migrateCmd(args []string) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, migrateUsage) }
	configPath := fs.String("config", "", "configuration file (YAML) with database.url")
	dbURL := fs.String("database-url", "", "PostgreSQL URL (overrides the config file and $GAIA_DATABASE_URL)")
	var positional []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return err
		}
		args = fs.Args()
		if len(args) > 0 {
			positional = append(positional, args[0])
			args = args[1:]
		}
	}
	url, err := databaseURL(*dbURL, *configPath)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	action := "up"
	if len(positional) > 0 {
		action = positional[0]
	}
	switch {
	case action == "up" && len(positional) <= 1:
		from, to, err := store.Migrate(ctx, pool)
		if err != nil {
			return err
		}
		if from == to {
			fmt.Printf("schema is up to date at version %d\n", to)
		} else {
			fmt.Printf("migrated schema from version %d to %d\n", from, to)
		}
	case action == "down" && len(positional) == 2:
		steps, err := strconv.Atoi(positional[1])
		if err != nil || steps < 1 {
			return fmt.Errorf("migrate down: N must be a positive number of migrations, got %q", positional[1])
		}
		from, to, err := store.Rollback(ctx, pool, steps)
		if err != nil {
			return err
		}
		fmt.Printf("reverted schema from version %d to %d\n", from, to)
	case action == "status" && len(positional) == 1:
		v, err := store.Version(ctx, pool)
		if err != nil {
			return err
		}
		state := "up to date"
		switch {
		case v < store.Latest():
			state = fmt.Sprintf("%d migration(s) pending", store.Latest()-v)
		case v > store.Latest():
			state = "newer than this binary"
		}
		fmt.Printf("schema version %d, binary knows %d: %s\n", v, store.Latest(), state)
	default:
		fs.Usage()
		return errors.New("migrate: unknown action")
	}
	return nil
}

// databaseURL picks the database URL: flag, then environment, then config.
func databaseURL(flagURL, configPath string) (string, error) {
	if flagURL != "" {
		return flagURL, nil
	}
	if env := os.Getenv("GAIA_DATABASE_URL"); env != "" {
		return env, nil
	}
	if configPath == "" {
		return "", errors.New("no database: pass --database-url, set GAIA_DATABASE_URL or give --config with database.url")
	}
	b, err := os.ReadFile(configPath)
	if err != nil {
		return "", err
	}
	var cfg struct {
		Database struct {
			URL string `yaml:"url"`
		} `yaml:"database"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		return "", fmt.Errorf("config %s: %w", configPath, err)
	}
	if cfg.Database.URL == "" {
		return "", fmt.Errorf("config %s: database.url is not set", configPath)
	}
	return cfg.Database.URL, nil
}
