package ldap

import (
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
)

// Key is where Config sits in gaia-registry's YAML; errors name their key
// under it.
const Key = "auth.builtin.ldap"

// Defaults.
const (
	DefaultUserFilter  = "(uid=%s)"
	DefaultGroupFilter = "(|(member=%s)(uniqueMember=%s))"
	DefaultGroupAttr   = "cn"
	DefaultTimeout     = 5 * time.Second
	DefaultPoolSize    = 4
)

// Config is the `auth.builtin.ldap` section.
//
// In UserFilter, %s is the user name; in GroupFilter, %s is the user's DN
// and %u the user name (for posixGroup's memberUid). Both are escaped as
// filter values (RFC 4515) before they are put in.
type Config struct {
	URL              string        `yaml:"url"`              // ldap://host:port or ldaps://host:port
	CAFile           string        `yaml:"cafile"`           // ldaps: PEM bundle the server is verified against (default: system roots)
	BindDN           string        `yaml:"binddn"`           // the service account searches as; empty: anonymous searches
	BindPassword     string        `yaml:"bindpassword"`     // its password, or
	BindPasswordFile string        `yaml:"bindpasswordfile"` // a file holding it (one trailing newline ignored)
	UserBase         string        `yaml:"userbase"`         // where users are searched (subtree)
	UserFilter       string        `yaml:"userfilter"`       // default (uid=%s)
	GroupBase        string        `yaml:"groupbase"`        // where groups are searched (subtree); empty: no groups
	GroupFilter      string        `yaml:"groupfilter"`      // default (|(member=%s)(uniqueMember=%s))
	GroupAttr        string        `yaml:"groupattr"`        // the group's name; default cn
	Timeout          time.Duration `yaml:"timeout"`          // bound of each call (dial included); default 5s
	PoolSize         int           `yaml:"poolsize"`         // service-bound connections at most; default 4
}

// withDefaults fills the keys left empty.
func (c Config) withDefaults() Config {
	if c.UserFilter == "" {
		c.UserFilter = DefaultUserFilter
	}
	if c.GroupFilter == "" {
		c.GroupFilter = DefaultGroupFilter
	}
	if c.GroupAttr == "" {
		c.GroupAttr = DefaultGroupAttr
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.PoolSize == 0 {
		c.PoolSize = DefaultPoolSize
	}
	return c
}

func keyErr(key, format string, a ...any) error {
	return fmt.Errorf("%s.%s: %s", Key, key, fmt.Sprintf(format, a...))
}

// Validate checks the section (defaults applied); an error names its key.
// It does not read bindpasswordfile or cafile: New does.
func (c Config) Validate() error {
	c = c.withDefaults()
	u, err := url.Parse(c.URL)
	switch {
	case c.URL == "":
		return keyErr("url", "required")
	case err != nil:
		return keyErr("url", "%v", err)
	case u.Scheme != "ldap" && u.Scheme != "ldaps":
		return keyErr("url", "%q: the scheme must be ldap or ldaps", c.URL)
	case u.Host == "":
		return keyErr("url", "%q: no host", c.URL)
	}
	if c.CAFile != "" && u.Scheme != "ldaps" {
		return keyErr("cafile", "only with an ldaps:// url")
	}
	if c.BindPassword != "" && c.BindPasswordFile != "" {
		return keyErr("bindpassword", "set bindpassword or bindpasswordfile, not both")
	}
	if c.BindDN == "" && (c.BindPassword != "" || c.BindPasswordFile != "") {
		return keyErr("binddn", "required with a bind password")
	}
	if c.BindDN != "" && c.BindPassword == "" && c.BindPasswordFile == "" {
		// An empty password would be an unauthenticated bind, which
		// servers accept as anonymous.
		return keyErr("bindpassword", "required with binddn (or bindpasswordfile)")
	}
	if c.BindDN != "" {
		if _, err := goldap.ParseDN(c.BindDN); err != nil {
			return keyErr("binddn", "%v", err)
		}
	}
	if c.UserBase == "" {
		return keyErr("userbase", "required")
	}
	if _, err := goldap.ParseDN(c.UserBase); err != nil {
		return keyErr("userbase", "%v", err)
	}
	if !strings.Contains(c.UserFilter, "%s") {
		return keyErr("userfilter", "%q has no %%s for the user name", c.UserFilter)
	}
	if _, err := goldap.CompileFilter(fill(c.UserFilter, "x", "x")); err != nil {
		return keyErr("userfilter", "%q: %v", c.UserFilter, err)
	}
	if c.GroupBase != "" {
		if _, err := goldap.ParseDN(c.GroupBase); err != nil {
			return keyErr("groupbase", "%v", err)
		}
		if !strings.Contains(c.GroupFilter, "%s") && !strings.Contains(c.GroupFilter, "%u") {
			return keyErr("groupfilter", "%q has neither %%s (the user's DN) nor %%u (the user name)", c.GroupFilter)
		}
		if _, err := goldap.CompileFilter(fill(c.GroupFilter, "x", "x")); err != nil {
			return keyErr("groupfilter", "%q: %v", c.GroupFilter, err)
		}
	}
	if c.Timeout < 0 {
		return keyErr("timeout", "must be positive")
	}
	if c.PoolSize < 0 {
		return keyErr("poolsize", "must be positive")
	}
	return nil
}

// fill puts the escaped DN (%s) and user name (%u) into a filter, in one
// pass, so a value is never expanded again.
func fill(filter, dn, user string) string {
	return strings.NewReplacer("%s", goldap.EscapeFilter(dn), "%u", goldap.EscapeFilter(user)).Replace(filter)
}

// bindPassword is the service account's password, read from its file
// when configured so.
func (c Config) bindPassword() (string, error) {
	if c.BindPasswordFile == "" {
		return c.BindPassword, nil
	}
	b, err := os.ReadFile(c.BindPasswordFile)
	if err != nil {
		// The path, never the content.
		return "", keyErr("bindpasswordfile", "%v", err)
	}
	p := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if p == "" {
		return "", keyErr("bindpasswordfile", "%s is empty", c.BindPasswordFile)
	}
	return p, nil
}
