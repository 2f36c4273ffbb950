// Command gaia-registry serves the OCI Distribution API.
//
//	gaia-registry serve --config FILE
//	gaia-registry migrate [up | down N | status] [--config FILE] [--database-url URL]
//	gaia-registry gc status|run [--config FILE] [--dry-run] [--loop] [--walk]
//	gaia-registry keygen --out FILE
//
// `serve` runs one stateless registry server (registry/server): metadata in
// PostgreSQL, blob bytes in the configured storage driver. GAIA_* variables
// override config keys (GAIA_HTTP_ADDR=127.0.0.1:5001, GAIA_DATABASE_URL=...).
// SIGINT or SIGTERM drain in-flight requests and exit 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/gaia-registry/gaia/registry/server"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage: gaia-registry serve --config FILE\n       gaia-registry migrate [up | down N | status] [--config FILE] [--database-url URL]\n       gaia-registry gc status|run --config FILE [--dry-run] [--loop] [--walk]\n       gaia-registry keygen --out FILE\n")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ExitOnError)
		configPath := fs.String("config", "", "registry configuration file (YAML)")
		fs.Parse(os.Args[2:])
		if *configPath == "" {
			fmt.Fprintln(os.Stderr, "gaia-registry serve: --config FILE is required")
			os.Exit(2)
		}
		if err := serve(*configPath); err != nil {
			fmt.Fprintf(os.Stderr, "gaia-registry: %v\n", err)
			os.Exit(1)
		}
	case "migrate":
		if err := migrateCmd(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "gaia-registry: %v\n", err)
			os.Exit(1)
		}
	case "gc":
		if err := gcCmd(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "gaia-registry: %v\n", err)
			os.Exit(1)
		}
	case "keygen":
		if err := keygenCmd(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "gaia-registry: %v\n", err)
			os.Exit(1)
		}
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "gaia-registry: unknown command %q\n", os.Args[1])
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
