package server

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"time"

	"github.com/gaia-registry/gaia/registry/auth"
	"github.com/gaia-registry/gaia/registry/blobsign"
	"github.com/gaia-registry/gaia/registry/forwarded"
	"github.com/gaia-registry/gaia/registry/httptimeouts"
	"github.com/gaia-registry/gaia/registry/internaltoken"
	"github.com/gaia-registry/gaia/registry/logconfig"
	"github.com/gaia-registry/gaia/registry/tlsfiles"
	"github.com/gaia-registry/gaia/registry/yamlconfig"
)

// Config is gaia-registry's YAML configuration. Keys follow distribution's
// where the meaning is the same (http, storage, auth, log), plus database.
type Config struct {
	Log      logconfig.Config `yaml:"log"`
	HTTP     HTTPConfig       `yaml:"http"`
	Storage  map[string]any   `yaml:"storage"`
	Database DatabaseConfig   `yaml:"database"`
	Auth     auth.Config      `yaml:"auth"`
	Cluster  ClusterConfig    `yaml:"cluster"`
	// PullThrough bounds what pulls under on-demand mirror rules may
	// start (mirror-sync/pullthrough).
	PullThrough PullThroughConfig `yaml:"pullthrough"`
	// GC is online garbage collection (registry/gc).
	GC GCConfig `yaml:"gc"`
	// Admin is the admin API (garbage collection status, retention
	// policies, storage usage and quotas).
	Admin AdminConfig `yaml:"admin"`
	// Audit is the audit log: pushes, pulls, deletes and (with the
	// built-in auth) logins and membership changes.
	Audit AuditConfig `yaml:"audit"`
	// Version is accepted (and ignored) so distribution-style files load.
	Version string `yaml:"version"`
}

