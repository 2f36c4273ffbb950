package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/gaia-registry/gaia/registry/auth"
	"github.com/gaia-registry/gaia/registry/blobsign"
	"github.com/gaia-registry/gaia/registry/forwarded"
	"github.com/gaia-registry/gaia/registry/httptimeouts"
	"github.com/gaia-registry/gaia/registry/logconfig"
	"github.com/gaia-registry/gaia/registry/tlsfiles"
	"github.com/gaia-registry/gaia/registry/yamlconfig"
)

// Config is gaia-gateway's YAML configuration.
type Config struct {
	Log  logconfig.Config `yaml:"log"`
	HTTP struct {
		Addr         string              `yaml:"addr"`         // default 127.0.0.1:6000
		DrainTimeout time.Duration       `yaml:"draintimeout"` // default 30s
		Timeouts     httptimeouts.Config `yaml:",inline"`      // readheadertimeout, bodyidletimeout, idletimeout
		// TLS: clients get HTTPS only; replaced files are picked up.
		TLS tlsfiles.Config `yaml:"tls"`
		// TrustedProxies (a load balancer in front: addresses or CIDR
		// ranges) may say whom they forward for; from anyone else an
		// X-Forwarded-For is replaced by the client's own address.
		TrustedProxies []string `yaml:"trustedproxies"`
	} `yaml:"http"`
	// Servers: how the gateway talks to the registry servers, which say
	// in Consul (Meta.scheme) whether they speak https.
	Servers struct {
		TLS struct {
			CA string `yaml:"ca"` // verifies their certificates (default: the system's roots)
		} `yaml:"tls"`
	} `yaml:"servers"`
	// IDC is the data center this gateway serves: it sends requests to
	// that IDC's registry servers only (unless Failover says otherwise).
	IDC    string `yaml:"idc"`
	Consul struct {
		Addr    string `yaml:"addr"`    // the local Consul agent; required
		Service string `yaml:"service"` // default gaia-registry
		Token   string `yaml:"token"`
	} `yaml:"consul"`
	// Failover: "local" (default) answers 503 when the IDC has no healthy
	// server; "any" then uses the other IDCs' servers.
	Failover string `yaml:"failover"`
	// Retries: how many other servers a request is retried on when it
	// failed before any response byte came back and its body was never
	// sent (default 2).
	Retries *int `yaml:"retries"`
	Eject   struct {
		Failures int           `yaml:"failures"` // consecutive failures that eject a server (default 3)
		Duration time.Duration `yaml:"duration"` // for this long (default 10s)
	} `yaml:"eject"`
	// Replay: the bodies of idempotent requests (manifest PUTs, up to 4
	// MiB each) are read before they are sent, to be replayed on another
	// server; MaxBytes bounds the bytes so held across all requests at once
	// (default 64 MiB; 0: none). Beyond it a request streams through
	// without a replay copy.
	Replay struct {
		MaxBytes *int64 `yaml:"maxbytes"`
	} `yaml:"replay"`

	// Redirect: "blobs" answers a blob GET with a 307 to a URL on one of
	// the IDC's servers, signed with Signing.Keys, so the bytes skip the
	// gateway; "off" (default) streams them through it. Clients must be
	// able to reach the servers' advertised addresses.
	Redirect string `yaml:"redirect"`
	Signing  struct {
		// Keys: the servers' cluster.signingkeys; the first signs. Two
		// while rotating (docs/operations.md).
		Keys blobsign.Keys `yaml:"keys"`
		// Expiry: how long a signed URL is good for (default 5m).
		Expiry time.Duration `yaml:"expiry"`
	} `yaml:"signing"`
	// Auth: the servers' auth section. The gateway checks a caller's pull
	// right itself before it redirects or answers from its cache. With
	// neither htpasswd nor token, None must say the servers have no auth
	// either (so that a forgotten section cannot open the registry).
	Auth struct {
		auth.Config `yaml:",inline"`
		None        bool `yaml:"none"`
	} `yaml:"auth"`
	// Cache: manifests by digest and blob HEADs by digest, kept in memory
	// up to MaxBytes (0, the default: no cache). Needs Database.URL.
	Cache struct {
		MaxBytes int64 `yaml:"maxbytes"`
	} `yaml:"cache"`
	// Database: the servers' PostgreSQL, where the gateway LISTENs for
	// deletions to drop cached entries.
	Database struct {
		URL string `yaml:"url"`
	} `yaml:"database"`

	trusted   forwarded.Trusted // http.trustedproxies, parsed
	serverTLS *tls.Config       // servers.tls, loaded
}

// defaultReplayBytes: 16 bodies of the largest manifest, thousands of
// typical ones.
const defaultReplayBytes = 64 << 20

