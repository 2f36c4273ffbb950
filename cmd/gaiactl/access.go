package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gaia-registry/gaia/registry/iam"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// Users, namespaces, members and robots (registry/iam) through
// gaia-registry's admin API: with the admin token, or as a user
// ($GAIA_REGISTRY_USER / $GAIA_REGISTRY_PASSWORD): a system admin, or a
// namespace's admin for its members and robots.

const accessLong = registryLong + `
Instead of the token, $GAIA_REGISTRY_USER and $GAIA_REGISTRY_PASSWORD
act as that user (a system admin, or a namespace admin for its members
and robots).`

// pageFlags are a list command's paging: one page of --limit after
// --last, or every page with --all.
type pageFlags struct {
	limit int
	last  string
	all   bool
}

func (p *pageFlags) add(c *cobra.Command) {
	c.Flags().IntVar(&p.limit, "limit", 100, "page size (1-1000)")
	c.Flags().StringVar(&p.last, "last", "", "start after this cursor (the previous page's next)")
	c.Flags().BoolVar(&p.all, "all", false, "every page")
}

// list reads the pages of a list at u into items (a pointer to a slice)
// under key, and prints them with show; it says how to get the next page.
func list[T any](m *registryCLI, u, key string, p *pageFlags, show func([]T)) error {
	var all []T
	last := p.last
	for {
		q := url.Values{"n": {strconv.Itoa(p.limit)}}
		if last != "" {
			q.Set("last", last)
		}
		if m.output == "json" && !p.all {
			return m.do("GET", u+"?"+q.Encode(), nil, nil, func() {})
		}
		raw, err := m.call("GET", u+"?"+q.Encode(), nil)
		if err != nil {
			return err
		}
		page := map[string]json.RawMessage{}
		if err := json.Unmarshal(raw, &page); err != nil {
			return err
		}
		var items []T
		if err := json.Unmarshal(page[key], &items); err != nil {
			return err
		}
		all = append(all, items...)
		var next string
		json.Unmarshal(page["next"], &next)
		if next == "" || !p.all {
			if m.output == "json" {
				b, _ := json.Marshal(map[string]any{key: all})
				m.stdout.Write(append(b, '\n'))
				return nil
			}
			show(all)
			if next != "" {
				fmt.Fprintf(m.stdout, "(more: --last %s, or --all)\n", next)
			}
			return nil
		}
		last = next
	}
}

func userCmd(g *globals) *cobra.Command {
	m := newRegistryCLI(g)
	cmd := group("user", "users of the registry's built-in auth")
	cmd.Long = "Local users (LDAP users appear after their first login). " + accessLong
	var pf pageFlags
	var password string
	var admin, notAdmin bool
	ls := &cobra.Command{Use: "list", Short: "users, by name", Args: nargs(),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			return list(m, base+"/users", "users", &pf, m.printUsers)
		}}
	pf.add(ls)
	create := &cobra.Command{Use: "create NAME --password PASS [--admin]", Short: "add a local user", Args: nargs("NAME"),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			body, _ := json.Marshal(map[string]any{"name": a[0], "password": password, "admin": admin})
			var u iam.User
			return m.do("POST", base+"/users", body, &u, func() { m.printUsers([]iam.User{u}) })
		}}
	create.Flags().StringVar(&password, "password", "", "the password (8-72 bytes)")
	create.Flags().BoolVar(&admin, "admin", false, "a system admin")
	update := &cobra.Command{Use: "update NAME [--password PASS] [--admin|--no-admin]", Short: "change a password or the admin flag", Args: nargs("NAME"),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			body := map[string]any{}
			if password != "" {
				body["password"] = password
			}
			switch {
			case admin && notAdmin:
				return usagef("--admin and --no-admin together")
			case admin:
				body["admin"] = true
			case notAdmin:
				body["admin"] = false
			}
			raw, _ := json.Marshal(body)
			var u iam.User
			return m.do("PATCH", base+"/users/"+url.PathEscape(a[0]), raw, &u, func() { m.printUsers([]iam.User{u}) })
		}}
	update.Flags().StringVar(&password, "password", "", "a new password (local users)")
	update.Flags().BoolVar(&admin, "admin", false, "make a system admin")
	update.Flags().BoolVar(&notAdmin, "no-admin", false, "no longer a system admin")
	cmd.AddCommand(ls, create, update,
		&cobra.Command{Use: "delete NAME", Short: "remove a user and their memberships", Args: nargs("NAME"),
			RunE: func(c *cobra.Command, a []string) error {
				base, err := m.base(c)
				if err != nil {
					return err
				}
				return m.do("DELETE", base+"/users/"+url.PathEscape(a[0]), nil, nil, func() {})
			}})
	return cmd
}