// HTTPConfig is the listener.
type HTTPConfig struct {
	Addr string `yaml:"addr"` // host:port; default 127.0.0.1:5000
	// DrainTimeout bounds graceful shutdown: in-flight requests get this
	// long to finish after SIGINT/SIGTERM. Default 30s.
	DrainTimeout time.Duration `yaml:"draintimeout"`
	// Timeouts: readheadertimeout, bodyidletimeout, idletimeout.
	Timeouts httptimeouts.Config `yaml:",inline"`
	// WriteIdleTimeout cuts a blob download whose client takes no bytes
	// for this long, releasing its storage reader. Default 1m.
	WriteIdleTimeout time.Duration `yaml:"writeidletimeout"`
	// TLS: the server speaks only HTTPS; replaced files are picked up.
	TLS tlsfiles.Config `yaml:"tls"`
	// TrustedProxies (the IDC's gateways: addresses or CIDR ranges) may
	// say whom they forward for in X-Forwarded-For; the request log names
	// that client. Nobody else's X-Forwarded-For is believed.
	TrustedProxies []string `yaml:"trustedproxies"`
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

// ClusterConfig places the server in a multi-IDC cluster. Without it the
// server is alone in IDC "default" and registers nowhere.
type ClusterConfig struct {
	IDC string `yaml:"idc"` // this server's IDC (data center); its storage is that IDC's own
	// Advertise is the host:port other machines reach this server at
	// (registered in Consul); default http.addr.
	Advertise string `yaml:"advertise"`
	Consul    struct {
		Addr            string        `yaml:"addr"`            // the local Consul agent, host:port; empty: no registration
		Service         string        `yaml:"service"`         // default gaia-registry
		Token           string        `yaml:"token"`           // ACL token, if the agent needs one
		CheckInterval   time.Duration `yaml:"checkinterval"`   // readiness check period; default 2s
		DeregisterAfter time.Duration `yaml:"deregisterafter"` // critical this long: removed; default 1m
	} `yaml:"consul"`
	// InternalToken is shared by the servers of all IDCs: it lets a peer
	// IDC read blobs (GET and HEAD of a blob: fills, replication) whatever
	// the auth configuration. Two while rotating: the first is sent, both
	// are accepted.
	InternalToken internaltoken.Tokens `yaml:"internaltoken"`
	// Robot is the credential fills and replication present to the peer
	// IDCs' gateways instead of InternalToken (auth.builtin: a system
	// robot with pull on every namespace, docs/operations.md).
	Robot struct {
		Username string `yaml:"username"`
		Password string `yaml:"password"`
	} `yaml:"robot"`
	// SigningKeys are shared with the IDC's gateways: a blob GET or HEAD
	// whose URL a gateway signed with one of them (redirect: blobs) is
	// served without credentials (registry/blobsign). Two while
	// rotating: each is accepted. Empty: signed URLs are refused (401).
	SigningKeys blobsign.Keys `yaml:"signingkeys"`
	// Peers are the other IDCs' gateways: IDC name → base URL.
	Peers map[string]string `yaml:"peers"`
	// TLS.CA verifies the peers' gateways (default: the system's roots).
	TLS struct {
		CA string `yaml:"ca"`
	} `yaml:"tls"`
	// Replicate lists repository prefixes whose new blobs are copied to
	// every peer IDC right after the push ("" matches everything).
	Replicate []string `yaml:"replicate"`
}

// PullThroughConfig bounds pull-through per server: anyone who may pull
// from an on-demand rule's namespace can make the server ask its upstream.
// Zero is the default (pullthrough.Options).
type PullThroughConfig struct {
	MaxFetches      int           `yaml:"maxfetches"`      // fetches by tag or of a known digest under way per rule; default 32
	MaxBlindFetches int           `yaml:"maxblindfetches"` // fetches of digests nothing refers to, per rule; default 8
	MaxWaiting      int           `yaml:"maxwaiting"`      // requests waiting per rule and lane (more: 429); default 128
	NegativeTTL     time.Duration `yaml:"negativettl"`     // an upstream's "not found" is believed this long; default 30s
	NegativeMax     int           `yaml:"negativemax"`     // such answers kept; default 10000
}

// GCConfig is the gc section: online garbage collection (registry/gc).
// Every server runs the collector unless disabled; any number may run it
// at once, as may `gaia-registry gc run` workers.
type GCConfig struct {
	// Disabled turns the collector loop off in this server (reviews still
	// queue; a `gaia-registry gc` worker or another server collects).
	Disabled bool `yaml:"disabled"`
	// ReviewAfter: a queued review is due this long after the reference
	// changed (default 24h; 0 reviews at once).
	ReviewAfter *time.Duration `yaml:"reviewafter"`
	Manifests   struct {
		Untagged string `yaml:"untagged"` // delete (default) or keep
	} `yaml:"manifests"`
	Interval time.Duration `yaml:"interval"` // sleep between passes that found nothing due (default 1m)
	Batch    int           `yaml:"batch"`    // entries claimed at a time (default 100)
	Workers  int           `yaml:"workers"`  // reviews of a batch run concurrently (default 4)
	Rate     float64       `yaml:"rate"`     // reviews and byte deletions started per second at most (default 0: no bound)
	// Nice is the CPU niceness of the collector's threads (default 19, the
	// lowest priority; 0: the server's own): flat out, it takes the CPU
	// the clients leave.
	Nice *int `yaml:"nice"`
	Walk struct {
		Every    time.Duration `yaml:"every"`    // storage walk of the IDC at most this often, cluster-wide (default 24h; set disabled: true to never walk)
		Grace    time.Duration `yaml:"grace"`    // unrecorded objects younger than this stay (default 24h)
		Rate     float64       `yaml:"rate"`     // storage entries examined per second at most (default 200)
		Disabled bool          `yaml:"disabled"` // no storage walk from this server
	} `yaml:"walk"`
}

// ReviewDelay is gc.reviewafter with its default.
func (g GCConfig) ReviewDelay() time.Duration {
	if g.ReviewAfter == nil {
		return 24 * time.Hour
	}
	return *g.ReviewAfter
}

// Niceness is gc.nice with its default.
func (g GCConfig) Niceness() int {
	if g.Nice == nil {
		return 19
	}
	return *g.Nice
}

func (g GCConfig) validate() error {
	switch g.Manifests.Untagged {
	case "", "delete", "keep":
	default:
		return fmt.Errorf("gc.manifests.untagged: %q is not delete or keep", g.Manifests.Untagged)
	}
	if g.Batch < 0 {
		return errors.New("gc.batch: must be positive")
	}
	if n := g.Niceness(); n < 0 || n > 19 {
		return fmt.Errorf("gc.nice: %d is not between 0 and 19 (19: lowest priority)", n)
	}
	if g.Workers < 0 {
		return errors.New("gc.workers: must be positive")
	}
	if g.Rate < 0 {
		return errors.New("gc.rate: must not be negative")
	}
	if g.Walk.Rate < 0 {
		return errors.New("gc.walk.rate: must be positive")
	}
	return nil
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

var sections = []string{"log", "http", "storage", "database", "auth", "cluster", "pullthrough", "gc", "admin", "audit"}

// LoadConfig reads a config file, applies GAIA_* environment overrides,
// fills defaults and validates. Errors name the key at fault.
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
		c.HTTP.Addr = "127.0.0.1:5000"
	}
	if c.HTTP.DrainTimeout == 0 {
		c.HTTP.DrainTimeout = 30 * time.Second
	}
	c.HTTP.Timeouts.ApplyDefaults()
	if c.HTTP.WriteIdleTimeout == 0 {
		c.HTTP.WriteIdleTimeout = httptimeouts.DefaultWriteIdleTimeout
	}
	cl := &c.Cluster
	if cl.IDC == "" {
		cl.IDC = "default"
	}
	if cl.Advertise == "" {
		cl.Advertise = c.HTTP.Addr
	}
	if cl.Consul.Service == "" {
		cl.Consul.Service = "gaia-registry"
	}
	if cl.Consul.CheckInterval == 0 {
		cl.Consul.CheckInterval = 2 * time.Second
	}
	if cl.Consul.DeregisterAfter == 0 {
		cl.Consul.DeregisterAfter = time.Minute
	}
	// PullThrough's unset bounds are filled by pullthrough.New, which
	// documents their defaults.
}

