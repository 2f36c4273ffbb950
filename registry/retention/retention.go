// Package retention applies retention policies to tags: per repository
// pattern, keep the latest N tags (by push time), keep tags matching a
// regex or a semver range, delete tags older than a duration, never delete
// protected tags. A policy can also make tags immutable (enforced by the
// manifest PUT itself: registry/metadata). Deleting a tag goes through the
// same path as a client's DELETE, so garbage collection then reclaims what
// nothing references any more. Policies live in PostgreSQL
// (retention_policies), run on a schedule under a lease (any number of
// servers may try; one runs each due policy), or on demand, dry or not.
package retention

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Spec is a policy as the admin API takes it.
type Spec struct {
	// Repositories: a glob ("team/*": * stops at '/'), a /regex/, or a name.
	Repositories string `json:"repositories"`
	KeepLatest   int    `json:"keep_latest,omitempty"`       // keep the N most recently pushed tags
	KeepTags     string `json:"keep_tags,omitempty"`         // keep tags matching this regex
	KeepSemver   string `json:"keep_semver,omitempty"`       // keep tags that are versions in this range (">=1.2 <2")
	OlderThan    string `json:"delete_older_than,omitempty"` // only tags pushed longer ago than this go ("720h")
	Protect      string `json:"protect,omitempty"`           // never delete tags matching this glob or /regex/ ("release-*")
	Immutable    string `json:"immutable,omitempty"`         // tags matching this regex never move to another digest
	Interval     string `json:"interval,omitempty"`          // run every this long ("24h"); empty: on demand only
	Disabled     bool   `json:"disabled,omitempty"`
}

// FieldError names the spec field at fault.
type FieldError struct{ Field, Reason string }

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func bad(field, format string, a ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, a...)}
}

// compiled is a validated spec.
type compiled struct {
	Spec
	repoRegex string // for PostgreSQL
	repo      *regexp.Regexp
	keep      *regexp.Regexp
	semver    *semver.Constraints
	olderThan time.Duration
	protect   func(string) bool
	immutable *regexp.Regexp
	interval  time.Duration
}