func (m *registryCLI) printUsers(us []iam.User) {
	tw := tabwriter.NewWriter(m.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "NAME\tSOURCE\tADMIN\tCREATED\n")
	for _, u := range us {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", u.Name, u.Source, u.Admin, u.CreatedAt.UTC().Format(time.RFC3339))
	}
	tw.Flush()
}

func namespaceCmd(g *globals) *cobra.Command {
	m := newRegistryCLI(g)
	cmd := group("namespace", "namespaces (a repository's first path component): visibility, quota")
	cmd.Long = "Namespaces, public (anonymous pull) or private, with members and robots. " + accessLong
	var pf pageFlags
	var public, private bool
	var desc, owner, quota string
	ls := &cobra.Command{Use: "list", Short: "namespaces, by name", Args: nargs(),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			return list(m, base+"/namespaces", "namespaces", &pf, m.printNamespaces)
		}}
	pf.add(ls)
	quotaBytes := func() (*int64, error) {
		if quota == "" {
			return nil, nil
		}
		if quota == "none" {
			v := int64(-1)
			return &v, nil
		}
		v, err := resource.Parse(resource.Disk, quota)
		if err != nil {
			return nil, usagef("--quota: %v", err)
		}
		return &v, nil
	}
	create := &cobra.Command{Use: "create NAME [--public] [--owner USER] [--quota SIZE]", Short: "add a namespace", Args: nargs("NAME"),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			q, err := quotaBytes()
			if err != nil {
				return err
			}
			body, _ := json.Marshal(map[string]any{"name": a[0], "public": public, "description": desc, "owner": owner, "quota_bytes": q})
			var ns iam.Namespace
			return m.do("POST", base+"/namespaces", body, &ns, func() { m.printNamespaces([]iam.Namespace{ns}) })
		}}
	create.Flags().BoolVar(&public, "public", false, "anyone may pull, without credentials")
	create.Flags().StringVar(&desc, "description", "", "what it is for")
	create.Flags().StringVar(&owner, "owner", "", "a user who becomes its admin")
	create.Flags().StringVar(&quota, "quota", "", "storage quota (e.g. 50Gi)")
	update := &cobra.Command{Use: "update NAME [--public|--private] [--description D] [--quota SIZE|none]", Short: "change visibility, description or quota", Args: nargs("NAME"),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			body := map[string]any{}
			switch {
			case public && private:
				return usagef("--public and --private together")
			case public:
				body["public"] = true
			case private:
				body["public"] = false
			}
			if c.Flags().Changed("description") {
				body["description"] = desc
			}
			q, err := quotaBytes()
			if err != nil {
				return err
			}
			if q != nil {
				body["quota_bytes"] = *q
			}
			raw, _ := json.Marshal(body)
			var ns iam.Namespace
			return m.do("PATCH", base+"/namespaces/"+url.PathEscape(a[0]), raw, &ns, func() { m.printNamespaces([]iam.Namespace{ns}) })
		}}
	update.Flags().BoolVar(&public, "public", false, "anyone may pull")
	update.Flags().BoolVar(&private, "private", false, "only members and robots may pull")
	update.Flags().StringVar(&desc, "description", "", "what it is for")
	update.Flags().StringVar(&quota, "quota", "", "storage quota (e.g. 50Gi), or none")
	cmd.AddCommand(ls, create, update,
		&cobra.Command{Use: "delete NAME", Short: "remove a namespace with its members and robots", Args: nargs("NAME"),
			RunE: func(c *cobra.Command, a []string) error {
				base, err := m.base(c)
				if err != nil {
					return err
				}
				return m.do("DELETE", base+"/namespaces/"+url.PathEscape(a[0]), nil, nil, func() {})
			}})
	return cmd
}

