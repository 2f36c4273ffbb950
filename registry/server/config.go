package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/gaia-registry/gaia/registry/auth"
)

// Config is gaia-registry's YAML configuration. Keys follow distribution's
// where the meaning is the same (http, storage, auth, log), plus database.
type Config struct {
	Log      LogConfig      `yaml:"log"`
	HTTP     HTTPConfig     `yaml:"http"`
	Storage  map[string]any `yaml:"storage"`
	Database DatabaseConfig `yaml:"database"`
	Auth     auth.Config    `yaml:"auth"`
	// Version is accepted (and ignored) so distribution-style files load.
	Version string `yaml:"version"`
}

// LogConfig: structured logs on stderr.
type LogConfig struct {
	Level     string `yaml:"level"`     // debug, info (default), warn, error
	Formatter string `yaml:"formatter"` // text (default) or json
}

// HTTPConfig is the listener.
type HTTPConfig struct {
	Addr string `yaml:"addr"` // host:port; default 127.0.0.1:5000
	// DrainTimeout bounds graceful shutdown: in-flight requests get this
	// long to finish after SIGINT/SIGTERM. Default 30s.
	DrainTimeout time.Duration `yaml:"draintimeout"`
	TLS          struct {
		Certificate string `yaml:"certificate"`
		Key         string `yaml:"key"`
	} `yaml:"tls"`
	// Debug.Addr, when set, serves Go's pprof profiles (/debug/pprof/) on a
	// separate listener: keep it on loopback.
	Debug struct {
		Addr string `yaml:"addr"`
	} `yaml:"debug"`
}

// DatabaseConfig is the PostgreSQL holding all metadata.
type DatabaseConfig struct {
	URL      string `yaml:"url"`      // postgres://user@host:port/db?sslmode=...
	Migrate  bool   `yaml:"migrate"`  // apply pending migrations at start
	MaxConns int32  `yaml:"maxconns"` // pool size; default max(4, 4×CPUs)
}

// StorageConfig is what the storage section says once parsed.
type StorageConfig struct {
	Driver     string
	Parameters map[string]any
	Delete     bool          // storage.delete.enabled
	UploadAge  time.Duration // storage.maintenance.uploadpurging.age (default 168h)
	UploadScan time.Duration // ...interval (default 1h); 0 with enabled: false
}

// envPrefix: GAIA_<SECTION>_<KEY>... overrides the file, for example
// GAIA_HTTP_ADDR=0.0.0.0:5000 or GAIA_DATABASE_URL=postgres://...
const envPrefix = "GAIA_"

var sections = map[string]bool{"log": true, "http": true, "storage": true, "database": true, "auth": true}

// LoadConfig reads a config file, applies GAIA_* environment overrides,
// fills defaults and validates. Errors name the key at fault.
func LoadConfig(path string, environ []string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// Decode the file as written first, so errors carry its line numbers.
	var cfg Config
	if err := decodeStrict(raw, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if hasOverrides(environ) {
		var tree map[string]any
		if err := yaml.Unmarshal(raw, &tree); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if tree == nil {
			tree = map[string]any{}
		}
		applyEnv(tree, environ)
		merged, err := yaml.Marshal(tree)
		if err != nil {
			return nil, err
		}
		cfg = Config{}
		if err := decodeStrict(merged, &cfg); err != nil {
			return nil, fmt.Errorf("%s with GAIA_* overrides: %w", path, err)
		}
	}
	cfg.applyDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &cfg, nil
}

func decodeStrict(doc []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// hasOverrides reports whether environ holds a GAIA_<section>_... variable.
func hasOverrides(environ []string) bool {
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if rest, ok := strings.CutPrefix(k, envPrefix); ok {
			section, _, found := strings.Cut(strings.ToLower(rest), "_")
			if found && sections[section] {
				return true
			}
		}
	}
	return false
}

// applyEnv sets GAIA_A_B_C=v as tree[a][b][c] = v (v read as a YAML
// scalar). Variables of other programs (GAIA_TEST_*, ...) are ignored.
func applyEnv(tree map[string]any, environ []string) {
	sort.Strings(environ) // deterministic when two variables touch one key
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, envPrefix) {
			continue
		}
		path := strings.Split(strings.ToLower(strings.TrimPrefix(k, envPrefix)), "_")
		if !sections[path[0]] || len(path) < 2 {
			continue
		}
		var val any
		if err := yaml.Unmarshal([]byte(v), &val); err != nil || val == nil {
			val = v
		}
		node := tree
		for _, p := range path[:len(path)-1] {
			next, ok := node[p].(map[string]any)
			if !ok {
				next = map[string]any{}
				node[p] = next
			}
			node = next
		}
		node[path[len(path)-1]] = val
	}
}

