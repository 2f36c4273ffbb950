// Package pullthrough fetches content the registry lacks from the upstream
// of an on-demand mirror rule, during the request that asked for it. The
// registry calls it on a miss (a manifest or blob GET/HEAD that found
// nothing) in a repository under such a rule (the rule's destination
// namespace, its repository and tag selection).
//
// One upstream fetch per missing thing, however many pulls ask: concurrent
// requests on one server share a fetch, and servers share a PostgreSQL
// advisory lock per manifest and per blob, re-checking the metadata once
// they hold it. A manifest is stored after every blob it refers to (each
// verified against its digest), in one transaction with its tag, so a
// pull never sees a half-fetched image; an index is stored as it is (its
// digest is the upstream's) and its children are fetched when asked for.
package pullthrough

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/gaia-registry/gaia/mirror-sync/rule"
	"github.com/gaia-registry/gaia/mirror-sync/store"
	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/registry/manifest"
	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/uploadsession"
)

// Options configure a Fetcher.
type Options struct {
	DB *pgxpool.Pool // rules and metadata
	// LockDB holds manifest fetches' advisory locks, BlobLockDB blob
	// fetches' (both required, pools of their own: a fetch holds its
	// lock's connection, and manifest fetches wait for blob fetches, so
	// sharing one pool could deadlock it).
	LockDB, BlobLockDB *pgxpool.Pool
	Manifests          *metadata.Manifests
	Blobs              *metadata.Blobs
	Uploads            *uploadsession.Store
	Log                *slog.Logger
	// RulesTTL is how long the on-demand rules are cached (default 5s),
	// TagsTTL an upstream repository's tag list for tags.latest (default 1m).
	RulesTTL, TagsTTL time.Duration
	// Timeout bounds one fetch, all of an image's blobs included (default 30m).
	Timeout time.Duration
	// MaxDownloads bounds the blob downloads a server runs at once
	// (default 4): each holds a database connection of the registry's
	// pool while it streams (the upload session's row lock).
	MaxDownloads int
	Metrics      prometheus.Registerer // nil: no metrics
}

// Fetcher is the registry's pull-through.
type Fetcher struct {
	o     Options
	store *store.Store
	group singleflight.Group

	mu      sync.Mutex
	rules   []rule.Rule
	loaded  time.Time
	clients upstream.Clients
	tags    map[string]tagList // upstream URL + repository → its tags, for tags.latest

	downloads chan struct{}

	fetches *prometheus.CounterVec
	bytes   prometheus.Counter
}

// New returns a Fetcher.
func New(o Options) *Fetcher {
	if o.RulesTTL == 0 {
		o.RulesTTL = 5 * time.Second
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Minute
	}
	if o.TagsTTL == 0 {
		o.TagsTTL = time.Minute
	}
	if o.MaxDownloads <= 0 {
		o.MaxDownloads = 4
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	f := &Fetcher{o: o, store: store.New(o.DB), tags: map[string]tagList{},
		downloads: make(chan struct{}, o.MaxDownloads)}
	f.fetches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gaia_registry_pullthrough_fetches_total",
		Help: "Pull-through fetches from upstream registries, by kind (manifest, blob) and result (fetched, absent, error).",
	}, []string{"kind", "result"})
	f.bytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gaia_registry_pullthrough_bytes_total", Help: "Blob bytes fetched from upstream registries by pull-through.",
	})
	if o.Metrics != nil {
		o.Metrics.MustRegister(f.fetches, f.bytes)
	}
	return f
}

// rulesNow returns the enabled on-demand rules, read again from the
// database when the cached ones are older than RulesTTL: one reload at a
// time (the callers wait for it), on a context of its own (a caller
// giving up does not fail it for the others). On a failure the old rules
// serve until the next TTL; with none read yet, it is an error.
func (f *Fetcher) rulesNow(ctx context.Context) ([]rule.Rule, error) {
	f.mu.Lock()
	rules, loaded := f.rules, f.loaded
	f.mu.Unlock()
	if time.Since(loaded) <= f.o.RulesTTL {
		return rules, nil
	}
	v, err, _ := f.group.Do("\x00rules", func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		entries, err := f.store.List(lctx)
		f.mu.Lock()
		defer f.mu.Unlock()
		if err != nil {
			f.o.Log.Warn("pull-through: reading mirror rules", "err", err)
			if f.loaded.IsZero() {
				return nil, fmt.Errorf("reading mirror rules: %w", err)
			}
			f.loaded = time.Now()
			return f.rules, nil
		}
		fresh := make([]rule.Rule, 0, len(entries))
		for _, e := range entries {
			if e.Rule.OnDemand && e.Rule.Enabled && e.Rule.Validate() == nil {
				fresh = append(fresh, e.Rule)
			}
		}
		f.rules, f.loaded = fresh, time.Now()
		return fresh, nil
	})
	if err != nil {
		return nil, err
	}
	return v.([]rule.Rule), nil
}

