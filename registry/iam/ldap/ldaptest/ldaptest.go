// Package ldaptest gives a test a directory of its own in the slapd that
// tests/services/svc.sh runs (started through tests/harness, as the other
// services): a unique subtree ou=<random>,<suffix> with ou=people and
// ou=groups under it, removed when the test ends.
//
// Users are inetOrgPerson entries uid=<name>,ou=people,... with a
// userPassword. Groups are groupOfNames entries cn=<name>,ou=groups,...
// listing their members' DNs in `member`. groupOfNames needs at least one
// member: a group without users holds the placeholder DN NoMember (an
// entry that does not exist), which no user filter matches. AddPosixGroup
// makes memberUid groups (RFC 2307) instead.
package ldaptest

import (
	"crypto/rand"
	"encoding/hex"
	"sort"
	"strconv"
	"strings"
	"testing"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/gaia-registry/gaia/registry/iam/ldap"
	"github.com/gaia-registry/gaia/tests/harness"
)

// Dir is a test's subtree of the directory.
type Dir struct {
	t    testing.TB
	conn *goldap.Conn // bound as the directory's admin

	// Config points at the subtree: the admin as service account,
	// userbase its ou=people, groupbase its ou=groups, defaults otherwise.
	Config ldap.Config
	Base   string // ou=<random>,<suffix>
	// NoMember is the placeholder member of groups without users.
	NoMember string
}

// New makes the test's subtree. svc.sh starts slapd when it is not
// running (as `bash tests/services/svc.sh start slapd` does); if it cannot,
// the test fails with the service's log.
func New(t testing.TB) *Dir {
	t.Helper()
	env := harness.Start(t, harness.LDAP)
	url := env.Get(t, "GAIA_TEST_LDAP_URL")
	suffix := env.Get(t, "GAIA_TEST_LDAP_BASE")
	admin := env.Get(t, "GAIA_TEST_LDAP_ADMIN_DN")
	password := env.Get(t, "GAIA_TEST_LDAP_ADMIN_PASSWORD")
	conn, err := goldap.DialURL(url)
	if err != nil {
		t.Fatalf("ldaptest: %v (is slapd up? bash tests/services/svc.sh start slapd)\n%s", err, harness.Logs(harness.LDAP))
	}
	if err := conn.Bind(admin, password); err != nil {
		conn.Close()
		t.Fatalf("ldaptest: binding as %s: %v", admin, err)
	}
	var b [6]byte
	rand.Read(b[:])
	d := &Dir{t: t, conn: conn, Base: "ou=t" + hex.EncodeToString(b[:]) + "," + suffix}
	d.NoMember = "cn=nomember," + d.Base
	d.Config = ldap.Config{
		URL:          url,
		BindDN:       admin,
		BindPassword: password,
		UserBase:     "ou=people," + d.Base,
		GroupBase:    "ou=groups," + d.Base,
	}
	t.Cleanup(func() {
		defer conn.Close()
		d.deleteSubtree()
	})
	for _, dn := range []string{d.Base, d.Config.UserBase, d.Config.GroupBase} {
		rdn, _, _ := strings.Cut(dn, ",")
		req := goldap.NewAddRequest(dn, nil)
		req.Attribute("objectClass", []string{"organizationalUnit"})
		req.Attribute("ou", []string{strings.TrimPrefix(rdn, "ou=")})
		if dn == d.Base {
			req.Attribute("description", []string{"ldaptest: " + t.Name()})
		}
		d.must("adding "+dn, conn.Add(req))
	}
	return d
}

func (d *Dir) must(what string, err error) {
	d.t.Helper()
	if err != nil {
		d.t.Fatalf("ldaptest: %s: %v", what, err)
	}
}

// UserDN is the DN of user name (whether or not it exists).
func (d *Dir) UserDN(name string) string {
	return "uid=" + goldap.EscapeDN(name) + "," + d.Config.UserBase
}

// GroupDN is the DN of group name.
func (d *Dir) GroupDN(name string) string {
	return "cn=" + goldap.EscapeDN(name) + "," + d.Config.GroupBase
}

// AddUser adds a user with password (stored as given: a test directory)
// and returns its DN.
func (d *Dir) AddUser(name, password string) string {
	d.t.Helper()
	dn := d.UserDN(name)
	req := goldap.NewAddRequest(dn, nil)
	req.Attribute("objectClass", []string{"inetOrgPerson"})
	req.Attribute("uid", []string{name})
	req.Attribute("cn", []string{name})
	req.Attribute("sn", []string{name})
	if password != "" {
		req.Attribute("userPassword", []string{password})
	}
	d.must("adding user "+name, d.conn.Add(req))
	return dn
}

