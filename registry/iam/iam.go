// Package iam is the registry's multi-tenant access model, kept in
// PostgreSQL (migration 0010): users (local, bcrypt; or from an LDAP
// directory), system admins, namespaces (a repository name's first path
// component: public or private) whose members (users or LDAP groups) hold
// a role, and robot accounts with explicit permissions.
//
// The token service asks Store who a caller is (Authenticate) and what
// they may do (Grant); the registry's auth middleware asks again on every
// request (Actions), so a revoked member or a deleted robot loses access
// within the decision cache's bound (Options.CacheTTL) even while holding
// a token that is still valid.
package iam

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/singleflight"
)

// Actions on a repository.
const (
	Pull   = "pull"
	Push   = "push"
	Delete = "delete"
)

// Roles of a namespace's members, from most to least.
const (
	RoleAdmin      = "admin"      // everything, and manages members and robots
	RoleMaintainer = "maintainer" // pull, push, delete
	RoleDeveloper  = "developer"  // pull, push
	RoleGuest      = "guest"      // pull
)

// Roles lists the roles from most to least.
var Roles = []string{RoleAdmin, RoleMaintainer, RoleDeveloper, RoleGuest}

// RoleActions returns the repository actions role allows.
func RoleActions(role string) []string {
	switch role {
	case RoleAdmin, RoleMaintainer:
		return []string{Pull, Push, Delete}
	case RoleDeveloper:
		return []string{Pull, Push}
	case RoleGuest:
		return []string{Pull}
	}
	return nil
}

// roleRank orders roles: a higher rank allows more.
func roleRank(role string) int {
	if i := slices.Index(Roles, role); i >= 0 {
		return len(Roles) - i
	}
	return 0
}

// RobotPrefix starts every robot account's name.
const RobotPrefix = "robot$"

// ErrBadCredentials: an unknown user, a wrong password or secret, or an
// expired robot.
var ErrBadCredentials = errors.New("iam: bad credentials")

// ErrNotFound: no such user, namespace, member or robot.
var ErrNotFound = errors.New("iam: not found")

