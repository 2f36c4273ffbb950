package iam

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeDirectory stands in for LDAP in these unit tests; the real slapd is
// exercised by registry/iam/ldap's tests and the e2e tests.
type fakeDirectory struct {
	mu     sync.Mutex
	pass   map[string]string
	groups map[string][]string
	calls  int
}

func (d *fakeDirectory) Authenticate(_ context.Context, user, password string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p, ok := d.pass[user]; !ok || p != password {
		return nil, ErrBadCredentials
	}
	return slices.Clone(d.groups[user]), nil
}

func (d *fakeDirectory) Groups(_ context.Context, user string) ([]string, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls++
	_, ok := d.pass[user]
	return slices.Clone(d.groups[user]), ok, nil
}

func newStore(t *testing.T, dir Directory) (*Store, *clock) {
	t.Helper()
	pool := metadatatest.Pool(t)
	if _, _, err := metadata.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}
	opts := Options{CacheTTL: 5 * time.Second, BcryptCost: bcrypt.MinCost, Now: c.now}
	if dir != nil {
		opts.Directory = dir
	}
	return New(pool, opts), c
}

func mustActions(t *testing.T, s *Store, subject, repo string, want ...string) {
	t.Helper()
	got, err := s.Actions(context.Background(), subject, repo)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%q on %s: actions %v, want %v", subject, repo, got, want)
	}
}

