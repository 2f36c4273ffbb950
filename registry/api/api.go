// Package api serves the OCI Distribution API v1.1 over Gaia's PostgreSQL
// metadata and a distribution storage driver. Any server can serve any
// request: nothing lives in a server's memory between requests.
//
// Routes: the base endpoint; manifests (GET/HEAD/PUT/DELETE by tag or
// digest); blobs (GET/HEAD with Range, DELETE); blob uploads (monolithic,
// POST then PUT, chunked and streamed PATCH, status, cancel, cross-repository
// mount); tags/list and _catalog with n/last pagination; referrers. Every
// error is the spec's JSON body. Authentication, metrics and logging wrap
// this handler (registry/server); they are not here.
package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/grammar"
	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/replication"
	"github.com/gaia-registry/gaia/registry/uploadsession"
)

// Handler serves the API.
type Handler struct {
	Options
}

// Options are what a Handler serves from.
type Options struct {
	Uploads   *uploadsession.Store
	Blobs     *metadata.Blobs
	Manifests *metadata.Manifests
	Driver    storagedriver.StorageDriver
	Log       *slog.Logger // slog.Default() when nil
	// Replicator, in a multi-IDC cluster, fills blobs this IDC lacks and
	// queues eager replication; nil: one IDC, every blob is local.
	Replicator *replication.Replicator
	// PullThrough, when set, is asked for manifests and blobs a repository
	// lacks (mirror-sync/pullthrough: on-demand mirror rules).
	PullThrough PullThrough
	// Delete allows DELETE of manifests, tags and blobs (storage.delete.enabled);
	// without it they are refused with UNSUPPORTED, as in distribution.
	Delete bool
	// WriteIdle cuts a blob download whose client takes nothing for this
	// long (http.writeidletimeout), releasing its storage reader; 0: never.
	WriteIdle time.Duration
}

// NoPullThroughHeader, on a GET or HEAD, asks for what the registry holds
// only: the mirror worker sends it, so its "is it there yet?" questions do
// not fetch from the upstream under it.
const NoPullThroughHeader = "X-Gaia-No-Pull-Through"

// ErrPullThroughBusy refuses a fetch beyond a mirror rule's bounds: the
// client gets 429 TOOMANYREQUESTS and should retry later.
var ErrPullThroughBusy = errors.New("pull-through: too many fetches under way for this mirror rule")

// pullThroughFailed answers a request whose pull-through of a manifest or
// blob (what) failed. A refusal for being busy is counted by the fetcher's
// metrics, not logged: a flood would fill the log.
func (h *Handler) pullThroughFailed(w http.ResponseWriter, r *http.Request, what, name, ref string, err error) {
	if errors.Is(err, ErrPullThroughBusy) {
		w.Header().Set("Retry-After", "1")
		h.fail(w, r, errcode.ErrorCodeTooManyRequests.WithMessage("the "+what+" is not here yet and too many fetches from the mirror's upstream are under way; retry later"))
		return
	}
	h.Log.Error("pull-through failed", "repository", name, "reference", ref, "err", err)
	h.fail(w, r, errcode.ErrorCodeUnavailable.WithMessage("the "+what+" is not here yet and fetching it from the mirror's upstream failed; retry later"))
}

type pullableKey struct{}

// WithPullable records that a request's credentials may pull only from
// the repositories may accepts: a blob mount without `from` links only
// from those, and the catalog lists only those. The auth middleware sets
// it for scoped credentials (tokens, built-in users); without it a
// request may pull from every repository (no auth, htpasswd users).
func WithPullable(ctx context.Context, may func(repo string) bool) context.Context {
	return context.WithValue(ctx, pullableKey{}, may)
}

// MayPull returns what WithPullable recorded; nil: every repository.
func MayPull(ctx context.Context) func(repo string) bool {
	may, _ := ctx.Value(pullableKey{}).(func(string) bool)
	return may
}

// PullThrough fetches missing content from an upstream registry. false:
// it has nothing for that repository and reference. ErrPullThroughBusy:
// it has too much under way to start another fetch.
type PullThrough interface {
	Manifest(ctx context.Context, repo, ref string) (bool, error)
	Blob(ctx context.Context, repo string, d digest.Digest) (bool, error)
}

// New returns a Handler.
func New(o Options) *Handler {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return &Handler{Options: o}
}

// Route is what a request path names (grammar.Parse). The handler, the
// auth middleware and the metrics all read it from one parse of the raw
// path (RouteOf), so no layer can take a request for another repository
// than the next one does.
type Route = grammar.Route

