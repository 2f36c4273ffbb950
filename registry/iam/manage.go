package iam

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/crypto/bcrypt"
)

var (
	userRE      = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._@-]{0,63}$`)
	namespaceRE = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$`)
	robotRE     = regexp.MustCompile(`^[a-z0-9]+([._-][a-z0-9]+)*$`)
	groupRE     = regexp.MustCompile(`^[^\x00-\x1f]{1,256}$`)
)

// MaxPage bounds every list.
const MaxPage = 1000

func pageSize(n int) int {
	if n <= 0 || n > MaxPage {
		return 100
	}
	return n
}

// page cuts a list read with limit n+1 to n, returning the cursor of the
// next page ("" when none).
func page[T any](items []T, n int, key func(T) string) ([]T, string) {
	if len(items) <= n {
		return items, ""
	}
	items = items[:n]
	return items, key(items[n-1])
}

func uniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

func foreignKeyViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23503"
}

// User is a user account (never its password).
type User struct {
	Name      string    `json:"name"`
	Source    string    `json:"source"` // local or ldap
	Admin     bool      `json:"admin"`
	CreatedAt time.Time `json:"created_at"`
}

// CreateUser adds a local user.
func (s *Store) CreateUser(ctx context.Context, name, password string, admin bool) (User, error) {
	if !userRE.MatchString(name) {
		return User{}, fieldErr("name", "%q is not a user name (letters, digits, '.', '_', '@', '-'; at most 64)", name)
	}
	if len(password) < 8 || len(password) > 72 {
		return User{}, fieldErr("password", "must be 8 to 72 bytes long")
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), s.opts.BcryptCost)
	if err != nil {
		return User{}, err
	}
	u := User{Name: name, Source: "local", Admin: admin}
	err = s.db.QueryRow(ctx, `INSERT INTO iam_users (name, source, password_hash, admin, created_at) VALUES ($1, 'local', $2, $3, $4)
		RETURNING created_at`, name, string(hash), admin, s.opts.Now()).Scan(&u.CreatedAt)
	if uniqueViolation(err) {
		return User{}, &FieldError{Field: "name", Reason: "user " + name + " exists already", Conflict: true}
	}
	s.Forget()
	return u, err
}

// UpdateUser changes a user's password (local users; "" keeps it) and/or
// admin flag (nil keeps it). An LDAP user may be made admin once their
// first login has recorded them.
func (s *Store) UpdateUser(ctx context.Context, name, password string, admin *bool) (User, error) {
	if password != "" {
		if len(password) < 8 || len(password) > 72 {
			return User{}, fieldErr("password", "must be 8 to 72 bytes long")
		}
		hash, err := bcrypt.GenerateFromPassword([]byte(password), s.opts.BcryptCost)
		if err != nil {
			return User{}, err
		}
		tag, err := s.db.Exec(ctx, `UPDATE iam_users SET password_hash = $2, updated_at = now()
			WHERE name = $1 AND source = 'local'`, name, string(hash))
		if err != nil {
			return User{}, err
		}
		if tag.RowsAffected() == 0 {
			return User{}, fieldErr("password", "user %s is not a local user (or does not exist)", name)
		}
	}
	if admin != nil {
		if _, err := s.db.Exec(ctx, `UPDATE iam_users SET admin = $2, updated_at = now() WHERE name = $1`, name, *admin); err != nil {
			return User{}, err
		}
	}
	s.Forget()
	return s.GetUser(ctx, name)
}

// GetUser returns one user.
func (s *Store) GetUser(ctx context.Context, name string) (User, error) {
	u := User{Name: name}
	err := s.db.QueryRow(ctx, `SELECT source, admin, created_at FROM iam_users WHERE name = $1`, name).
		Scan(&u.Source, &u.Admin, &u.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return User{}, ErrNotFound
	}
	return u, err
}

