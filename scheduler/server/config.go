package server

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"time"

	"github.com/gaia-registry/gaia/registry/httptimeouts"
	"github.com/gaia-registry/gaia/registry/logconfig"
	"github.com/gaia-registry/gaia/registry/yamlconfig"
)

// Config is gaia-scheduler's YAML configuration (configs/scheduler.yml).
// GAIA_<SECTION>_<KEY> environment variables override it
// (GAIA_HTTP_ADDR, GAIA_DATABASE_URL, GAIA_AUTH_ADMINTOKEN, ...).
type Config struct {
	Log       logconfig.Config `yaml:"log"`
	HTTP      HTTPConfig       `yaml:"http"`
	Database  DatabaseConfig   `yaml:"database"`
	Cluster   ClusterConfig    `yaml:"cluster"`
	Scheduler SchedulerConfig  `yaml:"scheduler"`
	Auth      AuthConfig       `yaml:"auth"`
	Registry  RegistryConfig   `yaml:"registry"`
	Pools     PoolsConfig      `yaml:"pools"`
}

// PoolsConfig is the optional allocation file (YARN's fair-scheduler
// vocabulary, scheduler/allocfile). The pools it names are managed by the
// file alone: the leader loads them at the start of its term and whenever
// the file changes, and the API refuses to change or delete them.
type PoolsConfig struct {
	File string `yaml:"file"`
	// Reload: how often the file is polled for a change. Default 10s.
	Reload time.Duration `yaml:"reload"`
}

// HTTPConfig is the listener.
type HTTPConfig struct {
	Addr         string              `yaml:"addr"`         // default 127.0.0.1:7000
	DrainTimeout time.Duration       `yaml:"draintimeout"` // default 30s
	Timeouts     httptimeouts.Config `yaml:",inline"`
}

// DatabaseConfig is the PostgreSQL holding all the scheduler's state.
type DatabaseConfig struct {
	URL      string `yaml:"url"`
	Migrate  bool   `yaml:"migrate"`  // apply pending migrations at start
	MaxConns int32  `yaml:"maxconns"` // default 16
}

// ClusterConfig names the cluster and finds the other schedulers.
type ClusterConfig struct {
	Name string `yaml:"name"` // default "default"; Consul tag cluster=NAME, lock gaia/scheduler/NAME/leader
	// Advertise is the host:port other schedulers, gaiactl and nodes
	// reach this one at; default http.addr.
	Advertise string `yaml:"advertise"`
	Consul    struct {
		Addr            string        `yaml:"addr"`    // required: the leader is elected with a Consul lock
		Service         string        `yaml:"service"` // default gaia-scheduler
		Token           string        `yaml:"token"`
		CheckInterval   time.Duration `yaml:"checkinterval"`   // /healthz check; default 2s
		DeregisterAfter time.Duration `yaml:"deregisterafter"` // default 1m
		// SessionTTL: a leader that stops renewing its session (crashed,
		// paused, cut off) loses the lock within about this long (Consul
		// may take up to twice it). Consul's minimum is 10s. Default 10s.
		SessionTTL time.Duration `yaml:"sessionttl"`
	} `yaml:"consul"`
}

// SchedulerConfig tunes the leader's loop and the node protocol.
type SchedulerConfig struct {
	// Interval is the loop's period when nothing wakes it earlier (API
	// writes and node reports do). Default 1s.
	Interval time.Duration `yaml:"interval"`
	// NodeTimeout: a node not heard from (polls are heartbeats) for this
	// long is down, its instances lost and replaced. Default 30s.
	NodeTimeout time.Duration `yaml:"nodetimeout"`
	// PollInterval is the long-poll wait nodes are told to ask for; it
	// must be well under nodetimeout. Default 10s.
	PollInterval time.Duration `yaml:"pollinterval"`
	// HeartbeatFlush: nodes' last heartbeats are written (one statement
	// for all of them) this often. Default 30s.
	HeartbeatFlush time.Duration `yaml:"heartbeatflush"`
	Scoring        string        `yaml:"scoring"`    // binpack (default) or spread
	Candidates     int           `yaml:"candidates"` // nodes sampled per placement; 0: the engine's default
	// ReplaceBackoff: after an instance of an app fails, the app's
	// replacements wait this long, doubled with each further failure up
	// to ReplaceBackoffMax. Defaults 5s and 5m.
	ReplaceBackoff    time.Duration `yaml:"replacebackoff"`
	ReplaceBackoffMax time.Duration `yaml:"replacebackoffmax"`
	// ReplaceBackoffReset: an instance of the app healthy (running,
	// without a health check) this long ends the back-off. Default 10m.
	ReplaceBackoffReset time.Duration `yaml:"replacebackoffreset"`
}

// AuthConfig holds the API's tokens.
type AuthConfig struct {
	AdminToken string `yaml:"admintoken"` // required
	NodeToken  string `yaml:"nodetoken"`  // required: the node credential
	// SubmitTokens: name → token. A pool's submitters list names.
	SubmitTokens map[string]string `yaml:"submittokens"`
}