// match finds the on-demand rule whose namespace holds repo and returns a
// copy of it with the upstream repository's name.
func (f *Fetcher) match(ctx context.Context, repo string) (rule.Rule, string, bool, error) {
	rules, err := f.rulesNow(ctx)
	if err != nil {
		return rule.Rule{}, "", false, err
	}
	for _, r := range rules {
		up := repo
		if r.Destination != "" {
			var ok bool
			if up, ok = strings.CutPrefix(repo, r.Destination+"/"); !ok {
				continue
			}
		}
		if r.MatchRepository(up) {
			return r, up, true, nil
		}
	}
	return rule.Rule{}, "", false, nil
}

// once runs fn once for key across this server's concurrent callers and,
// under a PostgreSQL advisory lock taken on a connection of pool, across
// servers. The lock is polled with a try-lock, so a waiter holds no
// connection. Manifest fetches lock on LockDB and, holding that, wait for
// their blobs, which lock on BlobLockDB and wait for nothing: no cycle,
// so no burst of fetches can deadlock the pools. The fetch runs on its
// own context (bounded by the timeout): a client that gives up does not
// cancel it for the others.
func (f *Fetcher) once(ctx context.Context, pool *pgxpool.Pool, key string, fn func(ctx context.Context) (bool, error)) (bool, error) {
	ch := f.group.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.o.Timeout)
		defer cancel()
		unlock, _, err := metadata.AdvisoryLock(fctx, pool, key, nil)
		if err != nil {
			return false, err
		}
		defer unlock()
		return fn(fctx)
	})
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case res := <-ch:
		if res.Err != nil {
			return false, res.Err
		}
		return res.Val.(bool), nil
	}
}

// Manifest fetches manifest ref (a tag or digest) of repo from its rule's
// upstream and stores it. false: repo is under no on-demand rule, the tag
// is not selected, or the upstream has no such manifest.
func (f *Fetcher) Manifest(ctx context.Context, repo, ref string) (bool, error) {
	r, upRepo, ok, err := f.match(ctx, repo)
	if err != nil || !ok {
		return false, err
	}
	d, byDigest := digest.Parse(ref)
	if byDigest != nil {
		ok, err := f.selected(ctx, &r, upRepo, ref)
		if err != nil || !ok {
			return false, err
		}
	}
	ok, err = f.once(ctx, f.o.LockDB, "gaia-pullthrough:manifest:"+repo+"@"+ref, func(ctx context.Context) (bool, error) {
		var err error
		if byDigest == nil {
			_, err = f.o.Manifests.ByDigest(ctx, repo, d)
		} else {
			_, err = f.o.Manifests.ByTag(ctx, repo, ref)
		}
		if err == nil {
			return true, nil // another server fetched it while this one waited
		}
		if !errors.Is(err, metadata.ErrNotFound) {
			return false, err
		}
		up := f.clients.For(r.Upstream)
		body, mt, md, err := up.Manifest(ctx, upRepo, ref)
		if upstream.IsNotFound(err) {
			f.fetches.WithLabelValues("manifest", "absent").Inc()
			return false, nil
		}
		if err != nil {
			return false, err
		}
		m, err := manifest.Parse(mt, body)
		if err != nil {
			return false, fmt.Errorf("upstream manifest %s:%s: %w", upRepo, ref, err)
		}
		// The image's blobs together (up to MaxDownloads, and the
		// upstream client's limit): the first pull waits for the slowest
		// rather than for each in turn.
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(f.o.MaxDownloads)
		for _, b := range m.BlobDescriptors {
			g.Go(func() error { return f.blob(gctx, up, upRepo, repo, b) })
		}
		if err := g.Wait(); err != nil {
			return false, err
		}
		nm := metadata.NewManifest{
			Manifest: metadata.Manifest{Digest: md, MediaType: m.MediaType, ArtifactType: m.ArtifactType,
				Annotations: m.Annotations, Content: body},
			Blobs: m.Blobs, Children: m.Children, Sparse: true,
		}
		if m.Subject != nil {
			nm.Subject = m.Subject.Digest
		}
		if byDigest != nil {
			nm.Tags = []string{ref}
		}
		if err := f.o.Manifests.Put(ctx, repo, nm); err != nil {
			return false, err
		}
		f.fetches.WithLabelValues("manifest", "fetched").Inc()
		f.o.Log.Info("pull-through: manifest fetched", "repository", repo, "reference", ref, "digest", md, "upstream", up.URL())
		return true, nil
	})
	if err != nil {
		f.fetches.WithLabelValues("manifest", "error").Inc()
	}
	return ok, err
}

type tagList struct {
	tags []string
	err  error
	at   time.Time
}