// FieldError is bad input, naming the field; Conflict: the name is taken.
type FieldError struct {
	Field, Reason string
	Conflict      bool
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Directory is an LDAP directory (registry/iam/ldap): users log in with
// its passwords and belong to its groups.
type Directory interface {
	// Authenticate returns the user's groups, or ErrBadCredentials
	// (wrapped or its own, see IsBadCredentials) for a wrong user or
	// password.
	Authenticate(ctx context.Context, user, password string) (groups []string, err error)
	// Groups returns the user's current groups; found is false for a user
	// the directory no longer has.
	Groups(ctx context.Context, user string) (groups []string, found bool, err error)
}

// Options configures a Store.
type Options struct {
	// CacheTTL bounds how long a decision (a subject's roles, a public
	// namespace list, a checked password) is reused: revocations reach
	// every server within it. 0: 5s.
	CacheTTL time.Duration
	// Directory, when set, authenticates users that are not local and
	// supplies their groups.
	Directory Directory
	// BcryptCost for new passwords; 0: bcrypt.DefaultCost.
	BcryptCost int
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time
}

// Store is the access model over PostgreSQL, with a per-server cache.
type Store struct {
	db   *pgxpool.Pool
	opts Options

	mu       sync.Mutex
	profiles map[string]*profile // subject -> what it may do
	public   *publicSet
	logins   map[[32]byte]time.Time // hash of user+password -> checked at
	checking singleflight.Group     // password checks under way, by that hash
	loading  singleflight.Group     // profile loads under way, by subject and gen
	// gen counts the changes that make a load under way stale (Forget,
	// seedGroups): a load joins only one started since the last, and
	// stores its result only if none came meanwhile.
	gen uint64
	// checkHook, in tests, runs at the start of each password check.
	checkHook func()
	// loadHook, in tests, runs at the start of each profile load;
	// lapsedHook before each caller asks for one.
	loadHook, lapsedHook func()
}

// New returns a Store over db (migrated to 0010 or later).
func New(db *pgxpool.Pool, opts Options) *Store {
	if opts.CacheTTL <= 0 {
		opts.CacheTTL = 5 * time.Second
	}
	if opts.BcryptCost == 0 {
		opts.BcryptCost = bcrypt.DefaultCost
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Store{db: db, opts: opts, profiles: map[string]*profile{}, logins: map[[32]byte]time.Time{}}
}

// CacheTTL is the bound on how long a revoked access may still be used.
func (s *Store) CacheTTL() time.Duration { return s.opts.CacheTTL }

// Subject is who a request acts as: a user, a robot, or "" (anonymous).
type Subject = string

// IsRobot tells a robot's name from a user's.
func IsRobot(name string) bool { return strings.HasPrefix(name, RobotPrefix) }

// Authenticate checks a user's password or a robot's secret and returns
// the subject. A wrong password, an unknown user or an expired robot is
// ErrBadCredentials; anything else is a server error.
func (s *Store) Authenticate(ctx context.Context, user, password string) (Subject, error) {
	if user == "" || password == "" {
		return "", ErrBadCredentials
	}
	if IsRobot(user) {
		return user, s.checkRobot(ctx, user, password)
	}
	// A positive check is reused for the cache's bound: bcrypt costs
	// ~50 ms of CPU, and docker asks for a token per repository.
	key := sha256.Sum256([]byte(user + "\x00" + password))
	now := s.opts.Now()
	s.mu.Lock()
	at, ok := s.logins[key]
	s.mu.Unlock()
	if ok && now.Sub(at) < s.opts.CacheTTL {
		return user, nil
	}
	// Concurrent checks of the same credentials (a client's parallel
	// requests when the cached check lapses) share one bcrypt.
	ch := s.checking.DoChan(string(key[:]), func() (any, error) {
		ctx, cancel := shared(ctx)
		defer cancel()
		return nil, s.checkPassword(ctx, user, password, key, now)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return "", res.Err
		}
		return user, nil
	case <-ctx.Done():
		return "", context.Cause(ctx)
	}
}

// checkPassword checks a user's password against the database or the
// directory and, when right, remembers it.
func (s *Store) checkPassword(ctx context.Context, user, password string, key [32]byte, now time.Time) error {
	if s.checkHook != nil {
		s.checkHook()
	}
	var source string
	var hash *string
	err := s.db.QueryRow(ctx, `SELECT source, password_hash FROM iam_users WHERE name = $1`, user).Scan(&source, &hash)
	switch {
	case errors.Is(err, pgx.ErrNoRows) || (err == nil && source == "ldap"):
		if s.opts.Directory == nil {
			// Spend the time a real check would: no user enumeration by timing.
			bcrypt.CompareHashAndPassword(dummyHash(), []byte(password))
			return ErrBadCredentials
		}
		groups, err := s.opts.Directory.Authenticate(ctx, user, password)
		if err != nil {
			return err
		}
		if _, err := s.db.Exec(ctx, `INSERT INTO iam_users (name, source, created_at) VALUES ($1, 'ldap', $2)
			ON CONFLICT (name) DO NOTHING`, user, s.opts.Now()); err != nil {
			return err
		}
		s.remember(key, now)
		s.seedGroups(user, groups)
		return nil
	case err != nil:
		return err
	}
	if bcrypt.CompareHashAndPassword([]byte(*hash), []byte(password)) != nil {
		return ErrBadCredentials
	}
	s.remember(key, now)
	return nil
}

// dummyHash is made on first use (bcrypt at start-up would slow every
// program that imports this package).
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("no such user"), bcrypt.DefaultCost)
	return h
})

func (s *Store) remember(key [32]byte, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.logins) > 10000 {
		for k, at := range s.logins {
			if now.Sub(at) >= s.opts.CacheTTL {
				delete(s.logins, k)
			}
		}
		if len(s.logins) > 10000 {
			clear(s.logins)
		}
	}
	s.logins[key] = now
}

func (s *Store) checkRobot(ctx context.Context, name, secret string) error {
	var hash []byte
	var expires *time.Time
	err := s.db.QueryRow(ctx, `SELECT secret_hash, expires_at FROM iam_robots WHERE name = $1`, name).Scan(&hash, &expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrBadCredentials
	} else if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(sum[:], hash) != 1 {
		return ErrBadCredentials
	}
	if expires != nil && !s.opts.Now().Before(*expires) {
		return fmt.Errorf("%w: robot %s expired at %s", ErrBadCredentials, name, expires.UTC().Format(time.RFC3339))
	}
	return nil
}

