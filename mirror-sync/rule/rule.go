// Package rule is what an admin says to mirror: an upstream registry, which
// of its repositories and tags, which platforms of multi-arch images, where
// they land in Gaia, and when. It validates rules (errors name the field)
// and answers the selection questions a mirror worker asks; it does not
// talk to registries or the database.
package rule

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"
	"github.com/robfig/cron/v3"
)

// Rule is one mirror rule, as the admin API reads and writes it (JSON).
type Rule struct {
	Name     string   `json:"name"`
	Upstream Upstream `json:"upstream"`
	// Repositories selects upstream repositories: each entry an exact name
	// ("library/nginx"), a glob ("library/*", path.Match syntax) or a
	// regular expression between slashes ("/library/(redis|nginx)/"),
	// which must match the whole name.
	Repositories []string `json:"repositories"`
	Exclude      []string `json:"exclude,omitempty"` // same syntax; wins over Repositories
	Tags         Tags     `json:"tags"`
	// Platforms ("linux/amd64", "linux/arm64/v8") limits which children of
	// a multi-arch index are copied. The index itself is copied unchanged,
	// so a tag's digest is the upstream's whatever the filter.
	Platforms []string `json:"platforms,omitempty"`
	// Destination is the namespace in Gaia: upstream "library/nginx" lands
	// at Destination + "/library/nginx" (empty: the same name; an
	// on-demand rule then names its repositories exactly).
	Destination string `json:"destination,omitempty"`
	// Schedule is an interval ("30m") or a cron expression ("0 */6 * * *").
	Schedule string `json:"schedule"`
	Enabled  bool   `json:"enabled"`
	// OnDemand makes the rule's repositories pull-through: a pull of
	// missing content fetches it from the upstream during the request.
	OnDemand bool `json:"on_demand,omitempty"`
}

// Upstream is the registry mirrored from. The password is write-only: it
// is never logged nor returned by the API (Redacted).
type Upstream struct {
	URL      string `json:"url"` // https://registry-1.docker.io, http://10.0.0.5:5000
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// Concurrency bounds requests in flight to this upstream (default 4).
	Concurrency int `json:"concurrency,omitempty"`
}

// Tags selects tags; all given conditions apply. Nothing set: every tag.
type Tags struct {
	Regex  string `json:"regex,omitempty"`  // tags matching this regular expression
	Semver string `json:"semver,omitempty"` // tags that are versions in this range (">=1.20 <2")
	Latest int    `json:"latest,omitempty"` // then only the N highest versions (tags that are no version count as oldest)
}

// FieldError is an invalid rule field.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func bad(field, format string, a ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, a...)}
}

// Decode reads a rule from JSON: one object, unknown fields refused (by
// name).
func Decode(data []byte) (*Rule, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r Rule
	if err := dec.Decode(&r); err != nil {
		var se *json.UnmarshalTypeError
		if errors.As(err, &se) && se.Field == "" {
			return nil, bad("(body)", "must be a JSON object, not %s", se.Value)
		}
		if errors.As(err, &se) {
			return nil, bad(se.Field, "must be a %s", se.Type)
		}
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			if u, err := strconv.Unquote(f); err == nil {
				f = u
			}
			if f == "" {
				return nil, bad("(body)", `unknown field ""`)
			}
			return nil, bad(f, "unknown field")
		}
		return nil, bad("(body)", "not a JSON rule: %v", err)
	}
	// Anything after the object was once ignored: a second rule pasted
	// into the body would have been dropped without a word.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, bad("(body)", "more than one JSON value")
	}
	return &r, nil
}

var (
	nameRe      = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)
	namespaceRe = regexp.MustCompile(`^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$`)
	platformRe  = regexp.MustCompile(`^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$`)
)