func (m *registryCLI) printNamespaces(nss []iam.Namespace) {
	tw := tabwriter.NewWriter(m.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "NAME\tVISIBILITY\tDESCRIPTION\tCREATED\n")
	for _, ns := range nss {
		vis := "private"
		if ns.Public {
			vis = "public"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", ns.Name, vis, dash(ns.Description), ns.CreatedAt.UTC().Format(time.RFC3339))
	}
	tw.Flush()
}

func memberCmd(g *globals) *cobra.Command {
	m := newRegistryCLI(g)
	cmd := group("member", "a namespace's members (users or LDAP groups) and their roles")
	cmd.Long = "Roles: admin (manage members and robots), maintainer (push, delete), developer (push), guest (pull). " + accessLong
	var pf pageFlags
	var group bool
	memberURL := func(base, ns, name string) string {
		kind := "user"
		if group {
			kind = "group"
		}
		return base + "/namespaces/" + url.PathEscape(ns) + "/members/" + kind + "/" + url.PathEscape(name)
	}
	ls := &cobra.Command{Use: "list NAMESPACE", Short: "members, groups first", Args: nargs("NAMESPACE"),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			return list(m, base+"/namespaces/"+url.PathEscape(a[0])+"/members", "members", &pf, func(ms []iam.Member) {
				tw := tabwriter.NewWriter(m.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "KIND\tNAME\tROLE\n")
				for _, mb := range ms {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", mb.Kind, mb.Name, mb.Role)
				}
				tw.Flush()
			})
		}}
	pf.add(ls)
	set := &cobra.Command{Use: "set NAMESPACE NAME ROLE [--group]", Short: "add a member or change their role", Args: nargs("NAMESPACE", "NAME", "ROLE"),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			body, _ := json.Marshal(map[string]string{"role": a[2]})
			var mb iam.Member
			return m.do("PUT", memberURL(base, a[0], a[1]), body, &mb, func() {
				fmt.Fprintf(m.stdout, "%s %s is %s of %s\n", mb.Kind, mb.Name, mb.Role, a[0])
			})
		}}
	set.Flags().BoolVar(&group, "group", false, "NAME is an LDAP group")
	rm := &cobra.Command{Use: "remove NAMESPACE NAME [--group]", Short: "remove a member", Args: nargs("NAMESPACE", "NAME"),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			return m.do("DELETE", memberURL(base, a[0], a[1]), nil, nil, func() {})
		}}
	rm.Flags().BoolVar(&group, "group", false, "NAME is an LDAP group")
	cmd.AddCommand(ls, set, rm)
	return cmd
}

