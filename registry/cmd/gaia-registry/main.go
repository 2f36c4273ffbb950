// Command gaia-registry serves the OCI Distribution API.
//
//	gaia-registry serve --config FILE
//	gaia-registry migrate [up | down N | status] [--config FILE] [--database-url URL]
//
// Until Gaia's own PostgreSQL-backed handlers land, `serve` runs CNCF
// distribution's registry application with Gaia's storage drivers
// registered, so `storage: hdfs: {...}` works in its config. The config is
// distribution's YAML; REGISTRY_* environment variables override its keys
// (for example REGISTRY_HTTP_ADDR=127.0.0.1:5001).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"

	_ "github.com/gaia-registry/gaia/storage-hdfs"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage: gaia-registry serve --config FILE\n       gaia-registry migrate [up | down N | status] [--config FILE] [--database-url URL]\n")
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
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "gaia-registry: unknown command %q\n", os.Args[1])
		usage()
	}
}

func serve(configPath string) error {
	f, err := os.Open(configPath)
	if err != nil {
		return err
	}
	config, err := configuration.Parse(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("config %s: %w", configPath, err)
	}
	reg, err := registry.NewRegistry(context.Background(), config)
	if err != nil {
		return err
	}
	// Drains in-flight requests on SIGINT/SIGTERM (http.draintimeout).
	return reg.ListenAndServe()
}