// selected reports whether the rule's tag selection takes tag. With
// tags.latest, that depends on the upstream's other tags: their list is
// asked for once per TagsTTL and repository (a failure, once per five
// seconds), shared by the callers.
func (f *Fetcher) selected(ctx context.Context, r *rule.Rule, upRepo, tag string) (bool, error) {
	if r.Tags.Latest == 0 {
		return len(r.SelectTags([]string{tag})) == 1, nil
	}
	up := f.clients.For(r.Upstream)
	key := fmt.Sprintf("%p/%s", up, upRepo) // per client: per upstream and credentials
	f.mu.Lock()
	tl, ok := f.tags[key]
	f.mu.Unlock()
	if !ok || (tl.err == nil && time.Since(tl.at) > f.o.TagsTTL) || (tl.err != nil && time.Since(tl.at) > 5*time.Second) {
		v, _, _ := f.group.Do("\x00tags "+key, func() (any, error) {
			tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			tags, err := up.Tags(tctx, upRepo)
			fresh := tagList{tags, err, time.Now()}
			f.mu.Lock()
			if len(f.tags) >= 10000 { // a bound: start over
				clear(f.tags)
			}
			f.tags[key] = fresh
			f.mu.Unlock()
			return fresh, nil
		})
		tl = v.(tagList)
	}
	if upstream.IsNotFound(tl.err) {
		return false, nil
	}
	if tl.err != nil {
		return false, tl.err
	}
	return slices.Contains(r.SelectTags(tl.tags), tag), nil
}

// Blob fetches blob d of repo from its rule's upstream; false when repo
// is under no on-demand rule or the upstream's repository has no such
// blob. The upstream is asked first even when Gaia holds the blob
// elsewhere: linking it otherwise would let anyone who may pull from the
// rule's namespace read any blob of the registry by digest.
func (f *Fetcher) Blob(ctx context.Context, repo string, d digest.Digest) (bool, error) {
	r, upRepo, ok, err := f.match(ctx, repo)
	if err != nil || !ok {
		return false, err
	}
	up := f.clients.For(r.Upstream)
	// One HEAD for all who ask at once (per client: upstream and credentials).
	ch := f.group.DoChan(fmt.Sprintf("\x00ask %p/%s@%s", up, upRepo, d), func() (any, error) {
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		return up.BlobExists(hctx, upRepo, d)
	})
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case res := <-ch:
		if res.Err != nil {
			f.fetches.WithLabelValues("blob", "error").Inc()
			return false, res.Err
		}
		if !res.Val.(bool) {
			f.fetches.WithLabelValues("blob", "absent").Inc()
			return false, nil
		}
	}
	return true, f.blob(ctx, up, upRepo, repo, v1.Descriptor{Digest: d, Size: -1})
}

// blob makes repo hold blob b: linked if the registry has it anywhere,
// otherwise copied from the upstream into storage through an upload
// session, which checks the digest before the blob becomes visible. One
// copy per digest across servers (the lock is the digest's, whichever
// rule asks), at most MaxDownloads at once per server.
func (f *Fetcher) blob(ctx context.Context, up *upstream.Client, upRepo, repo string, b v1.Descriptor) error {
	if _, err := f.o.Blobs.MountAny(ctx, repo, b.Digest); err == nil {
		return nil
	} else if !errors.Is(err, metadata.ErrNotFound) {
		return err
	}
	_, err := f.once(ctx, f.o.BlobLockDB, "gaia-pullthrough:blob:"+b.Digest.String(), func(ctx context.Context) (bool, error) {
		if _, err := f.o.Blobs.MountAny(ctx, repo, b.Digest); err == nil {
			return true, nil
		} else if !errors.Is(err, metadata.ErrNotFound) {
			return false, err
		}
		select {
		case f.downloads <- struct{}{}:
			defer func() { <-f.downloads }()
		case <-ctx.Done():
			return false, ctx.Err()
		}
		sess, err := f.o.Uploads.Start(ctx, repo)
		if err != nil {
			return false, err
		}
		rc, err := up.Blob(ctx, upRepo, b.Digest, b.Size)
		if err != nil {
			f.o.Uploads.Cancel(context.WithoutCancel(ctx), repo, sess.ID)
			return false, err
		}
		defer rc.Close()
		blob, err := f.o.Uploads.Finish(ctx, repo, sess.ID, 0, rc, b.Digest)
		if err != nil {
			f.o.Uploads.Cancel(context.WithoutCancel(ctx), repo, sess.ID)
			return false, fmt.Errorf("pull-through of blob %s from %s: %w", b.Digest, up.URL(), err)
		}
		f.bytes.Add(float64(blob.Size))
		f.fetches.WithLabelValues("blob", "fetched").Inc()
		return true, nil
	})
	if err != nil {
		f.fetches.WithLabelValues("blob", "error").Inc()
		return err
	}
	// The blob may have been fetched under another repository's name.
	_, err = f.o.Blobs.MountAny(ctx, repo, b.Digest)
	return err
}