func robotCmd(g *globals) *cobra.Command {
	m := newRegistryCLI(g)
	cmd := group("robot", "robot accounts: credentials for CI and machines")
	cmd.Long = `Robots log in as robot$<namespace>+<name> (or robot$<name> for a
system-wide one) with a secret shown once at creation or rotation.
--perm is ACTIONS@NAMESPACE[/PATTERN], e.g. pull,push@team-a or
pull@team-a/images/* (a path pattern below the namespace; * for every
namespace with system robots). ` + accessLong
	var pf pageFlags
	var ns, desc, expires string
	var perms []string
	robotsURL := func(base string) string {
		if ns == "" {
			return base + "/robots"
		}
		return base + "/namespaces/" + url.PathEscape(ns) + "/robots"
	}
	ls := &cobra.Command{Use: "list [--namespace NS]", Short: "a namespace's robots (system-wide ones without --namespace)", Args: nargs(),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			return list(m, robotsURL(base), "robots", &pf, m.printRobots)
		}}
	pf.add(ls)
	ls.Flags().StringVar(&ns, "namespace", "", "the namespace")
	create := &cobra.Command{Use: "create NAME --perm ACTIONS@NAMESPACE[/PATTERN]... [--namespace NS] [--expires DURATION|TIME]", Short: "add a robot; prints its secret once", Args: nargs("NAME"),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			spec := iam.RobotSpec{Name: a[0], Description: desc}
			for _, p := range perms {
				perm, err := parsePerm(p)
				if err != nil {
					return usagef("--perm %q: %v", p, err)
				}
				spec.Permissions = append(spec.Permissions, perm)
			}
			if expires != "" {
				t, err := parseWhen(expires, time.Now())
				if err != nil {
					return usagef("--expires: %v", err)
				}
				spec.ExpiresAt = &t
			}
			body, _ := json.Marshal(spec)
			var out struct {
				Robot  iam.Robot `json:"robot"`
				Secret string    `json:"secret"`
			}
			return m.do("POST", robotsURL(base), body, &out, func() {
				m.printRobots([]iam.Robot{out.Robot})
				fmt.Fprintf(m.stdout, "secret (shown once): %s\n", out.Secret)
			})
		}}
	create.Flags().StringVar(&ns, "namespace", "", "the namespace it belongs to (none: system-wide, system admins only)")
	create.Flags().StringArrayVar(&perms, "perm", nil, "a permission, ACTIONS@NAMESPACE[/PATTERN] (repeatable)")
	create.Flags().StringVar(&desc, "description", "", "what it is for")
	create.Flags().StringVar(&expires, "expires", "", "when it stops working: a duration from now (720h) or an RFC 3339 time")
	cmd.AddCommand(ls, create,
		&cobra.Command{Use: "rotate FULLNAME", Short: "give a robot a new secret (the old one stops working)", Args: nargs("FULLNAME"),
			RunE: func(c *cobra.Command, a []string) error {
				base, err := m.base(c)
				if err != nil {
					return err
				}
				var out struct{ Name, Secret string }
				return m.do("POST", base+"/robots/"+url.PathEscape(a[0])+"/rotate", nil, &out, func() {
					fmt.Fprintf(m.stdout, "%s: new secret (shown once): %s\n", out.Name, out.Secret)
				})
			}},
		&cobra.Command{Use: "delete FULLNAME", Short: "remove a robot", Args: nargs("FULLNAME"),
			RunE: func(c *cobra.Command, a []string) error {
				base, err := m.base(c)
				if err != nil {
					return err
				}
				return m.do("DELETE", base+"/robots/"+url.PathEscape(a[0]), nil, nil, func() {})
			}})
	return cmd
}

// parsePerm reads ACTIONS@NAMESPACE[/PATTERN].
func parsePerm(s string) (iam.Permission, error) {
	actions, target, ok := strings.Cut(s, "@")
	if !ok || actions == "" || target == "" {
		return iam.Permission{}, fmt.Errorf("want ACTIONS@NAMESPACE[/PATTERN], e.g. pull,push@team-a")
	}
	ns, pattern, _ := strings.Cut(target, "/")
	return iam.Permission{Namespace: ns, Repositories: pattern, Actions: strings.Split(actions, ",")}, nil
}

// parseWhen reads a duration from now or an RFC 3339 time.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a duration (720h) nor an RFC 3339 time", s)
	}
	return t, nil
}

func (m *registryCLI) printRobots(rs []iam.Robot) {
	tw := tabwriter.NewWriter(m.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "NAME\tPERMISSIONS\tEXPIRES\tROTATED\n")
	for _, r := range rs {
		var ps []string
		for _, p := range r.Permissions {
			t := p.Namespace
			if p.Repositories != "" {
				t += "/" + p.Repositories
			}
			ps = append(ps, strings.Join(p.Actions, ",")+"@"+t)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Name, strings.Join(ps, " "), when(r.ExpiresAt), r.RotatedAt.UTC().Format(time.RFC3339))
	}
	tw.Flush()
}