// Validate checks every field and fills defaults.
func (r *Rule) Validate() error {
	if !nameRe.MatchString(r.Name) {
		return bad("name", "%q must be 1-63 lower-case letters, digits, '.', '_' or '-'", r.Name)
	}
	u, err := url.Parse(r.Upstream.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return bad("upstream.url", "%q must be http(s)://host[:port]", u.Redacted())
	}
	if u.User != nil {
		return bad("upstream.url", "credentials go in upstream.username and upstream.password, not in the URL")
	}
	if (r.Upstream.Username == "") != (r.Upstream.Password == "") {
		return bad("upstream.password", "username and password go together")
	}
	if r.Upstream.Concurrency == 0 {
		r.Upstream.Concurrency = 4
	}
	if r.Upstream.Concurrency < 1 || r.Upstream.Concurrency > 64 {
		return bad("upstream.concurrency", "must be 1-64")
	}
	if len(r.Repositories) == 0 {
		return bad("repositories", "at least one name, glob or /regex/")
	}
	for i, p := range r.Repositories {
		if _, err := compilePattern(p); err != nil {
			return bad(fmt.Sprintf("repositories[%d]", i), "%v", err)
		}
	}
	for i, p := range r.Exclude {
		if _, err := compilePattern(p); err != nil {
			return bad(fmt.Sprintf("exclude[%d]", i), "%v", err)
		}
	}
	if r.Tags.Regex != "" {
		if _, err := regexp.Compile(r.Tags.Regex); err != nil {
			return bad("tags.regex", "%v", err)
		}
	}
	if r.Tags.Semver != "" {
		if _, err := semver.NewConstraint(r.Tags.Semver); err != nil {
			return bad("tags.semver", "%v", err)
		}
	}
	if r.Tags.Latest < 0 {
		return bad("tags.latest", "must not be negative")
	}
	for i, p := range r.Platforms {
		if !platformRe.MatchString(p) {
			return bad(fmt.Sprintf("platforms[%d]", i), "%q is not os/arch[/variant]", p)
		}
	}
	if r.Destination != "" && !namespaceRe.MatchString(r.Destination) {
		return bad("destination", "%q is not a repository namespace", r.Destination)
	}
	// Pull-through into the upstream's own names fills whatever a pull
	// misses there: with a pattern, a tag missing from a local repository
	// would be taken from the public upstream's repository of that name
	// (dependency confusion). Without a namespace, only named repositories.
	if r.OnDemand && r.Destination == "" {
		for i, p := range r.Repositories {
			if !exact(p) {
				return bad(fmt.Sprintf("repositories[%d]", i),
					"%q is a pattern: an on-demand rule without a destination must name its repositories exactly (or set destination)", p)
			}
		}
	}
	if _, err := ParseSchedule(r.Schedule); err != nil {
		return bad("schedule", "%v", err)
	}
	return nil
}

// Redacted stands for a password in what the API shows.
const Redacted = "********"

// Redacted is the rule as the API shows it: no password.
func (r Rule) Redacted() Rule {
	if r.Upstream.Password != "" {
		r.Upstream.Password = Redacted
	}
	return r
}

// CarryPassword gives r, an update of the stored rule old that leaves the
// password out (the API never shows it, so clients cannot send it back),
// old's password: for the same username at the same upstream (scheme,
// host and port) only. A stored password is never sent to another host:
// an update that moves the upstream must give it again.
func (r *Rule) CarryPassword(old *Rule) error {
	if (r.Upstream.Password != "" && r.Upstream.Password != Redacted) || r.Upstream.Username != old.Upstream.Username {
		return nil
	}
	if r.Upstream.Username != "" && !sameOrigin(r.Upstream.URL, old.Upstream.URL) {
		return bad("upstream.password", "the upstream moved from %s to %s: give the password again (a stored password is not sent to another host)",
			origin(old.Upstream.URL), origin(r.Upstream.URL))
	}
	r.Upstream.Password = old.Upstream.Password
	return nil
}

// origin is a URL's scheme://host:port, the port explicit.
func origin(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return ""
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[strings.ToLower(u.Scheme)]
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Hostname()) + ":" + port
}

func sameOrigin(a, b string) bool { o := origin(a); return o != "" && o == origin(b) }

// pattern matches repository names.
type pattern func(string) bool

func compilePattern(p string) (pattern, error) {
	switch {
	case p == "":
		return nil, errors.New("empty pattern")
	case isRegex(p):
		body := p[1 : len(p)-1]
		if _, err := regexp.Compile(body); err != nil {
			return nil, fmt.Errorf("regex %s: %v", p, err)
		}
		// Anchored, as globs and names are: "/library/nginx/" must not
		// select "evil/library/nginx-x".
		return regexp.MustCompile(`^(?:` + body + `)$`).MatchString, nil
	case strings.ContainsAny(p, "*?["):
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("glob %q: %v", p, err)
		}
		return func(s string) bool { ok, _ := path.Match(p, s); return ok }, nil
	default:
		return func(s string) bool { return s == p }, nil
	}
}