// DeleteUser removes a user and their memberships.
func (s *Store) DeleteUser(ctx context.Context, name string) error {
	defer s.Forget()
	return s.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM iam_users WHERE name = $1`, name)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		_, err = tx.Exec(ctx, `DELETE FROM iam_members WHERE kind = 'user' AND name = $1`, name)
		return err
	})
}

// ListUsers pages through users by name, after `after`.
func (s *Store) ListUsers(ctx context.Context, after string, n int) ([]User, string, error) {
	n = pageSize(n)
	rows, err := s.db.Query(ctx, `SELECT name, source, admin, created_at FROM iam_users
		WHERE name > $1 ORDER BY name LIMIT $2`, after, n+1)
	if err != nil {
		return nil, "", err
	}
	users, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (User, error) {
		var u User
		return u, r.Scan(&u.Name, &u.Source, &u.Admin, &u.CreatedAt)
	})
	if err != nil {
		return nil, "", err
	}
	users, next := page(users, n, func(u User) string { return u.Name })
	return users, next, nil
}

// Namespace is a namespace's settings.
type Namespace struct {
	Name        string    `json:"name"`
	Public      bool      `json:"public"`
	Description string    `json:"description"`
	CreatedAt   time.Time `json:"created_at"`
}

// CreateNamespace adds a namespace; owner, if set, becomes its admin.
func (s *Store) CreateNamespace(ctx context.Context, name string, public bool, description, owner string) (Namespace, error) {
	if !namespaceRE.MatchString(name) || len(name) > 255 {
		return Namespace{}, fieldErr("name", "%q is not a namespace name (a repository path component: lower-case letters and digits, separated by '.', '_', '__' or '-')", name)
	}
	ns := Namespace{Name: name, Public: public, Description: description}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO iam_namespaces (name, public, description) VALUES ($1, $2, $3)
			RETURNING created_at`, name, public, description).Scan(&ns.CreatedAt)
		if uniqueViolation(err) {
			return &FieldError{Field: "name", Reason: "namespace " + name + " exists already", Conflict: true}
		}
		if err != nil || owner == "" {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO iam_members (namespace, kind, name, role) VALUES ($1, 'user', $2, 'admin')`, name, owner)
		return err
	})
	s.Forget()
	return ns, err
}

// UpdateNamespace changes visibility and/or description (nil: unchanged).
func (s *Store) UpdateNamespace(ctx context.Context, name string, public *bool, description *string) (Namespace, error) {
	var ns Namespace
	err := s.db.QueryRow(ctx, `UPDATE iam_namespaces SET public = coalesce($2, public), description = coalesce($3, description)
		WHERE name = $1 RETURNING name, public, description, created_at`, name, public, description).
		Scan(&ns.Name, &ns.Public, &ns.Description, &ns.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return ns, ErrNotFound
	}
	s.Forget()
	return ns, err
}

// GetNamespace returns one namespace.
func (s *Store) GetNamespace(ctx context.Context, name string) (Namespace, error) {
	var ns Namespace
	err := s.db.QueryRow(ctx, `SELECT name, public, description, created_at FROM iam_namespaces WHERE name = $1`, name).
		Scan(&ns.Name, &ns.Public, &ns.Description, &ns.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return ns, ErrNotFound
	}
	return ns, err
}

// DeleteNamespace removes a namespace with its members and robots (not
// its repositories: delete those first, or let retention do it).
func (s *Store) DeleteNamespace(ctx context.Context, name string) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM iam_namespaces WHERE name = $1`, name)
	if err == nil && tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	s.Forget()
	return err
}

// ListNamespaces pages through namespaces by name.
func (s *Store) ListNamespaces(ctx context.Context, after string, n int) ([]Namespace, string, error) {
	n = pageSize(n)
	rows, err := s.db.Query(ctx, `SELECT name, public, description, created_at FROM iam_namespaces
		WHERE name > $1 ORDER BY name LIMIT $2`, after, n+1)
	if err != nil {
		return nil, "", err
	}
	nss, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Namespace, error) {
		var ns Namespace
		return ns, r.Scan(&ns.Name, &ns.Public, &ns.Description, &ns.CreatedAt)
	})
	if err != nil {
		return nil, "", err
	}
	nss, next := page(nss, n, func(ns Namespace) string { return ns.Name })
	return nss, next, nil
}

// Member is a user or LDAP group with a role in a namespace.
type Member struct {
	Kind string `json:"kind"` // user or group
	Name string `json:"name"`
	Role string `json:"role"`
}

func (m Member) key() string { return m.Kind + ":" + m.Name }