// globRegex turns a glob (path.Match syntax) into an anchored regex.
func globRegex(g string) string {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(g); i++ {
		switch c := g[i]; c {
		case '*':
			b.WriteString("[^/]*")
		case '?':
			b.WriteString("[^/]")
		case '[':
			j := strings.IndexByte(g[i:], ']')
			if j < 0 {
				b.WriteString(`\[`)
				continue
			}
			cls := g[i+1 : i+j]
			if strings.HasPrefix(cls, "^") {
				cls = "^" + strings.ReplaceAll(cls[1:], `\`, `\\`)
			}
			b.WriteString("[" + cls + "]")
			i += j
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return b.String()
}

func isRegex(p string) bool { return len(p) >= 2 && p[0] == '/' && p[len(p)-1] == '/' }

// patternRegex: a glob, a /regex/ or a name, as an anchored regex.
func patternRegex(p string) string {
	if isRegex(p) {
		return "^(?:" + p[1:len(p)-1] + ")$"
	}
	return globRegex(p)
}

func compile(s Spec) (*compiled, error) {
	c := &compiled{Spec: s}
	if s.Repositories == "" {
		return nil, bad("repositories", "required: a glob (team/*), a /regex/ or a name")
	}
	if !isRegex(s.Repositories) {
		if _, err := path.Match(s.Repositories, ""); err != nil {
			return nil, bad("repositories", "glob %q: %v", s.Repositories, err)
		}
	}
	c.repoRegex = patternRegex(s.Repositories)
	var err error
	if c.repo, err = regexp.Compile(c.repoRegex); err != nil {
		return nil, bad("repositories", "%v", err)
	}
	if s.KeepLatest < 0 {
		return nil, bad("keep_latest", "must not be negative")
	}
	if s.KeepTags != "" {
		if c.keep, err = regexp.Compile(s.KeepTags); err != nil {
			return nil, bad("keep_tags", "%v", err)
		}
	}
	if s.KeepSemver != "" {
		if c.semver, err = semver.NewConstraint(s.KeepSemver); err != nil {
			return nil, bad("keep_semver", "%v", err)
		}
	}
	if s.OlderThan != "" {
		if c.olderThan, err = time.ParseDuration(s.OlderThan); err != nil || c.olderThan <= 0 {
			return nil, bad("delete_older_than", "%q is not a positive duration such as 720h", s.OlderThan)
		}
	}
	if s.Protect != "" {
		re, err := regexp.Compile(patternRegex(s.Protect))
		if err != nil {
			return nil, bad("protect", "%v", err)
		}
		c.protect = re.MatchString
	}
	if s.Immutable != "" {
		if c.immutable, err = regexp.Compile(s.Immutable); err != nil {
			return nil, bad("immutable", "%v", err)
		}
	}
	if s.Interval != "" {
		if c.interval, err = time.ParseDuration(s.Interval); err != nil || c.interval < time.Minute {
			return nil, bad("interval", "%q is not a duration of at least 1m", s.Interval)
		}
	}
	return c, nil
}

// Policy is a stored policy and its last run.
type Policy struct {
	Name      string     `json:"name"`
	Spec      Spec       `json:"spec"`
	NextRunAt *time.Time `json:"next_run_at,omitempty"`
	LastRunAt *time.Time `json:"last_run_at,omitempty"`
	LastRun   *Result    `json:"last_result,omitempty"`
}

// Decision is what a run decided about one tag.
type Decision struct {
	Repository string    `json:"repository"`
	Tag        string    `json:"tag"`
	PushedAt   time.Time `json:"pushed_at"`
	Delete     bool      `json:"delete"`
	Reason     string    `json:"reason"`
}

// Result is a run's outcome.
type Result struct {
	DryRun    bool       `json:"dry_run"`
	Deleted   int        `json:"deleted"`
	Kept      int        `json:"kept"`
	Decisions []Decision `json:"decisions"`
	Error     string     `json:"error,omitempty"`
}

// Store keeps policies in PostgreSQL and runs them.
type Store struct {
	DB     *pgxpool.Pool
	Holder string // lease holder name
}

// ErrNotFound: no such policy.
var ErrNotFound = errors.New("no such retention policy")

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// Put creates or replaces a policy.
func (s *Store) Put(ctx context.Context, name string, spec Spec) error {
	if !nameRE.MatchString(name) {
		return bad("name", "%q is not a name of lowercase letters, digits, '.', '_' and '-'", name)
	}
	c, err := compile(spec)
	if err != nil {
		return err
	}
	// PostgreSQL's regex dialect must take them too (it runs them).
	for field, re := range map[string]string{"repositories": c.repoRegex, "immutable": spec.Immutable} {
		if re == "" {
			continue
		}
		if _, err := s.DB.Exec(ctx, `SELECT '' ~ $1`, re); err != nil {
			return bad(field, "PostgreSQL does not take the regex: %v", err)
		}
	}
	var immutable *string
	if spec.Immutable != "" {
		immutable = &spec.Immutable
	}
	raw, _ := json.Marshal(spec)
	var next *time.Time
	if c.interval > 0 {
		t := time.Now().Add(c.interval)
		next = &t
	}
	_, err = s.DB.Exec(ctx, `
		INSERT INTO retention_policies (name, spec, repository_regex, immutable_regex, enabled, next_run_at)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, repository_regex = EXCLUDED.repository_regex,
			immutable_regex = EXCLUDED.immutable_regex, enabled = EXCLUDED.enabled, next_run_at = EXCLUDED.next_run_at,
			updated_at = now()`, name, raw, c.repoRegex, immutable, !spec.Disabled, next)
	return err
}

// Delete removes a policy.
func (s *Store) Delete(ctx context.Context, name string) error {
	tag, err := s.DB.Exec(ctx, `DELETE FROM retention_policies WHERE name = $1`, name)
	if err == nil && tag.RowsAffected() == 0 {
		err = ErrNotFound
	}
	return err
}

// List returns every policy (name "" ) or one.
func (s *Store) List(ctx context.Context, name string) ([]Policy, error) {
	rows, _ := s.DB.Query(ctx, `SELECT name, spec, next_run_at, last_run_at, last_result FROM retention_policies
		WHERE $1 = '' OR name = $1 ORDER BY name`, name)
	ps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Policy, error) {
		var p Policy
		err := r.Scan(&p.Name, &p.Spec, &p.NextRunAt, &p.LastRunAt, &p.LastRun)
		return p, err
	})
	if err == nil && name != "" && len(ps) == 0 {
		err = ErrNotFound
	}
	return ps, err
}

type tagRow struct {
	repoID   int64
	repo     string
	name     string
	pushedAt time.Time
}

// Run applies a policy now (dry: decide only). Deletions are each one
// conditional DELETE of the tag as it was when decided: a tag pushed again
// meanwhile stays.
func (s *Store) Run(ctx context.Context, name string, dry bool) (*Result, error) {
	ps, err := s.List(ctx, name)
	if err != nil {
		return nil, err
	}
	c, err := compile(ps[0].Spec)
	if err != nil {
		return nil, err
	}
	rows, _ := s.DB.Query(ctx, `
		SELECT r.id, r.name, t.name, t.updated_at FROM repositories r JOIN tags t ON t.repository_id = r.id
		WHERE r.name ~ $1 ORDER BY r.name, t.updated_at DESC, t.name`, c.repoRegex)
	tags, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (tagRow, error) {
		var t tagRow
		return t, r.Scan(&t.repoID, &t.repo, &t.name, &t.pushedAt)
	})
	if err != nil {
		return nil, err
	}
	res := &Result{DryRun: dry, Decisions: []Decision{}}
	byRepo := map[string][]tagRow{}
	var repos []string
	for _, t := range tags {
		if _, ok := byRepo[t.repo]; !ok {
			repos = append(repos, t.repo)
		}
		byRepo[t.repo] = append(byRepo[t.repo], t)
	}
	sort.Strings(repos)
	now := time.Now()
	for _, repo := range repos {
		latest := 0
		for _, t := range byRepo[repo] { // newest first
			d := Decision{Repository: repo, Tag: t.name, PushedAt: t.pushedAt}
			switch {
			case c.protect != nil && c.protect(t.name):
				d.Reason = "protected (" + c.Protect + ")"
			case c.keep != nil && c.keep.MatchString(t.name):
				d.Reason = "matches keep_tags"
			case c.semver != nil && inRange(c.semver, t.name):
				d.Reason = "a version in " + c.KeepSemver
			case c.immutable != nil && c.immutable.MatchString(t.name):
				d.Reason = "immutable"
			case c.KeepLatest > 0 && latest < c.KeepLatest:
				latest++
				d.Reason = fmt.Sprintf("among the latest %d", c.KeepLatest)
			case c.olderThan > 0 && now.Sub(t.pushedAt) < c.olderThan:
				d.Reason = "pushed less than " + c.OlderThan + " ago"
			case c.KeepLatest == 0 && c.olderThan == 0:
				d.Reason = "the policy deletes nothing (neither keep_latest nor delete_older_than)"
			default:
				d.Delete = true
				d.Reason = "not among the latest and not kept by any rule"
				if c.olderThan > 0 {
					d.Reason = "pushed more than " + c.OlderThan + " ago and not kept by any rule"
				}
			}
			if d.Delete && !dry {
				tag, err := s.DB.Exec(ctx, `DELETE FROM tags WHERE repository_id = $1 AND name = $2 AND updated_at = $3`,
					t.repoID, t.name, t.pushedAt)
				if err != nil {
					return res, err
				}
				if tag.RowsAffected() == 0 {
					d.Delete = false
					d.Reason = "pushed again during the run"
				}
			}
			if d.Delete {
				res.Deleted++
			} else {
				res.Kept++
			}
			res.Decisions = append(res.Decisions, d)
		}
	}
	return res, nil
}

func inRange(c *semver.Constraints, tag string) bool {
	v, err := semver.NewVersion(tag)
	return err == nil && c.Check(v)
}

// RunDue runs one due scheduled policy, if any, under a lease, and
// records its result; it reports whether it ran one.
func (s *Store) RunDue(ctx context.Context, lease time.Duration) (bool, error) {
	var name string
	err := s.DB.QueryRow(ctx, `
		UPDATE retention_policies SET worker = $1, lease_until = now() + make_interval(secs => $2)
		WHERE name = (SELECT name FROM retention_policies
			WHERE enabled AND next_run_at <= now() AND (lease_until IS NULL OR lease_until < now())
			ORDER BY next_run_at LIMIT 1 FOR UPDATE SKIP LOCKED)
		RETURNING name`, s.Holder, lease.Seconds()).Scan(&name)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	res, runErr := s.Run(ctx, name, false)
	if res == nil {
		res = &Result{}
	}
	if runErr != nil {
		res.Error = runErr.Error()
	}
	every := 24 * time.Hour
	if ps, err := s.List(ctx, name); err == nil {
		if c, err := compile(ps[0].Spec); err == nil && c.interval > 0 {
			every = c.interval
		}
	}
	_, err = s.DB.Exec(context.WithoutCancel(ctx), `
		UPDATE retention_policies SET worker = NULL, lease_until = NULL, last_run_at = now(), last_result = $3,
			next_run_at = now() + make_interval(secs => $4)
		WHERE name = $1 AND worker = $2`, name, s.Holder, res, every.Seconds())
	return true, errors.Join(runErr, err)
}

// Loop runs due policies until ctx ends, looking every idle.
func (s *Store) Loop(ctx context.Context, idle time.Duration, onErr func(error)) {
	for ctx.Err() == nil {
		ran, err := s.RunDue(ctx, 30*time.Minute)
		if err != nil && ctx.Err() == nil && onErr != nil {
			onErr(err)
		}
		if ran {
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(idle):
		}
	}
}
