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
	DB        *pgxpool.Pool // rules and metadata
	LockDB    *pgxpool.Pool // manifest fetches' advisory locks (a pool of its own: fetches hold a connection)
	// BlobLockDB holds blob fetches' locks (required): another pool than
	// LockDB, so manifest fetches waiting for their blobs can never take
	// every connection the blob fetches need.
	BlobLockDB *pgxpool.Pool
	Manifests *metadata.Manifests
	Blobs     *metadata.Blobs
	Uploads   *uploadsession.Store
	Log       *slog.Logger
	// RulesTTL is how long the on-demand rules are cached (default 5s).
	RulesTTL time.Duration
	// Timeout bounds one fetch, all of an image's blobs included (default 30m).
	Timeout  time.Duration
	Upstream func(rule.Upstream) *upstream.Client // default upstream.New
	Metrics  prometheus.Registerer                // nil: no metrics
}

// Fetcher is the registry's pull-through.
type Fetcher struct {
	o     Options
	store *store.Store
	group singleflight.Group

	mu      sync.Mutex
	rules   []rule.Rule
	loaded  time.Time
	clients map[rule.Upstream]*upstream.Client
	tags    map[string]tagList // upstream URL + repository → its tags, for tags.latest

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
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Upstream == nil {
		o.Upstream = func(u rule.Upstream) *upstream.Client {
			return upstream.New(upstream.Options{URL: u.URL, Username: u.Username, Password: u.Password, Concurrency: u.Concurrency})
		}
	}
	f := &Fetcher{o: o, store: store.New(o.DB), clients: map[rule.Upstream]*upstream.Client{}, tags: map[string]tagList{}}
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
// time (the callers wait for it), outside the mutex; on a failure the
// old ones serve until the next TTL.
func (f *Fetcher) rulesNow(ctx context.Context) []rule.Rule {
	f.mu.Lock()
	rules, stale := f.rules, time.Since(f.loaded) > f.o.RulesTTL
	f.mu.Unlock()
	if !stale {
		return rules
	}
	v, _, _ := f.group.Do("\x00rules", func() (any, error) {
		entries, err := f.store.List(ctx)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.loaded = time.Now()
		if err != nil {
			f.o.Log.Warn("pull-through: reading mirror rules", "err", err)
			return f.rules, nil
		}
		fresh := make([]rule.Rule, 0, len(entries))
		for _, e := range entries {
			if e.Rule.OnDemand && e.Rule.Enabled && e.Rule.Validate() == nil {
				fresh = append(fresh, e.Rule)
			}
		}
		f.rules = fresh
		return fresh, nil
	})
	return v.([]rule.Rule)
}

// match finds the on-demand rule whose namespace holds repo and returns a
// copy of it with the upstream repository's name.
func (f *Fetcher) match(ctx context.Context, repo string) (rule.Rule, string, bool) {
	for _, r := range f.rulesNow(ctx) {
		up := repo
		if r.Destination != "" {
			var ok bool
			if up, ok = strings.CutPrefix(repo, r.Destination+"/"); !ok {
				continue
			}
		}
		if r.MatchRepository(up) {
			return r, up, true
		}
	}
	return rule.Rule{}, "", false
}

func (f *Fetcher) client(u rule.Upstream) *upstream.Client {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.clients[u]
	if !ok {
		c = f.o.Upstream(u)
		f.clients[u] = c
	}
	return c
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
		unlock, err := lock(fctx, pool, key)
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

// lock takes the advisory lock named key on a connection of pool.
func lock(ctx context.Context, pool *pgxpool.Pool, key string) (unlock func(), err error) {
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		var got bool
		err = conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, key).Scan(&got)
		if err == nil && got {
			return func() {
				uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, key); err != nil {
					conn.Conn().Close(uctx) // the session would keep the lock: end it
				}
				conn.Release()
			}, nil
		}
		conn.Release()
		if err != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// Manifest fetches manifest ref (a tag or digest) of repo from its rule's
// upstream and stores it. false: repo is under no on-demand rule, the tag
// is not selected, or the upstream has no such manifest.
func (f *Fetcher) Manifest(ctx context.Context, repo, ref string) (bool, error) {
	r, upRepo, ok := f.match(ctx, repo)
	if !ok {
		return false, nil
	}
	d, byDigest := digest.Parse(ref)
	if byDigest != nil {
		ok, err := f.selected(ctx, &r, upRepo, ref)
		if err != nil || !ok {
			return false, err
		}
	}
	ok, err := f.once(ctx, f.o.LockDB, "gaia-pullthrough:manifest:"+repo+"@"+ref, func(ctx context.Context) (bool, error) {
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
		up := f.client(r.Upstream)
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
		// The image's blobs at once (the upstream client bounds the
		// requests): the first pull waits for the slowest, not the sum.
		g, gctx := errgroup.WithContext(ctx)
		for _, b := range m.BlobDescriptors {
			g.Go(func() error {
				_, err := f.blob(gctx, up, upRepo, repo, b, false)
				return err
			})
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
	at   time.Time
}

// selected reports whether the rule's tag selection takes tag. With
// tags.latest, that depends on the upstream's other tags: their list is
// asked for (once per RulesTTL and repository, shared by the callers).
func (f *Fetcher) selected(ctx context.Context, r *rule.Rule, upRepo, tag string) (bool, error) {
	if r.Tags.Latest == 0 {
		return len(r.SelectTags([]string{tag})) == 1, nil
	}
	up := f.client(r.Upstream)
	key := up.URL() + "/" + upRepo
	f.mu.Lock()
	tl, ok := f.tags[key]
	f.mu.Unlock()
	if !ok || time.Since(tl.at) > f.o.RulesTTL {
		v, err, _ := f.group.Do("\x00tags "+key, func() (any, error) {
			tags, err := up.Tags(ctx, upRepo)
			if err != nil {
				return nil, err
			}
			f.mu.Lock()
			if len(f.tags) > 10000 { // forget what is stale
				for k, v := range f.tags {
					if time.Since(v.at) > f.o.RulesTTL {
						delete(f.tags, k)
					}
				}
			}
			f.tags[key] = tagList{tags, time.Now()}
			f.mu.Unlock()
			return tags, nil
		})
		if upstream.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		tl.tags = v.([]string)
	}
	return slices.Contains(r.SelectTags(tl.tags), tag), nil
}

// Blob fetches blob d of repo from its rule's upstream; false when repo
// is under no on-demand rule or the upstream's repository has no such
// blob. The upstream is asked first even when Gaia holds the blob
// elsewhere: linking it otherwise would let anyone who may pull from the
// rule's namespace read any blob of the registry by digest.
func (f *Fetcher) Blob(ctx context.Context, repo string, d digest.Digest) (bool, error) {
	r, upRepo, ok := f.match(ctx, repo)
	if !ok {
		return false, nil
	}
	return f.blob(ctx, f.client(r.Upstream), upRepo, repo, v1.Descriptor{Digest: d, Size: -1}, true)
}

// blob makes repo hold blob b: linked if the registry has it anywhere,
// otherwise copied from the upstream (once across servers) into storage
// through an upload session, which checks the digest before the blob
// becomes visible. askFirst: only if the upstream repository has it (a
// HEAD, once for all who ask; false when it has not).
func (f *Fetcher) blob(ctx context.Context, up *upstream.Client, upRepo, repo string, b v1.Descriptor, askFirst bool) (bool, error) {
	if !askFirst {
		if _, err := f.o.Blobs.Mount(ctx, repo, "", b.Digest); err == nil {
			return true, nil
		} else if !errors.Is(err, metadata.ErrNotFound) {
			return false, err
		}
	}
	// Keyed by where it comes from too: a fetch that another rule's
	// upstream refused must not answer for this one.
	key := "gaia-pullthrough:blob:" + up.URL() + "/" + upRepo + "@" + b.Digest.String()
	if askFirst {
		key += "?ask"
	}
	found, err := f.once(ctx, f.o.BlobLockDB, key, func(ctx context.Context) (bool, error) {
		if askFirst {
			if ok, err := up.BlobExists(ctx, upRepo, b.Digest); err != nil || !ok {
				if err == nil {
					f.fetches.WithLabelValues("blob", "absent").Inc()
				}
				return false, err
			}
		}
		if _, err := f.o.Blobs.Mount(ctx, repo, "", b.Digest); err == nil {
			return true, nil
		} else if !errors.Is(err, metadata.ErrNotFound) {
			return false, err
		}
		rc, err := up.Blob(ctx, upRepo, b.Digest, b.Size)
		if err != nil {
			return false, err
		}
		defer rc.Close()
		sess, err := f.o.Uploads.Start(ctx, repo)
		if err != nil {
			return false, err
		}
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
		return false, err
	}
	if !found {
		return false, nil
	}
	// The blob may have been fetched under another repository's name.
	if _, err := f.o.Blobs.Mount(ctx, repo, "", b.Digest); err != nil {
		return false, err
	}
	return true, nil
}