// MatchRepository reports whether the rule mirrors upstream repository
// name (the rule must be valid).
func (r *Rule) MatchRepository(name string) bool {
	for _, p := range r.Exclude {
		if m, _ := compilePattern(p); m(name) {
			return false
		}
	}
	for _, p := range r.Repositories {
		if m, _ := compilePattern(p); m(name) {
			return true
		}
	}
	return false
}

func isRegex(p string) bool {
	return len(p) >= 2 && strings.HasPrefix(p, "/") && strings.HasSuffix(p, "/")
}

// exact reports whether pattern p is a name, not a glob or a regex.
func exact(p string) bool { return !strings.ContainsAny(p, "*?[") && !isRegex(p) }

// Exact lists the repositories named exactly (no glob, no regex): those a
// worker can mirror without listing the upstream's catalog.
func (r *Rule) Exact() []string {
	var out []string
	for _, p := range r.Repositories {
		if exact(p) {
			out = append(out, p)
		}
	}
	return out
}

// Destination name of an upstream repository.
func (r *Rule) DestinationOf(upstream string) string {
	if r.Destination == "" {
		return upstream
	}
	return r.Destination + "/" + upstream
}

// SelectTags returns the upstream tags the rule mirrors, sorted.
func (r *Rule) SelectTags(tags []string) []string {
	var re *regexp.Regexp
	if r.Tags.Regex != "" {
		re = regexp.MustCompile(r.Tags.Regex)
	}
	var cons *semver.Constraints
	if r.Tags.Semver != "" {
		cons, _ = semver.NewConstraint(r.Tags.Semver)
	}
	type tag struct {
		name string
		v    *semver.Version
	}
	var kept []tag
	for _, t := range tags {
		if re != nil && !re.MatchString(t) {
			continue
		}
		v, err := semver.NewVersion(t)
		if cons != nil && (err != nil || !cons.Check(v)) {
			continue
		}
		if err != nil {
			v = nil
		}
		kept = append(kept, tag{t, v})
	}
	// Oldest first: tags that are not versions (by name), then versions
	// ascending, so "the latest N" are the N highest versions.
	sort.Slice(kept, func(i, j int) bool {
		a, b := kept[i], kept[j]
		switch {
		case a.v != nil && b.v != nil:
			if c := a.v.Compare(b.v); c != 0 {
				return c < 0
			}
			return a.name < b.name
		case a.v != nil:
			return false
		case b.v != nil:
			return true
		}
		return a.name < b.name
	})
	if n := r.Tags.Latest; n > 0 && len(kept) > n {
		kept = kept[len(kept)-n:]
	}
	out := make([]string, len(kept))
	for i, t := range kept {
		out[i] = t.name
	}
	sort.Strings(out)
	return out
}

// WantPlatform reports whether a child of a multi-arch index is copied.
func (r *Rule) WantPlatform(os, arch, variant string) bool {
	if len(r.Platforms) == 0 {
		return true
	}
	for _, p := range r.Platforms {
		parts := strings.Split(p, "/")
		if parts[0] == os && parts[1] == arch && (len(parts) == 2 || parts[2] == variant) {
			return true
		}
	}
	return false
}

// Schedule says when a rule runs next.
type Schedule interface {
	Next(after time.Time) time.Time
}

type every time.Duration

func (e every) Next(after time.Time) time.Time { return after.Add(time.Duration(e)) }

// ParseSchedule reads "30m"-style intervals (at least ten seconds) and
// five-field cron expressions.
func ParseSchedule(s string) (Schedule, error) {
	if s == "" {
		return nil, errors.New("required: an interval (30m, 6h) or a cron expression (0 */6 * * *)")
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 10*time.Second {
			return nil, fmt.Errorf("interval %s is shorter than ten seconds", s)
		}
		return every(d), nil
	}
	c, err := cron.ParseStandard(s)
	if err != nil {
		return nil, fmt.Errorf("%q is neither an interval nor a cron expression: %v", s, err)
	}
	// "@every 1s" is cron's too: the same floor as an interval.
	if e, ok := c.(cron.ConstantDelaySchedule); ok && e.Delay < 10*time.Second {
		return nil, fmt.Errorf("interval %s is shorter than ten seconds", e.Delay)
	}
	// A date that never comes (0 0 30 2 *) parses, then gives the zero
	// time as its next run: a rule always due, run back to back.
	if c.Next(time.Now()).IsZero() {
		return nil, fmt.Errorf("%q never runs (no such date within five years)", s)
	}
	return c, nil
}
