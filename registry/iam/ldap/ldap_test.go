package ldap_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gaia-registry/gaia/registry/iam/ldap"
	"github.com/gaia-registry/gaia/registry/iam/ldap/ldaptest"
)

func open(t *testing.T, cfg ldap.Config) *ldap.Directory {
	t.Helper()
	d, err := ldap.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestAuthenticate(t *testing.T) {
	dir := ldaptest.New(t)
	aliceDN := dir.AddUser("alice", "alice-pw")
	dir.AddUser("bob", "bob-pw")
	dir.AddGroup("devs", "alice")
	dir.AddGroup("ops", "alice", "bob")
	dir.AddGroup("empty")
	d := open(t, dir.Config)
	ctx := context.Background()

	e, err := d.Authenticate(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatalf("alice's login: %v", err)
	}
	if !sameDN(t, e.DN, aliceDN) || !reflect.DeepEqual(e.Groups, []string{"devs", "ops"}) {
		t.Fatalf("alice's login gave %+v, want DN %s in devs and ops", e, aliceDN)
	}
	e, err = d.Authenticate(ctx, "bob", "bob-pw")
	if err != nil || !reflect.DeepEqual(e.Groups, []string{"ops"}) {
		t.Fatalf("bob's login: %+v, %v; want groups [ops]", e, err)
	}

	for _, c := range []struct{ name, user, password string }{
		{"wrong password", "alice", "bob-pw"},
		{"unknown user", "carol", "alice-pw"},
		// An unauthenticated bind (a DN, no password) succeeds on the
		// server: it must never be sent.
		{"empty password", "alice", ""},
		{"empty user", "", "alice-pw"},
		// A filter wildcard must not find alice.
		{"wildcard user", "al*", "alice-pw"},
		{"wildcard only", "*", "alice-pw"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, err := d.Authenticate(ctx, c.user, c.password)
			if !errors.Is(err, ldap.ErrBadCredentials) {
				t.Fatalf("got %+v, %v; want ErrBadCredentials", e, err)
			}
		})
	}
	if n := (requests(t, d, "authenticate", "bad_credentials")); n != 6 {
		t.Fatalf("gaia_registry_ldap_requests_total{authenticate,bad_credentials} = %v, want 6", n)
	}
	if n := (requests(t, d, "authenticate", "ok")); n != 2 {
		t.Fatalf("gaia_registry_ldap_requests_total{authenticate,ok} = %v, want 2", n)
	}
}

// sameDN: a and b name the same entry (the server may escape a DN
// otherwise than the client did).
func sameDN(t *testing.T, a, b string) bool {
	t.Helper()
	da, err := goldap.ParseDN(a)
	if err != nil {
		t.Fatalf("%q: %v", a, err)
	}
	db, err := goldap.ParseDN(b)
	if err != nil {
		t.Fatalf("%q: %v", b, err)
	}
	return da.EqualFold(db)
}