// Valid reports whether a token subject was issued at may still be used
// (and a refresh token's holder may still get tokens): ErrBadCredentials
// for a user or robot that is gone, a robot that expired, and a robot
// whose secret was rotated after issuedAt (a token's iat, whole seconds).
func (s *Store) Valid(ctx context.Context, subject Subject, issuedAt time.Time) error {
	p, err := s.profile(ctx, subject)
	if err != nil {
		return err
	}
	switch {
	case !p.exists:
		return fmt.Errorf("%w: %s no longer exists", ErrBadCredentials, subject)
	case p.robot && p.expires != nil && !s.opts.Now().Before(*p.expires):
		return fmt.Errorf("%w: robot %s expired", ErrBadCredentials, subject)
	case p.robot && issuedAt.Before(p.rotated.Truncate(time.Second)):
		return fmt.Errorf("%w: robot %s's secret was rotated after the token was issued", ErrBadCredentials, subject)
	case !p.robot && issuedAt.Before(p.created.Truncate(time.Second)):
		// A user deleted and made again under the same name is not the
		// one the token was issued to.
		return fmt.Errorf("%w: user %s was created after the token was issued", ErrBadCredentials, subject)
	}
	return nil
}

// Actions returns what subject may do on repository repo now (from a
// cache at most CacheTTL old), in the order pull, push, delete.
func (s *Store) Actions(ctx context.Context, subject Subject, repo string) ([]string, error) {
	public, err := s.publicNamespaces(ctx)
	if err != nil {
		return nil, err
	}
	ns, _, _ := strings.Cut(repo, "/")
	var allowed []string
	if public[ns] {
		allowed = []string{Pull}
	}
	if subject == "" {
		return allowed, nil
	}
	p, err := s.profile(ctx, subject)
	if err != nil {
		return nil, err
	}
	return union(allowed, p.actions(repo, s.opts.Now())), nil
}

// union merges b into a, in the order pull, push, delete.
func union(a, b []string) []string {
	var out []string
	for _, act := range []string{Pull, Push, Delete} {
		if slices.Contains(a, act) || slices.Contains(b, act) {
			out = append(out, act)
		}
	}
	return out
}

// IsAdmin reports whether subject is a system admin.
func (s *Store) IsAdmin(ctx context.Context, subject Subject) (bool, error) {
	if subject == "" {
		return false, nil
	}
	p, err := s.profile(ctx, subject)
	if err != nil {
		return false, err
	}
	return p.admin, nil
}

// NamespaceRole returns subject's role in namespace ns ("" for none),
// "admin" for system admins.
func (s *Store) NamespaceRole(ctx context.Context, subject Subject, ns string) (string, error) {
	if subject == "" {
		return "", nil
	}
	p, err := s.profile(ctx, subject)
	if err != nil {
		return "", err
	}
	if p.admin {
		return RoleAdmin, nil
	}
	return p.roles[ns], nil
}

// Forget drops what the cache holds, so this server sees a change it made
// at once (other servers see it within CacheTTL).
func (s *Store) Forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.profiles)
	clear(s.logins)
	s.public = nil
	s.gen++
}

// profile is what a subject may do, as loaded at one time.
type profile struct {
	at      time.Time
	exists  bool
	admin   bool
	roles   map[string]string // namespace -> best role (direct or through a group)
	robot   bool
	perms   []Permission // a robot's
	expires *time.Time   // a robot's
	rotated time.Time    // a robot's: when its secret was made
	created time.Time    // a user's: when the account was made
	groups  []string     // an LDAP user's, when known from a login
}

func (p *profile) actions(repo string, now time.Time) []string {
	if !p.exists {
		return nil
	}
	if p.admin {
		return []string{Pull, Push, Delete}
	}
	ns, _, _ := strings.Cut(repo, "/")
	if p.robot {
		if p.expires != nil && !now.Before(*p.expires) {
			return nil
		}
		var out []string
		for _, perm := range p.perms {
			if perm.covers(repo) {
				out = union(out, perm.Actions)
			}
		}
		return out
	}
	return RoleActions(p.roles[ns])
}