func (c *Config) validate() error {
	if err := c.Log.Check(); err != nil {
		return err
	}
	if err := c.HTTP.Timeouts.Validate("http"); err != nil {
		return err
	}
	if c.HTTP.WriteIdleTimeout < 0 {
		return fmt.Errorf("http.writeidletimeout: must not be negative, got %s", c.HTTP.WriteIdleTimeout)
	}
	if err := c.HTTP.TLS.Check("http.tls"); err != nil {
		return err
	}
	if _, err := forwarded.Parse(c.HTTP.TrustedProxies, "http.trustedproxies"); err != nil {
		return err
	}
	if c.Database.URL == "" {
		return errors.New("database.url: required (PostgreSQL holds all metadata), e.g. postgres://postgres@127.0.0.1:5432/gaia?sslmode=disable")
	}
	if c.Database.MaxConns < 0 {
		return errors.New("database.maxconns: must be positive")
	}
	if err := c.Cluster.validate(); err != nil {
		return err
	}
	for key, v := range map[string]int{"maxfetches": c.PullThrough.MaxFetches, "maxblindfetches": c.PullThrough.MaxBlindFetches, "maxwaiting": c.PullThrough.MaxWaiting, "negativemax": c.PullThrough.NegativeMax} {
		if v < 0 {
			return fmt.Errorf("pullthrough.%s: must be at least 1 (or unset for the default)", key)
		}
	}
	if c.PullThrough.NegativeTTL < 0 {
		return errors.New("pullthrough.negativettl: must not be negative")
	}
	if err := c.GC.validate(); err != nil {
		return err
	}
	if err := c.Audit.validate(); err != nil {
		return err
	}
	_, err := c.StorageConfig()
	return err
}