func TestRolesAndRevocationWithinCacheBound(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, nil)
	for _, u := range []string{"alice", "bob", "carol", "dave", "root"} {
		if _, err := s.CreateUser(ctx, u, "password-"+u, u == "root"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.CreateNamespace(ctx, "team-a", false, "", "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateNamespace(ctx, "pub", true, "", ""); err != nil {
		t.Fatal(err)
	}
	for u, role := range map[string]string{"bob": RoleMaintainer, "carol": RoleDeveloper, "dave": RoleGuest} {
		if _, err := s.SetMember(ctx, "team-a", Member{Kind: "user", Name: u, Role: role}); err != nil {
			t.Fatal(err)
		}
	}
	mustActions(t, s, "alice", "team-a/app", Pull, Push, Delete)
	mustActions(t, s, "bob", "team-a/app/sub", Pull, Push, Delete)
	mustActions(t, s, "carol", "team-a/app", Pull, Push)
	mustActions(t, s, "dave", "team-a/app", Pull)
	mustActions(t, s, "dave", "team-b/app")
	mustActions(t, s, "", "team-a/app")
	mustActions(t, s, "", "pub/tool", Pull)
	mustActions(t, s, "dave", "pub/tool", Pull)
	mustActions(t, s, "root", "anything/at/all", Pull, Push, Delete)
	mustActions(t, s, "nobody", "pub/tool", Pull)
	// "team-a" is no prefix of "team-ab".
	mustActions(t, s, "alice", "team-ab/app")

	// A second server's Store: its cache still holds carol's role when
	// this one removes her; within the bound it lets her push, after it not.
	other := New(s.db, s.opts)
	mustActions(t, other, "carol", "team-a/app", Pull, Push)
	if err := s.RemoveMember(ctx, "team-a", "user", "carol"); err != nil {
		t.Fatal(err)
	}
	mustActions(t, s, "carol", "team-a/app") // the server that made the change: at once
	mustActions(t, other, "carol", "team-a/app", Pull, Push)
	c.add(5 * time.Second)
	mustActions(t, other, "carol", "team-a/app")

}

func TestAuthenticate(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, nil)
	if _, err := s.CreateUser(ctx, "alice", "correct horse", false); err != nil {
		t.Fatal(err)
	}
	if sub, err := s.Authenticate(ctx, "alice", "correct horse"); err != nil || sub != "alice" {
		t.Fatalf("good password: %q %v", sub, err)
	}
	for _, bad := range [][2]string{{"alice", "wrong"}, {"alice", ""}, {"", "x"}, {"mallory", "correct horse"}} {
		if _, err := s.Authenticate(ctx, bad[0], bad[1]); !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("%q/%q: %v, want bad credentials", bad[0], bad[1], err)
		}
	}
	// A changed password: the old one stops working on this server at
	// once, and (the cached check) elsewhere within the bound.
	other := New(s.db, s.opts)
	if _, err := other.Authenticate(ctx, "alice", "correct horse"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateUser(ctx, "alice", "battery staple", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, "alice", "correct horse"); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("old password after the change: %v", err)
	}
	c.add(5 * time.Second)
	if _, err := other.Authenticate(ctx, "alice", "correct horse"); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("old password on another server after the bound: %v", err)
	}

	// Robots: right secret, wrong secret, expired, deleted.
	if _, err := s.CreateNamespace(ctx, "ci", false, "", ""); err != nil {
		t.Fatal(err)
	}
	exp := c.now().Add(time.Hour)
	rb, secret, err := s.CreateRobot(ctx, "ci", RobotSpec{Name: "builder", ExpiresAt: &exp,
		Permissions: []Permission{{Namespace: "ci", Repositories: "images/*", Actions: []string{Pull, Push}}}})
	if err != nil {
		t.Fatal(err)
	}
	if rb.Name != "robot$ci+builder" {
		t.Fatalf("robot name %q", rb.Name)
	}
	if _, err := s.Authenticate(ctx, rb.Name, secret); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, rb.Name, secret+"x"); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("wrong secret: %v", err)
	}
	mustActions(t, s, rb.Name, "ci/images/app", Pull, Push)
	mustActions(t, s, rb.Name, "ci/other")
	mustActions(t, s, rb.Name, "ci/images/app/deeper") // path.Match: * stops at /
	newSecret, err := s.RotateRobot(ctx, rb.Name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, rb.Name, secret); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("old secret after rotation: %v", err)
	}
	if _, err := s.Authenticate(ctx, rb.Name, newSecret); err != nil {
		t.Fatalf("new secret: %v", err)
	}
	// Tokens issued before the rotation (iat in whole seconds) are no
	// longer valid; those issued after are.
	if err := s.Valid(ctx, rb.Name, c.now().Add(-2*time.Second)); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("a token issued before the rotation: %v", err)
	}
	if err := s.Valid(ctx, rb.Name, c.now().Truncate(time.Second)); err != nil {
		t.Fatalf("a token issued after the rotation: %v", err)
	}
	c.add(time.Hour)
	if _, err := s.Authenticate(ctx, rb.Name, newSecret); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("expired robot: %v", err)
	}
	mustActions(t, s, rb.Name, "ci/images/app")
	if err := s.Valid(ctx, rb.Name, c.now()); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("expired robot valid: %v", err)
	}
	if err := s.Valid(ctx, "alice", c.now()); err != nil {
		t.Fatal(err)
	}
	issued := c.now()
	if err := s.DeleteUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := s.Valid(ctx, "alice", c.now()); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("deleted user valid: %v", err)
	}
	// Made again under the same name: the old alice's tokens are not hers.
	c.add(2 * time.Second)
	if _, err := s.CreateUser(ctx, "alice", "another one", false); err != nil {
		t.Fatal(err)
	}
	if err := s.Valid(ctx, "alice", issued); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("a token of the deleted alice, for the new one: %v", err)
	}
	if err := s.Valid(ctx, "alice", c.now()); err != nil {
		t.Fatalf("the new alice's token: %v", err)
	}
}