// seedGroups notes the groups a login just read from the directory, so
// the next profile load of subject uses them instead of asking again.
func (s *Store) seedGroups(subject string, groups []string) {
	if groups == nil {
		groups = []string{} // nil means "ask the directory"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.profiles[subject] = &profile{groups: groups} // zero time: reloaded on next use
	s.gen++
}

// shared is the context of work that concurrent callers share (a
// single-flight load or check): the first caller's values, not its
// cancellation (its client going away must not fail the others), and a
// bound of its own.
func shared(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}

func (s *Store) profile(ctx context.Context, subject string) (*profile, error) {
	now := s.opts.Now()
	s.mu.Lock()
	cached, gen := s.profiles[subject], s.gen
	s.mu.Unlock()
	if cached != nil && !cached.at.IsZero() && now.Sub(cached.at) < s.opts.CacheTTL {
		return cached, nil
	}
	var seedGroups []string
	if cached != nil && cached.at.IsZero() {
		seedGroups = cached.groups
	}
	// A busy subject's concurrent requests all find the entry lapsed at
	// once: one of them reloads it, the others wait for that.
	if s.lapsedHook != nil {
		s.lapsedHook()
	}
	ch := s.loading.DoChan(subject+"\x00"+strconv.FormatUint(gen, 10), func() (any, error) {
		if s.loadHook != nil {
			s.loadHook()
		}
		ctx, cancel := shared(ctx)
		defer cancel()
		p, err := s.loadProfile(ctx, subject, seedGroups)
		if err != nil {
			return nil, err
		}
		p.at = now
		s.mu.Lock()
		if len(s.profiles) > 100000 {
			clear(s.profiles)
		}
		if s.gen == gen {
			s.profiles[subject] = p
		}
		s.mu.Unlock()
		return p, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*profile), nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

func (s *Store) loadProfile(ctx context.Context, subject string, groups []string) (*profile, error) {
	p := &profile{roles: map[string]string{}}
	if IsRobot(subject) {
		var raw []byte
		err := s.db.QueryRow(ctx, `SELECT permissions, expires_at, rotated_at FROM iam_robots WHERE name = $1`, subject).Scan(&raw, &p.expires, &p.rotated)
		if errors.Is(err, pgx.ErrNoRows) {
			return p, nil
		} else if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(raw, &p.perms); err != nil {
			return nil, fmt.Errorf("robot %s: permissions: %w", subject, err)
		}
		p.exists, p.robot = true, true
		return p, nil
	}
	var source string
	err := s.db.QueryRow(ctx, `SELECT source, admin, created_at FROM iam_users WHERE name = $1`, subject).Scan(&source, &p.admin, &p.created)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, nil
	} else if err != nil {
		return nil, err
	}
	p.exists = true
	if source == "ldap" && s.opts.Directory != nil && groups == nil {
		var found bool
		groups, found, err = s.opts.Directory.Groups(ctx, subject)
		if err != nil {
			return nil, fmt.Errorf("groups of %s from the directory: %w", subject, err)
		}
		if !found {
			p.exists, p.admin = false, false
			return p, nil
		}
	}
	rows, err := s.db.Query(ctx, `SELECT namespace, role FROM iam_members
		WHERE (kind = 'user' AND name = $1) OR (kind = 'group' AND name = ANY($2))`, subject, groups)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var ns, role string
		if err := rows.Scan(&ns, &role); err != nil {
			return nil, err
		}
		if roleRank(role) > roleRank(p.roles[ns]) {
			p.roles[ns] = role
		}
	}
	return p, rows.Err()
}

type publicSet struct {
	at    time.Time
	names map[string]bool
}

func (s *Store) publicNamespaces(ctx context.Context) (map[string]bool, error) {
	now := s.opts.Now()
	s.mu.Lock()
	cached := s.public
	s.mu.Unlock()
	if cached != nil && now.Sub(cached.at) < s.opts.CacheTTL {
		return cached.names, nil
	}
	rows, err := s.db.Query(ctx, `SELECT name FROM iam_namespaces WHERE public`)
	if err != nil {
		return nil, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	set := &publicSet{at: now, names: make(map[string]bool, len(names))}
	for _, n := range names {
		set.names[n] = true
	}
	s.mu.Lock()
	s.public = set
	s.mu.Unlock()
	return set.names, nil
}

// Permission is one of a robot's grants: actions on the repositories of
// Namespace ("*": every namespace, system robots only) whose path below
// the namespace matches Repositories (a path.Match pattern; "" or "*":
// all, including nested ones).
type Permission struct {
	Namespace    string   `json:"namespace"`
	Repositories string   `json:"repositories,omitempty"`
	Actions      []string `json:"actions"`
}

func (perm Permission) covers(repo string) bool {
	ns, rest, _ := strings.Cut(repo, "/")
	if perm.Namespace != "*" && perm.Namespace != ns {
		return false
	}
	if perm.Repositories == "" || perm.Repositories == "*" {
		return true
	}
	ok, _ := path.Match(perm.Repositories, rest)
	return ok
}