func (c *Config) applyDefaults() {
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Formatter == "" {
		c.Log.Formatter = "text"
	}
	if c.HTTP.Addr == "" {
		c.HTTP.Addr = "127.0.0.1:5000"
	}
	if c.HTTP.DrainTimeout == 0 {
		c.HTTP.DrainTimeout = 30 * time.Second
	}
}

func (c *Config) validate() error {
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level: %q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Formatter {
	case "text", "json":
	default:
		return fmt.Errorf("log.formatter: %q is not text or json", c.Log.Formatter)
	}
	if (c.HTTP.TLS.Certificate == "") != (c.HTTP.TLS.Key == "") {
		return errors.New("http.tls: certificate and key go together")
	}
	if c.Database.URL == "" {
		return errors.New("database.url: required (PostgreSQL holds all metadata), e.g. postgres://postgres@127.0.0.1:5432/gaia?sslmode=disable")
	}
	if c.Database.MaxConns < 0 {
		return errors.New("database.maxconns: must be positive")
	}
	_, err := c.StorageConfig()
	return err
}

// storageSettings are storage keys that are not a driver.
var storageSettings = map[string]bool{"delete": true, "maintenance": true, "cache": true, "redirect": true}

// StorageConfig picks the one driver out of the storage section.
func (c *Config) StorageConfig() (*StorageConfig, error) {
	sc := &StorageConfig{UploadAge: 168 * time.Hour, UploadScan: time.Hour}
	for k, v := range c.Storage {
		if storageSettings[k] {
			continue
		}
		if sc.Driver != "" {
			return nil, fmt.Errorf("storage: two drivers (%s and %s); configure exactly one", sc.Driver, k)
		}
		sc.Driver = k
		switch p := v.(type) {
		case map[string]any:
			sc.Parameters = p
		case nil:
			sc.Parameters = map[string]any{}
		default:
			return nil, fmt.Errorf("storage.%s: parameters must be a mapping", k)
		}
	}
	if sc.Driver == "" {
		return nil, errors.New("storage: no driver configured (filesystem, hdfs, s3 or inmemory)")
	}
	if d, ok := c.Storage["delete"].(map[string]any); ok {
		sc.Delete, _ = d["enabled"].(bool)
	}
	if m, ok := c.Storage["maintenance"].(map[string]any); ok {
		if up, ok := m["uploadpurging"].(map[string]any); ok {
			if en, ok := up["enabled"].(bool); ok && !en {
				sc.UploadScan = 0
			}
			for key, dst := range map[string]*time.Duration{"age": &sc.UploadAge, "interval": &sc.UploadScan} {
				s, ok := up[key].(string)
				if !ok || (key == "interval" && sc.UploadScan == 0) {
					continue
				}
				d, err := time.ParseDuration(s)
				if err != nil || d <= 0 {
					return nil, fmt.Errorf("storage.maintenance.uploadpurging.%s: %q is not a positive duration", key, s)
				}
				*dst = d
			}
		}
	}
	return sc, nil
}