// RegistryConfig is the Gaia registry images are resolved against.
type RegistryConfig struct {
	URL      string `yaml:"url"` // e.g. http://127.0.0.1:5000; required
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

const envPrefix = "GAIA_"

var sections = []string{"log", "http", "database", "cluster", "scheduler", "auth", "registry", "pools"}

// LoadConfig reads a config file, applies GAIA_* overrides, fills defaults
// and validates; errors name the key.
func LoadConfig(path string, environ []string) (*Config, error) {
	var cfg Config
	if err := yamlconfig.Load(path, environ, envPrefix, sections, &cfg); err != nil {
		return nil, err
	}
	cfg.applyDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &cfg, nil
}

func (c *Config) applyDefaults() {
	if c.HTTP.Addr == "" {
		c.HTTP.Addr = "127.0.0.1:7000"
	}
	if c.HTTP.DrainTimeout == 0 {
		c.HTTP.DrainTimeout = 30 * time.Second
	}
	c.HTTP.Timeouts.ApplyDefaults()
	if c.Database.MaxConns == 0 {
		c.Database.MaxConns = 16
	}
	cl := &c.Cluster
	if cl.Name == "" {
		cl.Name = "default"
	}
	if cl.Advertise == "" {
		cl.Advertise = c.HTTP.Addr
	}
	if cl.Consul.Service == "" {
		cl.Consul.Service = "gaia-scheduler"
	}
	if cl.Consul.CheckInterval == 0 {
		cl.Consul.CheckInterval = 2 * time.Second
	}
	if cl.Consul.DeregisterAfter == 0 {
		cl.Consul.DeregisterAfter = time.Minute
	}
	if cl.Consul.SessionTTL == 0 {
		cl.Consul.SessionTTL = 10 * time.Second
	}
	s := &c.Scheduler
	if s.Interval == 0 {
		s.Interval = time.Second
	}
	if s.NodeTimeout == 0 {
		s.NodeTimeout = 30 * time.Second
	}
	if s.PollInterval == 0 {
		s.PollInterval = 10 * time.Second
	}
	if s.HeartbeatFlush == 0 {
		s.HeartbeatFlush = 30 * time.Second
	}
	if s.Scoring == "" {
		s.Scoring = "binpack"
	}
	if s.ReplaceBackoff == 0 {
		s.ReplaceBackoff = 5 * time.Second
	}
	if s.ReplaceBackoffMax == 0 {
		s.ReplaceBackoffMax = 5 * time.Minute
	}
	if s.ReplaceBackoffReset == 0 {
		s.ReplaceBackoffReset = 10 * time.Minute
	}
	if c.Pools.Reload == 0 {
		c.Pools.Reload = 10 * time.Second
	}
}

var clusterName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

func (c *Config) validate() error {
	if err := c.Log.Check(); err != nil {
		return err
	}
	if err := c.HTTP.Timeouts.Validate("http"); err != nil {
		return err
	}
	if c.Database.URL == "" {
		return errors.New("database.url: required (PostgreSQL holds the scheduler's state), e.g. postgres://postgres@127.0.0.1:5432/gaia?sslmode=disable")
	}
	if c.Database.MaxConns < 2 {
		return errors.New("database.maxconns: at least 2")
	}
	if !clusterName.MatchString(c.Cluster.Name) {
		return fmt.Errorf("cluster.name: %q is not a name of letters, digits, '.', '_' and '-'", c.Cluster.Name)
	}
	host, port, err := net.SplitHostPort(c.Cluster.Advertise)
	if err != nil {
		return fmt.Errorf("cluster.advertise: %q: %w", c.Cluster.Advertise, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" || port == "0" {
		return fmt.Errorf("cluster.advertise: %q is not an address other machines can reach: set cluster.advertise", c.Cluster.Advertise)
	}
	if c.Cluster.Consul.Addr == "" {
		return errors.New("cluster.consul.addr: required (the leader is elected with a Consul lock), e.g. 127.0.0.1:8500")
	}
	if c.Cluster.Consul.SessionTTL < 10*time.Second || c.Cluster.Consul.SessionTTL > 24*time.Hour {
		return fmt.Errorf("cluster.consul.sessionttl: %s is outside Consul's 10s..24h", c.Cluster.Consul.SessionTTL)
	}
	s := c.Scheduler
	if s.PollInterval >= s.NodeTimeout {
		return fmt.Errorf("scheduler.pollinterval: %s must be shorter than scheduler.nodetimeout (%s): a poll is a node's heartbeat", s.PollInterval, s.NodeTimeout)
	}
	if s.Scoring != "binpack" && s.Scoring != "spread" {
		return fmt.Errorf("scheduler.scoring: %q is not binpack or spread", s.Scoring)
	}
	if s.Candidates < 0 {
		return errors.New("scheduler.candidates: must not be negative")
	}
	if s.ReplaceBackoff < 0 || s.ReplaceBackoffReset < 0 {
		return errors.New("scheduler.replacebackoff, scheduler.replacebackoffreset: must not be negative")
	}
	if s.ReplaceBackoffMax < s.ReplaceBackoff {
		return fmt.Errorf("scheduler.replacebackoffmax: %s is shorter than scheduler.replacebackoff (%s)", s.ReplaceBackoffMax, s.ReplaceBackoff)
	}
	if c.Auth.AdminToken == "" {
		return errors.New("auth.admintoken: required")
	}
	if c.Auth.NodeToken == "" {
		return errors.New("auth.nodetoken: required (the node credential)")
	}
	for name, tok := range c.Auth.SubmitTokens {
		if tok == "" {
			return fmt.Errorf("auth.submittokens.%s: empty token", name)
		}
		if tok == c.Auth.AdminToken || tok == c.Auth.NodeToken {
			return fmt.Errorf("auth.submittokens.%s: must differ from the admin and node tokens", name)
		}
	}
	if c.Auth.NodeToken == c.Auth.AdminToken {
		return errors.New("auth.nodetoken: must differ from auth.admintoken")
	}
	if c.Pools.Reload < 0 {
		return errors.New("pools.reload: must not be negative")
	}
	u, err := url.Parse(c.Registry.URL)
	if c.Registry.URL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("registry.url: %q is not the Gaia registry's http(s) URL (images are resolved to digests there)", c.Registry.URL)
	}
	return nil
}