// requests reads gaia_registry_ldap_requests_total{operation=op,outcome}
// from the Directory's Collector.
func requests(t *testing.T, d *ldap.Directory, op, outcome string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(d)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "gaia_registry_ldap_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["operation"] == op && l["outcome"] == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestFilterEscaping: a user name holding filter syntax is a literal name:
// it neither logs in as another user nor breaks its owner's login.
func TestFilterEscaping(t *testing.T) {
	dir := ldaptest.New(t)
	dir.AddUser("alice", "alice-pw")
	special := "a*)(uid=*"
	specialDN := dir.AddUser(special, "special-pw")
	cfg := dir.Config
	cfg.UserFilter = "(&(objectClass=inetOrgPerson)(uid=%s))"
	d := open(t, cfg)
	ctx := context.Background()

	if e, err := d.Authenticate(ctx, special, "alice-pw"); !errors.Is(err, ldap.ErrBadCredentials) {
		t.Fatalf("%q with alice's password: %+v, %v; want ErrBadCredentials", special, e, err)
	}
	e, err := d.Authenticate(ctx, special, "special-pw")
	if err != nil || !sameDN(t, e.DN, specialDN) {
		t.Fatalf("%q's own login: %+v, %v; want DN %s", special, e, err, specialDN)
	}
	if e, err := d.Authenticate(ctx, "al*", "alice-pw"); !errors.Is(err, ldap.ErrBadCredentials) {
		t.Fatalf("al* with alice's password: %+v, %v; want ErrBadCredentials", e, err)
	}
}

func TestGroupsFollowTheDirectory(t *testing.T) {
	dir := ldaptest.New(t)
	dir.AddUser("alice", "alice-pw")
	dir.AddUser("bob", "bob-pw")
	dir.AddGroup("devs", "alice")
	dir.AddGroup("ops", "bob")
	d := open(t, dir.Config)
	ctx := context.Background()

	groups := func(user string) []string {
		t.Helper()
		g, err := d.Groups(ctx, user)
		if err != nil {
			t.Fatalf("Groups(%s): %v", user, err)
		}
		return g
	}
	if g := groups("alice"); !reflect.DeepEqual(g, []string{"devs"}) {
		t.Fatalf("alice's groups: %v, want [devs]", g)
	}
	dir.AddMember("ops", "alice")
	if g := groups("alice"); !reflect.DeepEqual(g, []string{"devs", "ops"}) {
		t.Fatalf("alice's groups after joining ops: %v, want [devs ops]", g)
	}
	dir.RemoveMember("devs", "alice") // her last member: the group stays
	if g := groups("alice"); !reflect.DeepEqual(g, []string{"ops"}) {
		t.Fatalf("alice's groups after leaving devs: %v, want [ops]", g)
	}
	dir.RemoveMember("ops", "alice")
	if g := groups("alice"); len(g) != 0 {
		t.Fatalf("alice's groups after leaving both: %v, want none", g)
	}

	if ok, err := d.Exists(ctx, "bob"); !ok || err != nil {
		t.Fatalf("Exists(bob) = %v, %v; want true", ok, err)
	}
	dir.DeleteUser("bob")
	if ok, err := d.Exists(ctx, "bob"); ok || err != nil {
		t.Fatalf("Exists(bob) after deleting him = %v, %v; want false", ok, err)
	}
	if g, err := d.Groups(ctx, "bob"); !errors.Is(err, ldap.ErrNoSuchUser) {
		t.Fatalf("Groups(bob) after deleting him = %v, %v; want ErrNoSuchUser", g, err)
	}
	if e, err := d.Authenticate(ctx, "bob", "bob-pw"); !errors.Is(err, ldap.ErrBadCredentials) {
		t.Fatalf("bob's login after deleting him = %+v, %v; want ErrBadCredentials", e, err)
	}
}

// TestMemberUidGroups: posixGroup-style groups name members by user name
// (%u in groupfilter).
func TestMemberUidGroups(t *testing.T) {
	dir := ldaptest.New(t)
	dir.AddUser("alice", "alice-pw")
	dir.AddUser("bob", "bob-pw")
	dir.AddPosixGroup("builders", 5001, "alice", "bob")
	dir.AddPosixGroup("admins", 5002, "bob")
	cfg := dir.Config
	cfg.GroupFilter = "(&(objectClass=posixGroup)(memberUid=%u))"
	d := open(t, cfg)
	e, err := d.Authenticate(context.Background(), "alice", "alice-pw")
	if err != nil || !reflect.DeepEqual(e.Groups, []string{"builders"}) {
		t.Fatalf("alice's login: %+v, %v; want groups [builders]", e, err)
	}
}

// TestServerErrors: failures of the directory or of the service account
// are errors, never bad credentials, and never show a password.
func TestServerErrors(t *testing.T) {
	dir := ldaptest.New(t)
	dir.AddUser("alice", "alice-pw")
	ctx := context.Background()

	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	down := dir.Config
	down.URL = "ldap://" + closed

	// A server that accepts and never answers.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	hung := dir.Config
	hung.URL = "ldap://" + silent.Addr().String()
	hung.Timeout = 300 * time.Millisecond

	badBind := dir.Config
	badBind.BindPassword = "not-the-admin-password"

	for _, c := range []struct {
		name string
		cfg  ldap.Config
	}{{"unreachable", down}, {"silent", hung}, {"service bind refused", badBind}} {
		t.Run(c.name, func(t *testing.T) {
			d := open(t, c.cfg)
			_, err := d.Authenticate(ctx, "alice", "alice-pw")
			if err == nil || errors.Is(err, ldap.ErrBadCredentials) {
				t.Fatalf("Authenticate: %v; want a server error", err)
			}
			for _, secret := range []string{"alice-pw", c.cfg.BindPassword} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("the error shows a password: %v", err)
				}
			}
			if _, err := d.Groups(ctx, "alice"); err == nil || errors.Is(err, ldap.ErrNoSuchUser) {
				t.Fatalf("Groups: %v; want a server error", err)
			}
			if ok, err := d.Exists(ctx, "alice"); err == nil {
				t.Fatalf("Exists: %v, nil; want a server error", ok)
			}
			if n := (requests(t, d, "authenticate", "error")); n != 1 {
				t.Fatalf("gaia_registry_ldap_requests_total{authenticate,error} = %v, want 1", n)
			}
		})
	}
}