var idcName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

func (cl *ClusterConfig) validate() error {
	if !idcName.MatchString(cl.IDC) {
		return fmt.Errorf("cluster.idc: %q is not a name of letters, digits, '.', '_' and '-'", cl.IDC)
	}
	host, port, err := net.SplitHostPort(cl.Advertise)
	if err != nil {
		return fmt.Errorf("cluster.advertise: %q: %w", cl.Advertise, err)
	}
	if cl.Consul.Addr != "" && (host == "" || host == "0.0.0.0" || host == "::" || port == "0") {
		return fmt.Errorf("cluster.advertise: %q cannot be registered in Consul: give the address other machines reach this server at", cl.Advertise)
	}
	for idc, u := range cl.Peers {
		if idc == cl.IDC {
			return fmt.Errorf("cluster.peers.%s: a server's own IDC is not its peer", idc)
		}
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return fmt.Errorf("cluster.peers.%s: %q is not an http(s) URL", idc, u)
		}
		if !internaltoken.Safe(pu.Scheme, pu.Host) {
			return fmt.Errorf("cluster.peers.%s: %q: %w; use https://", idc, u, internaltoken.ErrPlainHTTP)
		}
	}
	if err := cl.InternalToken.Check("cluster.internaltoken"); err != nil {
		return err
	}
	if err := blobsign.Check(cl.SigningKeys, "cluster.signingkeys"); err != nil {
		return err
	}
	if (cl.Robot.Username == "") != (cl.Robot.Password == "") {
		return errors.New("cluster.robot: give both username and password, or neither")
	}
	if len(cl.Peers) > 0 && len(cl.InternalToken) == 0 && cl.Robot.Username == "" {
		return errors.New("cluster.internaltoken: required with cluster.peers unless cluster.robot is given (copies from the other IDCs present one of them)")
	}
	if cl.TLS.CA != "" {
		if _, err := tlsfiles.ClientConfig(cl.TLS.CA, "cluster.tls.ca"); err != nil {
			return err
		}
	}
	if len(cl.Replicate) > 0 && len(cl.Peers) == 0 {
		return errors.New("cluster.replicate: needs cluster.peers to replicate to")
	}
	return nil
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
	// Settings of the wrong shape are refused, not ignored: "delete: true"
	// would otherwise leave deletes off without a word.
	if v, ok := c.Storage["delete"]; ok {
		d, ok := v.(map[string]any)
		if !ok {
			return nil, errors.New("storage.delete: must be a mapping (enabled: true)")
		}
		if e, ok := d["enabled"]; ok {
			if sc.Delete, ok = e.(bool); !ok {
				return nil, fmt.Errorf("storage.delete.enabled: %v is not true or false", e)
			}
		}
	}
	if v, ok := c.Storage["maintenance"]; ok {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, errors.New("storage.maintenance: must be a mapping")
		}
		if v, ok := m["uploadpurging"]; ok {
			up, ok := v.(map[string]any)
			if !ok {
				return nil, errors.New("storage.maintenance.uploadpurging: must be a mapping")
			}
			if v, ok := up["enabled"]; ok {
				en, ok := v.(bool)
				if !ok {
					return nil, fmt.Errorf("storage.maintenance.uploadpurging.enabled: %v is not true or false", v)
				}
				if !en {
					sc.UploadScan = 0
				}
			}
			for key, dst := range map[string]*time.Duration{"age": &sc.UploadAge, "interval": &sc.UploadScan} {
				v, ok := up[key]
				if !ok || (key == "interval" && sc.UploadScan == 0) {
					continue
				}
				s, _ := v.(string)
				d, err := time.ParseDuration(s)
				if err != nil || d <= 0 {
					return nil, fmt.Errorf("storage.maintenance.uploadpurging.%s: %v is not a positive duration such as 168h", key, v)
				}
				*dst = d
			}
		}
	}
	return sc, nil
}