// SetMember adds a member or changes their role; it returns whether the
// member existed before.
func (s *Store) SetMember(ctx context.Context, ns string, m Member) (existed bool, err error) {
	switch m.Kind {
	case "user":
		if !userRE.MatchString(m.Name) {
			return false, fieldErr("name", "%q is not a user name", m.Name)
		}
	case "group":
		if !groupRE.MatchString(m.Name) {
			return false, fieldErr("name", "a group name is 1 to 256 printable characters")
		}
	default:
		return false, fieldErr("kind", "%q: user or group", m.Kind)
	}
	if RoleActions(m.Role) == nil {
		return false, fieldErr("role", "%q: one of %s", m.Role, strings.Join(Roles, ", "))
	}
	err = s.db.QueryRow(ctx, `INSERT INTO iam_members (namespace, kind, name, role) VALUES ($1, $2, $3, $4)
		ON CONFLICT (namespace, kind, name) DO UPDATE SET role = EXCLUDED.role
		RETURNING xmax <> 0`, ns, m.Kind, m.Name, m.Role).Scan(&existed)
	if foreignKeyViolation(err) {
		return false, ErrNotFound
	}
	s.Forget()
	return existed, err
}

// RemoveMember removes a member from a namespace.
func (s *Store) RemoveMember(ctx context.Context, ns, kind, name string) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM iam_members WHERE namespace = $1 AND kind = $2 AND name = $3`, ns, kind, name)
	if err == nil && tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	s.Forget()
	return err
}

// ListMembers pages through a namespace's members by kind and name; after
// is the previous page's cursor ("kind:name").
func (s *Store) ListMembers(ctx context.Context, ns, after string, n int) ([]Member, string, error) {
	if _, err := s.GetNamespace(ctx, ns); err != nil {
		return nil, "", err
	}
	n = pageSize(n)
	kind, name, _ := strings.Cut(after, ":")
	rows, err := s.db.Query(ctx, `SELECT kind, name, role FROM iam_members
		WHERE namespace = $1 AND (kind, name) > ($2, $3) ORDER BY kind, name LIMIT $4`, ns, kind, name, n+1)
	if err != nil {
		return nil, "", err
	}
	ms, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Member, error) {
		var m Member
		return m, r.Scan(&m.Kind, &m.Name, &m.Role)
	})
	if err != nil {
		return nil, "", err
	}
	ms, next := page(ms, n, Member.key)
	return ms, next, nil
}

// Robot is a robot account (never its secret).
type Robot struct {
	Name        string       `json:"name"`
	Namespace   string       `json:"namespace,omitempty"` // "": system-wide
	Permissions []Permission `json:"permissions"`
	Description string       `json:"description"`
	ExpiresAt   *time.Time   `json:"expires_at,omitempty"`
	CreatedAt   time.Time    `json:"created_at"`
	RotatedAt   time.Time    `json:"rotated_at"`
}

// RobotName is the account name of robot short in namespace ns ("":
// system-wide).
func RobotName(ns, short string) string {
	if ns == "" {
		return RobotPrefix + short
	}
	return RobotPrefix + ns + "+" + short
}

// RobotSpec is what creating a robot takes.
type RobotSpec struct {
	Name        string       `json:"name"` // the short name
	Permissions []Permission `json:"permissions"`
	Description string       `json:"description"`
	ExpiresAt   *time.Time   `json:"expires_at"`
}

func (spec RobotSpec) check(ns string, now time.Time) error {
	if !robotRE.MatchString(spec.Name) || len(spec.Name) > 64 {
		return fieldErr("name", "%q is not a robot name (lower-case letters and digits, separated by '.', '_' or '-')", spec.Name)
	}
	if len(spec.Permissions) == 0 {
		return fieldErr("permissions", "at least one")
	}
	for i, perm := range spec.Permissions {
		f := func(k string) string { return "permissions[" + strconv.Itoa(i) + "]." + k }
		switch {
		case ns != "" && perm.Namespace != ns:
			return fieldErr(f("namespace"), "a robot of namespace %s can only have permissions on it, not on %q", ns, perm.Namespace)
		case ns == "" && perm.Namespace != "*" && !namespaceRE.MatchString(perm.Namespace):
			return fieldErr(f("namespace"), "%q is neither a namespace name nor *", perm.Namespace)
		}
		if _, err := path.Match(perm.Repositories, ""); err != nil {
			return fieldErr(f("repositories"), "bad pattern %q: %v", perm.Repositories, err)
		}
		if len(perm.Actions) == 0 {
			return fieldErr(f("actions"), "at least one of pull, push, delete")
		}
		for _, a := range perm.Actions {
			if a != Pull && a != Push && a != Delete {
				return fieldErr(f("actions"), "%q: one of pull, push, delete", a)
			}
		}
	}
	if spec.ExpiresAt != nil && !spec.ExpiresAt.After(now) {
		return fieldErr("expires_at", "%s is not in the future", spec.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return nil
}

// newSecret makes a robot secret: 32 random bytes, base64url.
func newSecret() (secret string, hash []byte) {
	b := make([]byte, 32)
	rand.Read(b)
	secret = base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(secret))
	return secret, sum[:]
}

// CreateRobot adds a robot to namespace ns ("": system-wide) and returns
// it with its secret, which is not stored and cannot be read again.
func (s *Store) CreateRobot(ctx context.Context, ns string, spec RobotSpec) (Robot, string, error) {
	if err := spec.check(ns, s.opts.Now()); err != nil {
		return Robot{}, "", err
	}
	perms, _ := json.Marshal(spec.Permissions)
	secret, hash := newSecret()
	r := Robot{Name: RobotName(ns, spec.Name), Namespace: ns, Permissions: spec.Permissions,
		Description: spec.Description, ExpiresAt: spec.ExpiresAt}
	var nsArg *string
	if ns != "" {
		nsArg = &ns
	}
	err := s.db.QueryRow(ctx, `INSERT INTO iam_robots (name, namespace, secret_hash, permissions, description, expires_at, rotated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING created_at, rotated_at`,
		r.Name, nsArg, hash, perms, spec.Description, spec.ExpiresAt, s.opts.Now()).Scan(&r.CreatedAt, &r.RotatedAt)
	switch {
	case uniqueViolation(err):
		return Robot{}, "", &FieldError{Field: "name", Reason: "robot " + r.Name + " exists already", Conflict: true}
	case foreignKeyViolation(err):
		return Robot{}, "", ErrNotFound
	case err != nil:
		return Robot{}, "", err
	}
	s.Forget()
	return r, secret, nil
}

// RotateRobot gives a robot a new secret (the old one stops working at
// once on this server, within the cache bound elsewhere) and returns it.
func (s *Store) RotateRobot(ctx context.Context, name string) (string, error) {
	secret, hash := newSecret()
	// The servers' clock, as the tokens' iat Valid compares it with.
	tag, err := s.db.Exec(ctx, `UPDATE iam_robots SET secret_hash = $2, rotated_at = $3 WHERE name = $1`, name, hash, s.opts.Now())
	if err == nil && tag.RowsAffected() == 0 {
		return "", ErrNotFound
	}
	s.Forget()
	return secret, err
}

// DeleteRobot removes a robot.
func (s *Store) DeleteRobot(ctx context.Context, name string) error {
	tag, err := s.db.Exec(ctx, `DELETE FROM iam_robots WHERE name = $1`, name)
	if err == nil && tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	s.Forget()
	return err
}

// GetRobot returns one robot.
func (s *Store) GetRobot(ctx context.Context, name string) (Robot, error) {
	robots, err := s.listRobots(ctx, `name = $1`, name)
	if err != nil {
		return Robot{}, err
	}
	if len(robots) == 0 {
		return Robot{}, ErrNotFound
	}
	return robots[0], nil
}

// ListRobots pages through the robots of namespace ns ("": system-wide
// ones) by name.
func (s *Store) ListRobots(ctx context.Context, ns, after string, n int) ([]Robot, string, error) {
	n = pageSize(n)
	var robots []Robot
	var err error
	if ns == "" {
		robots, err = s.listRobots(ctx, `namespace IS NULL AND name > $1 ORDER BY name LIMIT $2`, after, n+1)
	} else {
		robots, err = s.listRobots(ctx, `namespace = $3 AND name > $1 ORDER BY name LIMIT $2`, after, n+1, ns)
	}
	if err != nil {
		return nil, "", err
	}
	robots, next := page(robots, n, func(r Robot) string { return r.Name })
	return robots, next, nil
}

// listRobots reads robots; where is a constant condition over args.
func (s *Store) listRobots(ctx context.Context, where string, args ...any) ([]Robot, error) {
	rows, err := s.db.Query(ctx, `SELECT name, coalesce(namespace, ''), permissions, description, expires_at, created_at, rotated_at
		FROM iam_robots WHERE `+where, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Robot, error) {
		var rb Robot
		var raw []byte
		if err := r.Scan(&rb.Name, &rb.Namespace, &raw, &rb.Description, &rb.ExpiresAt, &rb.CreatedAt, &rb.RotatedAt); err != nil {
			return rb, err
		}
		return rb, json.Unmarshal(raw, &rb.Permissions)
	})
}

func (s *Store) tx(ctx context.Context, f func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.db, f)
}
