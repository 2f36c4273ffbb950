// Package ldap authenticates users against an LDAP directory and reads
// their groups: search the user with a service account, then bind as the
// user's DN with the password given, on a connection of its own.
//
// Passwords (the users' and the service account's) are never logged nor
// put in an error. A wrong password or an unknown user is ErrBadCredentials;
// every other failure (directory unreachable, a timeout, an ambiguous
// user) is a server error, so that an outage never reads as "wrong
// password".
package ldap

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sort"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gaia-registry/gaia/registry/tlsfiles"
)

// ErrBadCredentials: a wrong password, an empty one, or an unknown user.
var ErrBadCredentials = errors.New("ldap: bad credentials")

// ErrNoSuchUser is Groups' answer for a user the directory does not have
// (any more).
var ErrNoSuchUser = errors.New("ldap: no such user")

// Entry is an authenticated user.
type Entry struct {
	DN     string
	Groups []string // the groupattr of each group they are in, sorted
}

// Directory is an LDAP directory client, safe for concurrent use. It is a
// prometheus.Collector of its own metrics.
type Directory struct {
	cfg      Config
	password string // the service account's
	tls      *tls.Config

	// sem bounds the service-bound connections in use; idle holds those
	// not in use (never more than sem's capacity).
	sem  chan struct{}
	idle chan *goldap.Conn

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// New validates cfg, reads its files and returns a Directory. It does not
// contact the server: a directory that is down at start-up fails the
// logins, not the registry.
func New(cfg Config) (*Directory, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	pw, err := cfg.bindPassword()
	if err != nil {
		return nil, err
	}
	d := &Directory{
		cfg: cfg, password: pw,
		sem:  make(chan struct{}, cfg.PoolSize),
		idle: make(chan *goldap.Conn, cfg.PoolSize),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gaia_registry_ldap_requests_total",
			Help: "LDAP directory calls by operation (authenticate, groups, exists) and outcome (ok, bad_credentials, error).",
		}, []string{"operation", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gaia_registry_ldap_request_duration_seconds",
			Help:    "LDAP directory call latency by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
		}, []string{"operation"}),
	}
	if u := cfg.URL; len(u) >= 6 && u[:6] == "ldaps:" {
		if d.tls, err = tlsfiles.ClientConfig(cfg.CAFile, Key+".cafile"); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// Describe implements prometheus.Collector.
func (d *Directory) Describe(ch chan<- *prometheus.Desc) {
	d.requests.Describe(ch)
	d.duration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (d *Directory) Collect(ch chan<- prometheus.Metric) {
	d.requests.Collect(ch)
	d.duration.Collect(ch)
}

// Close closes the idle connections.
func (d *Directory) Close() error {
	for {
		select {
		case c := <-d.idle:
			c.Close()
		default:
			return nil
		}
	}
}

// observe counts a call that began at start and ended with *errp
// (deferred: the pointer is read when the call returns).
func (d *Directory) observe(op string, start time.Time, errp *error) {
	err := *errp
	outcome := "ok"
	switch {
	case errors.Is(err, ErrBadCredentials):
		outcome = "bad_credentials"
	case errors.Is(err, ErrNoSuchUser):
		outcome = "no_such_user"
	case err != nil:
		outcome = "error"
	}
	d.requests.WithLabelValues(op, outcome).Inc()
	d.duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// Authenticate checks user's password and returns their DN and groups.
func (d *Directory) Authenticate(ctx context.Context, user, password string) (e Entry, err error) {
	defer d.observe("authenticate", time.Now(), &err)
	// An empty password makes an "unauthenticated bind", which servers
	// answer with success (RFC 4513 5.1.2): never send one.
	if user == "" || password == "" {
		return Entry{}, ErrBadCredentials
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	dn, err := d.findUser(ctx, user)
	if errors.Is(err, ErrNoSuchUser) {
		return Entry{}, ErrBadCredentials
	}
	if err != nil {
		return Entry{}, err
	}
	// The user's bind on a connection of its own: a pooled one stays
	// bound as the service account.
	c, err := d.dial(ctx)
	if err != nil {
		return Entry{}, err
	}
	err = d.do(ctx, c, func() error { return c.Bind(dn, password) })
	c.Close()
	if goldap.IsErrorAnyOf(err, goldap.LDAPResultInvalidCredentials, goldap.LDAPResultInappropriateAuthentication) {
		return Entry{}, ErrBadCredentials
	}
	if err != nil {
		return Entry{}, fmt.Errorf("ldap: binding as %s: %w", dn, err)
	}
	groups, err := d.groupsOf(ctx, dn, user)
	if err != nil {
		return Entry{}, err
	}
	return Entry{DN: dn, Groups: groups}, nil
}

// Groups returns the groups user is in now (ErrNoSuchUser if the directory
// has no such user).
func (d *Directory) Groups(ctx context.Context, user string) (groups []string, err error) {
	defer d.observe("groups", time.Now(), &err)
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	dn, err := d.findUser(ctx, user)
	if err != nil {
		return nil, err
	}
	return d.groupsOf(ctx, dn, user)
}

// Exists reports whether the directory has user.
func (d *Directory) Exists(ctx context.Context, user string) (ok bool, err error) {
	defer d.observe("exists", time.Now(), &err)
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	_, err = d.findUser(ctx, user)
	if errors.Is(err, ErrNoSuchUser) {
		return false, nil
	}
	return err == nil, err
}

// findUser returns user's DN, or ErrNoSuchUser.
func (d *Directory) findUser(ctx context.Context, user string) (string, error) {
	if user == "" {
		return "", ErrNoSuchUser
	}
	req := goldap.NewSearchRequest(d.cfg.UserBase, goldap.ScopeWholeSubtree, goldap.NeverDerefAliases,
		2, 0, false, fill(d.cfg.UserFilter, user, user), []string{"1.1"}, nil)
	res, err := d.search(ctx, req)
	if goldap.IsErrorAnyOf(err, goldap.LDAPResultNoSuchObject) {
		return "", ErrNoSuchUser // userbase itself is missing: nobody is in it
	}
	if goldap.IsErrorAnyOf(err, goldap.LDAPResultSizeLimitExceeded) || (err == nil && len(res.Entries) > 1) {
		return "", fmt.Errorf("ldap: %s.userfilter matches more than one entry for user %q", Key, user)
	}
	if err != nil {
		return "", fmt.Errorf("ldap: searching user %q: %w", user, err)
	}
	if len(res.Entries) == 0 {
		return "", ErrNoSuchUser
	}
	return res.Entries[0].DN, nil
}

// groupsOf returns the names of the groups whose filter matches the user.
func (d *Directory) groupsOf(ctx context.Context, dn, user string) ([]string, error) {
	if d.cfg.GroupBase == "" {
		return nil, nil
	}
	req := goldap.NewSearchRequest(d.cfg.GroupBase, goldap.ScopeWholeSubtree, goldap.NeverDerefAliases,
		0, 0, false, fill(d.cfg.GroupFilter, dn, user), []string{d.cfg.GroupAttr}, nil)
	res, err := d.search(ctx, req)
	if goldap.IsErrorAnyOf(err, goldap.LDAPResultNoSuchObject) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ldap: searching the groups of %s: %w", dn, err)
	}
	var groups []string
	for _, e := range res.Entries {
		if v := e.GetAttributeValue(d.cfg.GroupAttr); v != "" {
			groups = append(groups, v)
		}
	}
	sort.Strings(groups)
	return groups, nil
}

// search runs req on a service-bound connection. A pooled connection
// that turns out broken (the server restarted, or closed it idle) is
// dropped and the search tried once more on a new one.
func (d *Directory) search(ctx context.Context, req *goldap.SearchRequest) (*goldap.SearchResult, error) {
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("ldap: waiting for a connection: %w", ctx.Err())
	}
	defer func() { <-d.sem }()
	for attempt := 0; ; attempt++ {
		// The retry dials: the idle connections are likely cut too (a
		// restarted server cuts them all), whether or not their readers
		// have noticed yet.
		c, reused, err := d.serviceConn(ctx, attempt == 0)
		if err != nil {
			return nil, err
		}
		var res *goldap.SearchResult
		err = d.do(ctx, c, func() (err error) { res, err = c.Search(req); return err })
		if err == nil || isResult(err) {
			select {
			case d.idle <- c: // a holder of sem always finds room
			default:
				c.Close()
			}
			return res, err
		}
		c.Close()
		if !reused || attempt > 0 || ctx.Err() != nil {
			return nil, err
		}
		d.Close()
	}
}

// isResult: err is the server's answer to the operation (a result code),
// not a failure of the connection, which therefore stays usable.
func isResult(err error) bool {
	var le *goldap.Error
	return errors.As(err, &le) && le.ResultCode < goldap.ErrorNetwork && le.ResultCode != goldap.LDAPResultTimeLimitExceeded
}

// serviceConn returns an idle connection (if reuse), or dials and binds
// a new one. The caller holds a slot of sem.
func (d *Directory) serviceConn(ctx context.Context, reuse bool) (*goldap.Conn, bool, error) {
	for reuse {
		select {
		case c := <-d.idle:
			if c.IsClosing() {
				c.Close()
				continue
			}
			return c, true, nil
		default:
		}
		break
	}
	c, err := d.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	if d.cfg.BindDN != "" {
		err := d.do(ctx, c, func() error { return c.Bind(d.cfg.BindDN, d.password) })
		if err != nil {
			c.Close()
			// Never the password; a refused service bind is a server
			// error (a misconfiguration), not the user's bad credentials.
			return nil, false, fmt.Errorf("ldap: service bind as %s (%s.binddn): %w", d.cfg.BindDN, Key, err)
		}
	}
	return c, false, nil
}

// dial connects to the server within ctx.
func (d *Directory) dial(ctx context.Context) (*goldap.Conn, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(d.cfg.Timeout)
	}
	opts := []goldap.DialOpt{goldap.DialWithDialer(&net.Dialer{Deadline: dl})}
	if d.tls != nil {
		opts = append(opts, goldap.DialWithTLSConfig(d.tls))
	}
	c, err := goldap.DialURL(d.cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("ldap: connecting to %s: %w", d.cfg.URL, err)
	}
	c.SetTimeout(d.cfg.Timeout)
	return c, nil
}

// do runs op on c, closing c if ctx ends first (go-ldap's operations take
// no context; closing makes the operation return).
func (d *Directory) do(ctx context.Context, c *goldap.Conn, op func() error) error {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	err := op()
	if !stop() {
		return fmt.Errorf("ldap: %w", context.Cause(ctx))
	}
	return err
}
