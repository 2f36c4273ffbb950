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
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/gaia-registry/gaia/registry/pgmigrate"
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

// migrateCmd runs `gaia-scheduler migrate [up | down N | status]`.
func migrateCmd(args []string) error {
	return pgmigrate.Command("gaia-scheduler", "the scheduler's PostgreSQL schema", store.Schema, args, os.Stdout)
}
