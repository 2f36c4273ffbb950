package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/scheduler/api"
)

// resolver resolves an app's image to a digest against the Gaia registry
// (a HEAD of the manifest with the OCI and Docker Accept headers).
type resolver struct {
	host   string // the registry's host:port, as images name it
	client *upstream.Client
}

func newResolver(c RegistryConfig) *resolver {
	u, _ := url.Parse(c.URL)
	return &resolver{host: u.Host, client: upstream.New(upstream.Options{
		URL: c.URL, Username: c.Username, Password: c.Password, MaxRetries: 2, Timeout: 10 * time.Second,
	})}
}

var (
	repoPattern = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	tagPattern  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// split parses "[host/]repo[:tag][@digest]" into repo and reference. A
// host other than the registry's is refused: images come from Gaia.
func (r *resolver) split(image string) (repo, ref string, err error) {
	rest := image
	if first, after, ok := strings.Cut(rest, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		if first != r.host {
			return "", "", fmt.Errorf("%q is not in the Gaia registry (%s): push or mirror it there", image, r.host)
		}
		rest = after
	}
	if name, dgst, ok := strings.Cut(rest, "@"); ok {
		rest, ref = name, dgst
		if i := strings.LastIndex(rest, ":"); i >= 0 {
			rest = rest[:i]
		}
	} else if i := strings.LastIndex(rest, ":"); i >= 0 {
		rest, ref = rest[:i], rest[i+1:]
		if !tagPattern.MatchString(ref) {
			return "", "", fmt.Errorf("%q: tag %q is malformed", image, ref)
		}
	} else {
		ref = "latest"
	}
	if !repoPattern.MatchString(rest) {
		return "", "", fmt.Errorf("%q: repository %q is malformed", image, rest)
	}
	return rest, ref, nil
}

// Resolve returns the image's digest, or an *api.Error naming image.
func (r *resolver) Resolve(ctx context.Context, image string) (string, error) {
	repo, ref, err := r.split(image)
	if err != nil {
		return "", api.Invalid("image", "%v", err)
	}
	d, err := r.client.ManifestDigest(ctx, repo, ref)
	if err != nil {
		var se *upstream.StatusError
		if upstream.IsNotFound(err) {
			return "", api.Invalid("image", "%s is not in the Gaia registry at %s (no manifest %s:%s)", image, r.client.URL(), repo, ref)
		}
		if asStatus(err, &se) && (se.Status == http.StatusUnauthorized || se.Status == http.StatusForbidden) {
			// Not "absent": the scheduler (and so the nodes, whose robot
			// should have the same pulls) may not read it.
			who := "anonymous (registry.username is not set)"
			if u := r.client.Username(); u != "" {
				who = fmt.Sprintf("registry.username %q", u)
			}
			return "", api.Invalid("image", "the Gaia registry at %s refused the scheduler's credential, %s, a pull of %s:%s (%d): give it pull on %s",
				r.client.URL(), who, repo, ref, se.Status, repo)
		}
		return "", api.Unavailable("resolving image %s at %s: %v", image, r.client.URL(), err)
	}
	return d.String(), nil
}

// Pinned is the reference nodes pull: host/repo@digest.
func (r *resolver) Pinned(image, digest string) string {
	repo, _, err := r.split(image)
	if err != nil {
		return image
	}
	return r.host + "/" + repo + "@" + digest
}

func asStatus(err error, se **upstream.StatusError) bool {
	return errors.As(err, se)
}