func TestDirectoryUsersAndGroups(t *testing.T) {
	ctx := context.Background()
	dir := &fakeDirectory{pass: map[string]string{"erin": "ldap-pass"}, groups: map[string][]string{"erin": {"devs"}}}
	s, c := newStore(t, dir)
	if _, err := s.CreateNamespace(ctx, "web", false, "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetMember(ctx, "web", Member{Kind: "group", Name: "devs", Role: RoleDeveloper}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, "erin", "nope"); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("wrong LDAP password: %v", err)
	}
	if _, err := s.Authenticate(ctx, "erin", "ldap-pass"); err != nil {
		t.Fatal(err)
	}
	calls := dir.calls
	mustActions(t, s, "erin", "web/site", Pull, Push)
	if dir.calls != calls {
		t.Fatalf("the login's groups were not reused: %d directory calls", dir.calls-calls)
	}
	if u, err := s.GetUser(ctx, "erin"); err != nil || u.Source != "ldap" {
		t.Fatalf("LDAP user recorded as %+v, %v", u, err)
	}
	// Removed from the group in the directory: push is gone after the bound.
	dir.mu.Lock()
	dir.groups["erin"] = nil
	dir.mu.Unlock()
	mustActions(t, s, "erin", "web/site", Pull, Push)
	c.add(5 * time.Second)
	mustActions(t, s, "erin", "web/site")
	// Gone from the directory: no longer valid.
	dir.mu.Lock()
	delete(dir.pass, "erin")
	dir.mu.Unlock()
	c.add(5 * time.Second)
	if err := s.Valid(ctx, "erin", c.now()); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("user gone from the directory: %v", err)
	}
}

