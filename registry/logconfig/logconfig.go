// Package logconfig is the `log:` section every Gaia daemon shares:
// structured logs (log/slog) on stderr, as text or JSON.
package logconfig

import (
	"fmt"
	"log/slog"
	"os"
)

// Config is the `log:` section.
type Config struct {
	Level     string `yaml:"level"`     // debug, info (default), warn, error
	Formatter string `yaml:"formatter"` // text (default) or json
}

// Check fills defaults and validates; errors name the key.
func (c *Config) Check() error {
	if c.Level == "" {
		c.Level = "info"
	}
	if c.Formatter == "" {
		c.Formatter = "text"
	}
	switch c.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level: %q is not one of debug, info, warn, error", c.Level)
	}
	if c.Formatter != "text" && c.Formatter != "json" {
		return fmt.Errorf("log.formatter: %q is not text or json", c.Formatter)
	}
	return nil
}

// New returns the logger the (checked) config asks for.
func (c Config) New() *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Formatter == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