const envPrefix = "GAIA_GATEWAY_"

// LoadConfig reads the file, applies GAIA_GATEWAY_* overrides
// (GAIA_GATEWAY_HTTP_ADDR, GAIA_GATEWAY_IDC, ...), fills defaults and
// validates.
func LoadConfig(path string, environ []string) (*Config, error) {
	var c Config
	if err := yamlconfig.Load(path, environ, envPrefix,
		[]string{"log", "http", "servers", "idc", "consul", "failover", "retries", "eject", "replay",
			"redirect", "signing", "auth", "cache", "database"}, &c); err != nil {
		return nil, err
	}
	if c.HTTP.Addr == "" {
		c.HTTP.Addr = "127.0.0.1:6000"
	}
	if c.HTTP.DrainTimeout == 0 {
		c.HTTP.DrainTimeout = 30 * time.Second
	}
	c.HTTP.Timeouts.ApplyDefaults()
	if c.Consul.Service == "" {
		c.Consul.Service = "gaia-registry"
	}
	if c.Failover == "" {
		c.Failover = "local"
	}
	if c.Retries == nil {
		two := 2
		c.Retries = &two
	}
	if c.Eject.Failures == 0 {
		c.Eject.Failures = 3
	}
	if c.Eject.Duration == 0 {
		c.Eject.Duration = 10 * time.Second
	}
	if c.Replay.MaxBytes == nil {
		def := int64(defaultReplayBytes)
		c.Replay.MaxBytes = &def
	}
	if c.Redirect == "" {
		c.Redirect = "off"
	}
	if c.Signing.Expiry == 0 {
		c.Signing.Expiry = 5 * time.Minute
	}
	err := func() error {
		authed := c.Auth.Htpasswd != nil || c.Auth.Token != nil || c.Auth.Builtin != nil
		switch {
		case c.Redirect != "off" && c.Redirect != "blobs" && c.Redirect != "blobs+uploads":
			return fmt.Errorf("redirect: %q is not blobs, blobs+uploads or off", c.Redirect)
		case c.Redirect != "off" && len(c.Signing.Keys) == 0:
			return errors.New("signing.keys: required with redirect: blobs (the servers' cluster.signingkeys)")
		case c.Signing.Expiry < 0:
			return errors.New("signing.expiry: must be positive")
		case c.Cache.MaxBytes < 0:
			return errors.New("cache.maxbytes: must not be negative")
		case c.Cache.MaxBytes > 0 && c.Database.URL == "":
			return errors.New("database.url: required with cache.maxbytes (deletions are heard from PostgreSQL)")
		case authed && c.Auth.None:
			return errors.New("auth.none: set, but so is auth.htpasswd, auth.token or auth.builtin")
		case c.Auth.Builtin != nil && c.Database.URL == "":
			return errors.New("database.url: required with auth.builtin (the gateway checks tokens against the servers' access model)")
		case (c.Redirect != "off" || c.Cache.MaxBytes > 0) && !authed && !c.Auth.None:
			return errors.New("auth: redirect: blobs and cache check callers' pull right at the gateway: give it the servers' auth section (htpasswd, token or builtin), or auth.none: true if the servers have no auth")
		}
		if err := blobsign.Check(c.Signing.Keys, "signing.keys"); err != nil {
			return err
		}
		if authed {
			if err := c.Auth.Config.Validate(); err != nil {
				return err
			}
		}
		switch {
		case c.IDC == "":
			return errors.New("idc: required (the IDC whose registry servers this gateway uses)")
		case c.Consul.Addr == "":
			return errors.New("consul.addr: required (the Consul agent to discover registry servers from)")
		case c.Failover != "local" && c.Failover != "any":
			return fmt.Errorf("failover: %q is not local or any", c.Failover)
		case *c.Retries < 0:
			return errors.New("retries: must not be negative")
		case c.Eject.Failures < 0 || c.Eject.Duration < 0:
			return errors.New("eject: failures and duration must not be negative")
		case *c.Replay.MaxBytes < 0:
			return errors.New("replay.maxbytes: must not be negative")
		}
		if err := c.HTTP.Timeouts.Validate("http"); err != nil {
			return err
		}
		if err := c.HTTP.TLS.Check("http.tls"); err != nil {
			return err
		}
		var err error
		if c.trusted, err = forwarded.Parse(c.HTTP.TrustedProxies, "http.trustedproxies"); err != nil {
			return err
		}
		if c.serverTLS, err = tlsfiles.ClientConfig(c.Servers.TLS.CA, "servers.tls.ca"); err != nil {
			return err
		}
		return c.Log.Check()
	}()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}