// Parse splits an API path into its route: grammar.Parse.
func Parse(path string) Route { return grammar.Parse(path) }

type routeKey struct{}

// WithRoute parses r's path once and keeps the route in its context for
// every later layer (RouteOf). The outermost middleware calls it.
func WithRoute(r *http.Request) *http.Request {
	if _, ok := r.Context().Value(routeKey{}).(Route); ok {
		return r
	}
	return r.WithContext(context.WithValue(r.Context(), routeKey{}, Parse(r.URL.Path)))
}

// RouteOf is the route of r: the one WithRoute kept, or a parse of r's
// path when no middleware ran (a Handler used alone).
func RouteOf(r *http.Request) Route {
	if rt, ok := r.Context().Value(routeKey{}).(Route); ok {
		return rt
	}
	return Parse(r.URL.Path)
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rt := RouteOf(r)
	if rt.Kind == "" {
		h.fail(w, r, errcode.ErrorCodeUnsupported.WithMessage("no such API route"))
		return
	}
	if rt.Kind == "base" || rt.Kind == "catalog" {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.fail(w, r, errcode.ErrorCodeUnsupported)
			return
		}
		if rt.Kind == "catalog" {
			h.catalog(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{}"))
		return
	}
	if !grammar.ValidName(rt.Name) {
		h.fail(w, r, errcode.ErrorCodeNameInvalid.WithDetail(map[string]string{"name": rt.Name}))
		return
	}
	name, ref := rt.Name, rt.Ref
	if r.Method == http.MethodDelete && !h.Delete && rt.Kind != "upload" {
		h.fail(w, r, errcode.ErrorCodeUnsupported.WithMessage("deletes are disabled (storage.delete.enabled)"))
		return
	}
	switch rt.Kind {
	case "upload":
		switch {
		case ref == "" && r.Method == http.MethodPost:
			h.startUpload(w, r, name)
		case ref != "" && r.Method == http.MethodPatch:
			h.patchUpload(w, r, name, ref)
		case ref != "" && r.Method == http.MethodPut:
			h.putUpload(w, r, name, ref)
		case ref != "" && r.Method == http.MethodGet:
			h.uploadStatus(w, r, name, ref)
		case ref != "" && r.Method == http.MethodDelete:
			h.cancelUpload(w, r, name, ref)
		default:
			h.fail(w, r, errcode.ErrorCodeUnsupported)
		}
	case "blob":
		d, err := digest.Parse(ref)
		if err != nil {
			h.fail(w, r, errcode.ErrorCodeDigestInvalid.WithDetail(err.Error()))
			return
		}
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			h.getBlob(w, r, name, d)
		case http.MethodDelete:
			h.deleteBlob(w, r, name, d)
		default:
			h.fail(w, r, errcode.ErrorCodeUnsupported)
		}
	case "manifest":
		mref, ok := h.parseReference(w, r, ref)
		if !ok {
			return
		}
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			h.getManifest(w, r, name, mref)
		case http.MethodPut:
			h.putManifest(w, r, name, mref)
		case http.MethodDelete:
			h.deleteManifest(w, r, name, mref)
		default:
			h.fail(w, r, errcode.ErrorCodeUnsupported)
		}
	case "tags":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.fail(w, r, errcode.ErrorCodeUnsupported)
			return
		}
		h.listTags(w, r, name)
	case "referrer":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.fail(w, r, errcode.ErrorCodeUnsupported)
			return
		}
		d, err := digest.Parse(ref)
		if err != nil {
			h.fail(w, r, errcode.ErrorCodeDigestInvalid.WithDetail(err.Error()))
			return
		}
		h.referrers(w, r, name, d)
	}
}

// fail writes the spec's JSON error body. Errors without an OCI code are
// logged and answered, without internals, as UNAVAILABLE when a backend is
// down (unavailable) and otherwise as UNKNOWN.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var coder errcode.ErrorCoder
	if !errors.As(err, &coder) {
		if r.Context().Err() != nil {
			// The client went away (or its body stalled past the idle
			// timeout): no one reads the answer, and it is no server fault.
			h.Log.Debug("request ended by the client", "method", r.Method, "path", r.URL.Path, "err", err)
			errcode.ServeJSON(w, errcode.ErrorCodeUnknown.WithMessage("the request ended before it was served"))
			return
		}
		if down, ok := unavailable(err); ok {
			h.Log.Warn("request failed: backend unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
			err = down
		} else {
			h.Log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			err = errcode.ErrorCodeUnknown
		}
	}
	errcode.ServeJSON(w, err)
}
