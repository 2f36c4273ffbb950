package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.yaml.in/yaml/v3"

	"github.com/gaia-registry/gaia/registry/metadata"
)

const migrateUsage = `usage: gaia-registry migrate [up | down N | status] [--config FILE] [--database-url URL]

Applies (up, the default), reverts (down N) or shows (status) the
PostgreSQL metadata schema. The database comes from --database-url, else
$GAIA_DATABASE_URL, else database.url in the --config file.
`

// migrateCmd runs `gaia-registry migrate`.
func migrateCmd(args []string) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, migrateUsage) }
	configPath := fs.String("config", "", "configuration file (YAML) with database.url")
	dbURL := fs.String("database-url", "", "PostgreSQL URL (overrides the config file and $GAIA_DATABASE_URL)")
	// Flags may come before or after the action.
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
		from, to, err := metadata.Migrate(ctx, pool)
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
		from, to, err := metadata.Rollback(ctx, pool, steps)
		if err != nil {
			return err
		}
		fmt.Printf("reverted schema from version %d to %d\n", from, to)
	case action == "status" && len(positional) == 1:
		v, err := metadata.Version(ctx, pool)
		if err != nil {
			return err
		}
		state := "up to date"
		switch {
		case v < metadata.Latest():
			state = fmt.Sprintf("%d migration(s) pending", metadata.Latest()-v)
		case v > metadata.Latest():
			state = "newer than this binary"
		}
		fmt.Printf("schema version %d, binary knows %d: %s\n", v, metadata.Latest(), state)
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