// DeleteUser deletes a user (their group memberships stay, as in a
// directory without referential integrity).
func (d *Dir) DeleteUser(name string) {
	d.t.Helper()
	d.must("deleting user "+name, d.conn.Del(goldap.NewDelRequest(d.UserDN(name), nil)))
}

// AddGroup adds a group with these users as members and returns its DN.
func (d *Dir) AddGroup(name string, members ...string) string {
	d.t.Helper()
	dn := d.GroupDN(name)
	req := goldap.NewAddRequest(dn, nil)
	req.Attribute("objectClass", []string{"groupOfNames"})
	req.Attribute("cn", []string{name})
	dns := []string{d.NoMember}
	if len(members) > 0 {
		dns = dns[:0]
		for _, m := range members {
			dns = append(dns, d.UserDN(m))
		}
	}
	req.Attribute("member", dns)
	d.must("adding group "+name, d.conn.Add(req))
	return dn
}

// AddMember makes user a member of group.
func (d *Dir) AddMember(group, user string) {
	d.t.Helper()
	req := goldap.NewModifyRequest(d.GroupDN(group), nil)
	req.Add("member", []string{d.UserDN(user)})
	d.must("adding "+user+" to "+group, d.conn.Modify(req))
	d.dropPlaceholder(group)
}

// RemoveMember takes user out of group; the last one out leaves the
// placeholder in.
func (d *Dir) RemoveMember(group, user string) {
	d.t.Helper()
	req := goldap.NewModifyRequest(d.GroupDN(group), nil)
	if len(d.Members(group)) == 1 {
		req.Add("member", []string{d.NoMember})
	}
	req.Delete("member", []string{d.UserDN(user)})
	d.must("removing "+user+" from "+group, d.conn.Modify(req))
}

// Members returns the DNs of group's members (the placeholder left out),
// sorted.
func (d *Dir) Members(group string) []string {
	d.t.Helper()
	res, err := d.conn.Search(goldap.NewSearchRequest(d.GroupDN(group), goldap.ScopeBaseObject,
		goldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"member"}, nil))
	d.must("reading group "+group, err)
	var out []string
	for _, m := range res.Entries[0].GetAttributeValues("member") {
		if !strings.EqualFold(m, d.NoMember) {
			out = append(out, m)
		}
	}
	sort.Strings(out)
	return out
}

// AddPosixGroup adds an RFC 2307 posixGroup cn=<name>,ou=groups,... whose
// members are user names in `memberUid` (groupfilter `(memberUid=%u)`).
func (d *Dir) AddPosixGroup(name string, gid int, users ...string) string {
	d.t.Helper()
	dn := d.GroupDN(name)
	req := goldap.NewAddRequest(dn, nil)
	req.Attribute("objectClass", []string{"posixGroup"})
	req.Attribute("cn", []string{name})
	req.Attribute("gidNumber", []string{strconv.Itoa(gid)})
	if len(users) > 0 {
		req.Attribute("memberUid", users)
	}
	d.must("adding posix group "+name, d.conn.Add(req))
	return dn
}

func (d *Dir) dropPlaceholder(group string) {
	d.t.Helper()
	req := goldap.NewModifyRequest(d.GroupDN(group), nil)
	req.Delete("member", []string{d.NoMember})
	err := d.conn.Modify(req)
	if goldap.IsErrorAnyOf(err, goldap.LDAPResultNoSuchAttribute) {
		return // it had real members already
	}
	d.must("updating group "+group, err)
}

// deleteSubtree removes the test's entries, leaves first.
func (d *Dir) deleteSubtree() {
	res, err := d.conn.Search(goldap.NewSearchRequest(d.Base, goldap.ScopeWholeSubtree,
		goldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"1.1"}, nil))
	if goldap.IsErrorAnyOf(err, goldap.LDAPResultNoSuchObject) {
		return
	}
	if err != nil {
		d.t.Errorf("ldaptest: listing %s to remove it: %v", d.Base, err)
		return
	}
	dns := make([]string, 0, len(res.Entries))
	for _, e := range res.Entries {
		dns = append(dns, e.DN)
	}
	depth := func(dn string) int {
		p, err := goldap.ParseDN(dn)
		if err != nil {
			return strings.Count(dn, ",")
		}
		return len(p.RDNs)
	}
	sort.Slice(dns, func(i, j int) bool { return depth(dns[i]) > depth(dns[j]) })
	for _, dn := range dns {
		if err := d.conn.Del(goldap.NewDelRequest(dn, nil)); err != nil {
			d.t.Errorf("ldaptest: removing %s: %v", dn, err)
			return
		}
	}
}