// TestPool: service-bound connections are reused, at most poolsize of
// them, and one the server cut is replaced.
func TestPool(t *testing.T) {
	dir := ldaptest.New(t)
	dir.AddUser("alice", "alice-pw")
	dir.AddGroup("devs", "alice")
	p := newProxy(t, strings.TrimPrefix(dir.Config.URL, "ldap://"))
	cfg := dir.Config
	cfg.URL = "ldap://" + p.addr
	cfg.PoolSize = 2
	d := open(t, cfg)
	ctx := context.Background()

	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := d.Groups(ctx, "alice"); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Groups: %v", err)
	}
	if n := p.dials(); n < 1 || n > 2 {
		t.Fatalf("40 concurrent calls with poolsize 2 opened %d connections, want 1 or 2", n)
	}

	// The server (here the proxy) drops every connection: the next call
	// dials again instead of failing.
	before := p.dials()
	p.cut()
	if g, err := d.Groups(ctx, "alice"); err != nil || !reflect.DeepEqual(g, []string{"devs"}) {
		t.Fatalf("Groups after the connections were cut: %v, %v", g, err)
	}
	if p.dials() == before {
		t.Fatal("no new connection after the old ones were cut")
	}
}

// TestUserBindHangs: a directory that stops answering during the user's
// bind (after the search found them) fails the login as a server error,
// not as a wrong password.
func TestUserBindHangs(t *testing.T) {
	dir := ldaptest.New(t)
	dir.AddUser("alice", "alice-pw")
	p := newProxy(t, strings.TrimPrefix(dir.Config.URL, "ldap://"))
	cfg := dir.Config
	cfg.URL = "ldap://" + p.addr
	cfg.Timeout = 300 * time.Millisecond
	d := open(t, cfg)
	ctx := context.Background()
	if ok, err := d.Exists(ctx, "alice"); !ok || err != nil {
		t.Fatalf("Exists(alice) = %v, %v", ok, err) // the service connection is pooled now
	}
	p.hangNew() // the user's bind dials a connection of its own
	_, err := d.Authenticate(ctx, "alice", "alice-pw")
	if err == nil || errors.Is(err, ldap.ErrBadCredentials) {
		t.Fatalf("Authenticate with the bind unanswered: %v; want a server error", err)
	}
	if strings.Contains(err.Error(), "alice-pw") {
		t.Fatalf("the error shows the password: %v", err)
	}
}

func TestBindPasswordFile(t *testing.T) {
	dir := ldaptest.New(t)
	dir.AddUser("alice", "alice-pw")
	cfg := dir.Config
	f := filepath.Join(t.TempDir(), "bindpw")
	if err := os.WriteFile(f, []byte(cfg.BindPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.BindPassword, cfg.BindPasswordFile = "", f
	d := open(t, cfg)
	if _, err := d.Authenticate(context.Background(), "alice", "alice-pw"); err != nil {
		t.Fatalf("login with the service password from a file: %v", err)
	}
	cfg.BindPasswordFile = filepath.Join(t.TempDir(), "missing")
	if _, err := ldap.New(cfg); err == nil || !strings.HasPrefix(err.Error(), "auth.builtin.ldap.bindpasswordfile: ") {
		t.Fatalf("missing bindpasswordfile: %v", err)
	}
}

func TestValidate(t *testing.T) {
	good := ldap.Config{
		URL: "ldap://127.0.0.1:389", BindDN: "cn=svc,dc=example,dc=com", BindPassword: "x",
		UserBase: "ou=people,dc=example,dc=com", GroupBase: "ou=groups,dc=example,dc=com",
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("a good config: %v", err)
	}
	for _, c := range []struct {
		key  string
		edit func(*ldap.Config)
	}{
		{"url", func(c *ldap.Config) { c.URL = "" }},
		{"url", func(c *ldap.Config) { c.URL = "http://127.0.0.1:389" }},
		{"url", func(c *ldap.Config) { c.URL = "ldap://" }},
		{"cafile", func(c *ldap.Config) { c.CAFile = "/etc/ca.pem" }},
		{"bindpassword", func(c *ldap.Config) { c.BindPassword = "" }},
		{"bindpassword", func(c *ldap.Config) { c.BindPasswordFile = "/etc/pw" }},
		{"binddn", func(c *ldap.Config) { c.BindDN = "" }},
		{"binddn", func(c *ldap.Config) { c.BindDN = "not a dn" }},
		{"userbase", func(c *ldap.Config) { c.UserBase = "" }},
		{"userfilter", func(c *ldap.Config) { c.UserFilter = "(uid=alice)" }},
		{"userfilter", func(c *ldap.Config) { c.UserFilter = "(uid=%s" }},
		{"groupbase", func(c *ldap.Config) { c.GroupBase = "nope" }},
		{"groupfilter", func(c *ldap.Config) { c.GroupFilter = "(member=x)" }},
		{"groupfilter", func(c *ldap.Config) { c.GroupFilter = "(member=%s))" }},
		{"timeout", func(c *ldap.Config) { c.Timeout = -time.Second }},
		{"poolsize", func(c *ldap.Config) { c.PoolSize = -1 }},
	} {
		cfg := good
		c.edit(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), "auth.builtin.ldap."+c.key+": ") {
			t.Errorf("%+v: %v; want an error naming auth.builtin.ldap.%s", cfg, err, c.key)
		}
	}
}
