package pgmigrate

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.yaml.in/yaml/v3"
)

// Command runs a daemon's `migrate [up | down N | status] [--config FILE]
// [--database-url URL]` subcommand over the set: program names the daemon
// and schema describes the schema in the usage text. It prints to out and
// its usage to stderr.
func Command(program, schema string, set Set, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, `usage: %s migrate [up | down N | status] [--config FILE] [--database-url URL]

Applies (up, the default), reverts (down N) or shows (status) %s.
The database comes from --database-url, else $GAIA_DATABASE_URL, else
database.url in the --config file.
`, program, schema)
	}
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
	url, err := DatabaseURL(*dbURL, *configPath)
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
		from, to, err := set.Migrate(ctx, pool)
		if err != nil {
			return err
		}
		if from == to {
			fmt.Fprintf(out, "schema is up to date at version %d\n", to)
		} else {
			fmt.Fprintf(out, "migrated schema from version %d to %d\n", from, to)
		}
	case action == "down" && len(positional) == 2:
		steps, err := strconv.Atoi(positional[1])
		if err != nil || steps < 1 {
			return fmt.Errorf("migrate down: N must be a positive number of migrations, got %q", positional[1])
		}
		from, to, err := set.Rollback(ctx, pool, steps)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "reverted schema from version %d to %d\n", from, to)
	case action == "status" && len(positional) == 1:
		v, err := set.Version(ctx, pool)
		if err != nil {
			return err
		}
		latest := set.Latest()
		state := "up to date"
		switch {
		case v < latest:
			state = fmt.Sprintf("%d migration(s) pending", latest-v)
		case v > latest:
			state = "newer than this binary"
		}
		fmt.Fprintf(out, "schema version %d, binary knows %d: %s\n", v, latest, state)
	default:
		fs.Usage()
		return errors.New("migrate: unknown action")
	}
	return nil
}

// DatabaseURL picks the database URL: flag, then $GAIA_DATABASE_URL, then
// database.url in the config file.
func DatabaseURL(flagURL, configPath string) (string, error) {
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