func TestBadInputNamesTheField(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, nil)
	if _, err := s.CreateNamespace(ctx, "ns", false, "", ""); err != nil {
		t.Fatal(err)
	}
	past := c.now().Add(-time.Minute)
	for _, tc := range []struct {
		err   error
		field string
	}{
		{second(s.CreateUser(ctx, "bad name", "password1", false)), "name"},
		{second(s.CreateUser(ctx, "ok", "short", false)), "password"},
		{second(s.CreateNamespace(ctx, "Upper", false, "", "")), "name"},
		{second(s.CreateNamespace(ctx, "ns", false, "", "")), "name"},
		{second(s.SetMember(ctx, "ns", Member{Kind: "user", Name: "x", Role: "owner"})), "role"},
		{second(s.SetMember(ctx, "ns", Member{Kind: "team", Name: "x", Role: "guest"})), "kind"},
		{third(s.CreateRobot(ctx, "ns", RobotSpec{Name: "r", Permissions: []Permission{{Namespace: "other", Actions: []string{Pull}}}})), "permissions[0].namespace"},
		{third(s.CreateRobot(ctx, "ns", RobotSpec{Name: "r", Permissions: []Permission{{Namespace: "ns", Actions: []string{"write"}}}})), "permissions[0].actions"},
		{third(s.CreateRobot(ctx, "ns", RobotSpec{Name: "r", Permissions: []Permission{{Namespace: "ns", Repositories: "[", Actions: []string{Pull}}}})), "permissions[0].repositories"},
		{third(s.CreateRobot(ctx, "ns", RobotSpec{Name: "r", ExpiresAt: &past, Permissions: []Permission{{Namespace: "ns", Actions: []string{Pull}}}})), "expires_at"},
		{third(s.CreateRobot(ctx, "ns", RobotSpec{Name: "R!"})), "name"},
	} {
		var fe *FieldError
		if !errors.As(tc.err, &fe) || fe.Field != tc.field {
			t.Errorf("error %v, want one naming %s", tc.err, tc.field)
		}
	}
	if _, err := s.SetMember(ctx, "missing", Member{Kind: "user", Name: "x", Role: "guest"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("member of a missing namespace: %v", err)
	}
	if _, _, err := s.CreateRobot(ctx, "missing", RobotSpec{Name: "r", Permissions: []Permission{{Namespace: "missing", Actions: []string{Pull}}}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("robot of a missing namespace: %v", err)
	}
}

func second[A, B any](_ A, b B) B        { return b }
func third[A, B, C any](_ A, _ B, c C) C { return c }

func TestListsArePaged(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t, nil)
	if _, err := s.CreateNamespace(ctx, "ns", false, "", ""); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		name := string(rune('a'+i)) + "-user"
		if _, err := s.CreateUser(ctx, name, "password1", false); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetMember(ctx, "ns", Member{Kind: "user", Name: name, Role: RoleGuest}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.CreateRobot(ctx, "ns", RobotSpec{Name: "r" + string(rune('a'+i)), Permissions: []Permission{{Namespace: "ns", Actions: []string{Pull}}}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.SetMember(ctx, "ns", Member{Kind: "group", Name: "g", Role: RoleGuest}); err != nil {
		t.Fatal(err)
	}
	collect := func(list func(after string) ([]string, string, error)) []string {
		var all []string
		after := ""
		for range 10 {
			names, next, err := list(after)
			if err != nil {
				t.Fatal(err)
			}
			if len(names) > 2 {
				t.Fatalf("a page of 2 has %d", len(names))
			}
			all = append(all, names...)
			if next == "" {
				return all
			}
			after = next
		}
		t.Fatal("paging does not end")
		return nil
	}
	users := collect(func(after string) ([]string, string, error) {
		us, next, err := s.ListUsers(ctx, after, 2)
		var names []string
		for _, u := range us {
			names = append(names, u.Name)
		}
		return names, next, err
	})
	members := collect(func(after string) ([]string, string, error) {
		ms, next, err := s.ListMembers(ctx, "ns", after, 2)
		var names []string
		for _, m := range ms {
			names = append(names, m.key())
		}
		return names, next, err
	})
	robots := collect(func(after string) ([]string, string, error) {
		rs, next, err := s.ListRobots(ctx, "ns", after, 2)
		var names []string
		for _, r := range rs {
			names = append(names, r.Name)
		}
		return names, next, err
	})
	if len(users) != 5 || len(members) != 6 || members[0] != "group:g" || len(robots) != 5 || robots[0] != "robot$ns+ra" {
		t.Fatalf("users %v, members %v, robots %v", users, members, robots)
	}
}

// Concurrent logins with the same credentials while none is cached share
// one password check (bcrypt costs ~50 ms of CPU each).
func TestConcurrentLoginsShareOneCheck(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t, nil)
	if _, err := s.CreateUser(ctx, "alice", "correct horse", false); err != nil {
		t.Fatal(err)
	}
	const n = 16
	checks := sharedRuns(t, n, func(hook func()) { s.checkHook = hook }, nil, func() error {
		_, err := s.Authenticate(ctx, "alice", "correct horse")
		return err
	})
	if checks != 1 {
		t.Fatalf("%d concurrent logins ran %d password checks, want 1", n, checks)
	}
}

// sharedRuns calls call n times at once, and returns how many times the
// work they should share ran: setHook installs a hook at its start that
// blocks it until every caller has arrived (arrived, when not nil) and a
// little more, so that each caller either joins it or finds its result.
func sharedRuns(t *testing.T, n int, setHook func(func()), arrived func() bool, call func() error) int32 {
	t.Helper()
	var runs atomic.Int32
	release := make(chan struct{})
	setHook(func() {
		runs.Add(1)
		<-release
	})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- call()
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for (runs.Load() == 0 || (arrived != nil && !arrived())) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the others queue behind the one run
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return runs.Load()
}

// A busy subject's requests that all find its cached profile lapsed share
// one load from the database.
func TestConcurrentRequestsShareOneProfileLoad(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, nil)
	if _, err := s.CreateUser(ctx, "alice", "correct horse", false); err != nil {
		t.Fatal(err)
	}
	mustActions(t, s, "alice", "team/app") // loaded and cached
	c.add(6 * time.Second)                 // past CacheTTL
	var callers atomic.Int32
	s.lapsedHook = func() { callers.Add(1) }
	const n = 16
	loads := sharedRuns(t, n, func(hook func()) { s.loadHook = hook }, func() bool { return callers.Load() == n }, func() error {
		_, err := s.Actions(ctx, "alice", "team/app")
		return err
	})
	if loads != 1 {
		t.Fatalf("%d concurrent requests loaded alice's profile %d times, want 1", n, loads)
	}
}
