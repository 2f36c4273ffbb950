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
//
// Anyone who may pull from a rule's namespace can make the server ask
// its upstream, so what that costs is bounded, per rule and in two lanes:
// fetches by tag or of a digest the registry knows of (an index's child),
// which real pulls make, and "blind" fetches of digests nothing refers
// to (a blob by digest alone, a manifest by an unknown digest), which a
// flood of random digests makes. Each lane has at most so many fetches
// under way and MaxWaiting requests waiting for one (more are refused
// with api.ErrPullThroughBusy), so a flood in the blind lane leaves real
// pulls their own; and what the upstream said it does not have is
// remembered for NegativeTTL.
package pullthrough

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	"github.com/gaia-registry/gaia/registry/api"
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
	// (default 4): each takes upstream bandwidth, a copy buffer and a
	// storage writer while it streams. (It no longer holds a database
	// connection: upload sessions are claimed, not row-locked.)
	MaxDownloads int
	// MaxFetches bounds the fetches by tag or of a known digest (an
	// upstream manifest until it is in hand, a tag list, a blob download)
	// a rule has under way on this server (default 32), MaxBlindFetches
	// its blind ones (a HEAD for a blob asked for by digest alone, a
	// manifest by a digest nothing lists; default 8). MaxWaiting bounds
	// the requests waiting in each lane (default 128): more are refused
	// at once (api.ErrPullThroughBusy). Requests for something already
	// being fetched join that fetch.
	MaxFetches, MaxBlindFetches, MaxWaiting int
	// NegativeTTL is how long an upstream's "no such manifest or blob"
	// is believed (default 30s), NegativeMax how many such answers are
	// kept (default 10000; the oldest go first).
	NegativeTTL time.Duration
	NegativeMax int
	Metrics     prometheus.Registerer // nil: no metrics
}

// Fetcher is the registry's pull-through.
type Fetcher struct {
	o     Options
	store *store.Store
	group singleflight.Group // rule reloads

	mu      sync.Mutex
	rules   []rule.Rule
	loaded  time.Time
	clients upstream.Clients
	tags    map[string]tagList // upstream URL + repository → its tags, for tags.latest
	budgets map[string]*budget // rule name and lane → its fetches
	flights map[string]*flight // fetches under way, by key

	downloads chan struct{}
	absent    absentCache

	fetches  *prometheus.CounterVec
	bytes    prometheus.Counter
	busy     *prometheus.CounterVec
	inflight *prometheus.GaugeVec
	hits     prometheus.Counter
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
	if o.MaxFetches <= 0 {
		o.MaxFetches = 32
	}
	if o.MaxBlindFetches <= 0 {
		o.MaxBlindFetches = 8
	}
	if o.MaxWaiting <= 0 {
		o.MaxWaiting = 128
	}
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = 30 * time.Second
	}
	if o.NegativeMax <= 0 {
		o.NegativeMax = 10000
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	f := &Fetcher{o: o, store: store.New(o.DB), tags: map[string]tagList{},
		budgets: map[string]*budget{}, flights: map[string]*flight{},
		downloads: make(chan struct{}, o.MaxDownloads),
		absent:    absentCache{ttl: o.NegativeTTL, size: o.NegativeMax, at: map[string]time.Time{}}}
	f.fetches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gaia_registry_pullthrough_fetches_total",
		Help: "Pull-through fetches from upstream registries, by kind (manifest, blob) and result (fetched, absent, error).",
	}, []string{"kind", "result"})
	f.bytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gaia_registry_pullthrough_bytes_total", Help: "Blob bytes fetched from upstream registries by pull-through.",
	})
	f.busy = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gaia_registry_pullthrough_busy_total",
		Help: "Pull-through requests refused (429) because the rule's fetches and waiting requests in a lane (known, blind) were at their bounds.",
	}, []string{"rule", "lane"})
	f.inflight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gaia_registry_pullthrough_fetches_in_flight", Help: "Pull-through fetches holding a slot of their rule's budget, by rule and lane (known, blind).",
	}, []string{"rule", "lane"})
	f.hits = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gaia_registry_pullthrough_negative_hits_total",
		Help: "Pull-through misses answered from the negative cache (the upstream said it has no such manifest or blob) without asking it.",
	})
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gaia_registry_pullthrough_negative_entries", Help: "Answers held by the pull-through negative cache.",
	}, func() float64 { return float64(f.absent.len()) })
	if o.Metrics != nil {
		o.Metrics.MustRegister(f.fetches, f.bytes, f.busy, f.inflight, f.hits, entries)
	}
	return f
}

// budget bounds one rule's fetches on this server.
type budget struct {
	slots      chan struct{}
	waiting    atomic.Int64
	maxWaiting int64
	busy       prometheus.Counter
	inflight   prometheus.Gauge
}

// acquire takes a slot, waiting for one unless maxWaiting callers already
// do. A caller that is gone starts nothing. A nil budget is no bound (the
// caller's fetch holds a slot already).
func (b *budget) acquire(ctx context.Context) error {
	if b == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case b.slots <- struct{}{}:
		b.inflight.Inc()
		return nil
	default:
	}
	if b.waiting.Add(1) > b.maxWaiting {
		b.waiting.Add(-1)
		b.busy.Inc()
		return api.ErrPullThroughBusy
	}
	defer b.waiting.Add(-1)
	select {
	case b.slots <- struct{}{}:
		b.inflight.Inc()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *budget) release() {
	if b != nil {
		b.inflight.Dec()
		<-b.slots
	}
}

// The lanes of a rule's budget.
const (
	known = "known" // by tag, or a digest the registry knows of: what real pulls ask
	blind = "blind" // a digest nothing in the registry refers to
)

// budgetOf returns rule r's budget in lane.
func (f *Fetcher) budgetOf(r rule.Rule, lane string) *budget {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := r.Name + "\x00" + lane
	b := f.budgets[key]
	if b == nil {
		n := f.o.MaxFetches
		if lane == blind {
			n = f.o.MaxBlindFetches
		}
		b = &budget{slots: make(chan struct{}, n), maxWaiting: int64(f.o.MaxWaiting),
			busy: f.busy.WithLabelValues(r.Name, lane), inflight: f.inflight.WithLabelValues(r.Name, lane)}
		f.budgets[key] = b
	}
	return b
}

// flight is a fetch under way; requests for the same thing wait for it.
type flight struct {
	done chan struct{}
	ok   bool
	err  error
}

// fly runs fn once for key across this server's concurrent callers, on a
// goroutine and a context of its own (bounded by timeout): a client that
// gives up does not cancel it for the others. Starting it takes a slot of
// b, which fn may give back early (release) once what remains is bounded
// otherwise; joining a fetch under way takes none.
func (f *Fetcher) fly(ctx context.Context, b *budget, key string, timeout time.Duration,
	fn func(ctx context.Context, release func()) (bool, error)) (bool, error) {
	f.mu.Lock()
	fl := f.flights[key]
	f.mu.Unlock()
	if fl == nil {
		if err := b.acquire(ctx); err != nil {
			return false, err
		}
		release := sync.OnceFunc(b.release)
		f.mu.Lock()
		if fl = f.flights[key]; fl != nil { // started meanwhile: join it
			f.mu.Unlock()
			release()
		} else {
			fl = &flight{done: make(chan struct{})}
			f.flights[key] = fl
			f.mu.Unlock()
			go func() {
				defer release()
				fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
				fl.ok, fl.err = fn(fctx, release)
				cancel()
				f.mu.Lock()
				delete(f.flights, key)
				f.mu.Unlock()
				close(fl.done)
			}()
		}
	}
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case <-fl.done:
		return fl.ok, fl.err
	}
}

// absentCache remembers, for ttl, what an upstream said it does not have:
// at most size answers, the oldest dropped first.
type absentCache struct {
	ttl  time.Duration
	size int

	mu    sync.Mutex
	at    map[string]time.Time
	order []absentEntry // as added, so also as they expire
}

type absentEntry struct {
	key string
	at  time.Time
}

func (c *absentCache) has(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.at[key]
	return ok && time.Since(at) < c.ttl
}

func (c *absentCache) add(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	delete(c.at, key) // given again: its older entry in order goes stale
	for len(c.order) > 0 && (now.Sub(c.order[0].at) >= c.ttl || len(c.at) >= c.size) {
		if e := c.order[0]; c.at[e.key] == e.at {
			delete(c.at, e.key)
		}
		c.order = c.order[1:]
	}
	c.at[key] = now
	c.order = append(c.order, absentEntry{key, now})
}

func (c *absentCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.at)
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

// once runs fn once for key across this server's concurrent callers (a
// flight, taking a slot of b) and, under a PostgreSQL advisory lock taken
// on a connection of pool, across servers. The lock is polled with a
// try-lock, so a waiter holds no connection. Manifest fetches lock on
// LockDB and, holding that, wait for their blobs, which lock on
// BlobLockDB and wait for nothing: no cycle, so no burst of fetches can
// deadlock the pools. The fetch runs on its own context (bounded by the
// timeout): a client that gives up does not cancel it for the others.
func (f *Fetcher) once(ctx context.Context, b *budget, pool *pgxpool.Pool, key string,
	fn func(ctx context.Context, release func()) (bool, error)) (bool, error) {
	return f.fly(ctx, b, key, f.o.Timeout, func(ctx context.Context, release func()) (bool, error) {
		unlock, _, err := metadata.AdvisoryLock(ctx, pool, key, nil)
		if err != nil {
			return false, err
		}
		defer unlock()
		return fn(ctx, release)
	})
}

// absentKey names what an upstream client was asked for: per client
// (upstream and credentials), repository and reference.
func absentKey(up *upstream.Client, upRepo, ref string) string {
	return fmt.Sprintf("%p/%s@%s", up, upRepo, ref)
}

// knownAbsent reports whether the upstream said lately that it has no key.
func (f *Fetcher) knownAbsent(key string) bool {
	if f.absent.has(key) {
		f.hits.Inc()
		return true
	}
	return false
}

// Manifest fetches manifest ref (a tag or digest) of repo from its rule's
// upstream and stores it. false: repo is under no on-demand rule, the tag
// is not selected, or the upstream has no such manifest.
func (f *Fetcher) Manifest(ctx context.Context, repo, ref string) (bool, error) {
	r, upRepo, ok, err := f.match(ctx, repo)
	if err != nil || !ok {
		return false, err
	}
	bud := f.budgetOf(r, known)
	d, byDigest := digest.Parse(ref)
	if byDigest != nil {
		ok, err := f.selected(ctx, &r, bud, upRepo, ref)
		if err != nil || !ok {
			return false, err
		}
	} else if pending, err := f.o.Manifests.Pending(ctx, repo, d); err != nil {
		return false, err
	} else if !pending {
		bud = f.budgetOf(r, blind)
	}
	up := f.clients.For(r.Upstream)
	absent := absentKey(up, upRepo, ref)
	if f.knownAbsent(absent) {
		return false, nil
	}
	ok, err = f.once(ctx, bud, f.o.LockDB, "gaia-pullthrough:manifest:"+repo+"@"+ref, func(ctx context.Context, release func()) (bool, error) {
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
		body, mt, md, err := up.Manifest(ctx, upRepo, ref)
		if upstream.IsNotFound(err) {
			f.absent.add(absent)
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
		// The upstream has the manifest: what follows is real content,
		// bounded by MaxDownloads and the upstream client, not the rule's
		// budget, which would otherwise let a few large first pulls hold
		// up every other fetch under the rule.
		release()
		// The image's blobs together (up to MaxDownloads, and the
		// upstream client's limit): the first pull waits for the slowest
		// rather than for each in turn.
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(f.o.MaxDownloads)
		for _, b := range m.BlobDescriptors {
			g.Go(func() error { return f.blob(gctx, nil, up, upRepo, repo, b, false) })
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
	if err != nil && !errors.Is(err, api.ErrPullThroughBusy) {
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
// seconds), shared by the callers, within the rule's budget b.
func (f *Fetcher) selected(ctx context.Context, r *rule.Rule, b *budget, upRepo, tag string) (bool, error) {
	if r.Tags.Latest == 0 {
		return len(r.SelectTags([]string{tag})) == 1, nil
	}
	up := f.clients.For(r.Upstream)
	key := fmt.Sprintf("%p/%s", up, upRepo) // per client: per upstream and credentials
	fresh := func() (tagList, bool) {
		f.mu.Lock()
		defer f.mu.Unlock()
		tl, ok := f.tags[key]
		return tl, ok && ((tl.err == nil && time.Since(tl.at) <= f.o.TagsTTL) || (tl.err != nil && time.Since(tl.at) <= 5*time.Second))
	}
	tl, ok := fresh()
	if !ok {
		_, err := f.fly(ctx, b, "\x00tags "+key, time.Minute, func(ctx context.Context, _ func()) (bool, error) {
			tags, err := up.Tags(ctx, upRepo)
			f.mu.Lock()
			if len(f.tags) >= 10000 { // a bound: start over
				clear(f.tags)
			}
			f.tags[key] = tagList{tags, err, time.Now()}
			f.mu.Unlock()
			return true, nil
		})
		if err != nil {
			return false, err
		}
		f.mu.Lock()
		tl = f.tags[key]
		f.mu.Unlock()
	}
	if upstream.IsNotFound(tl.err) {
		return false, nil
	}
	if tl.err != nil {
		return false, tl.err
	}
	return slices.Contains(r.SelectTags(tl.tags), tag), nil
}

// ask reports whether the upstream's repository has blob d: a HEAD, one
// for all who ask at once, within budget b; an absence is remembered.
func (f *Fetcher) ask(ctx context.Context, b *budget, up *upstream.Client, upRepo string, d digest.Digest) (bool, error) {
	absent := absentKey(up, upRepo, d.String())
	if f.knownAbsent(absent) {
		return false, nil
	}
	return f.fly(ctx, b, "\x00ask "+absent, time.Minute, func(ctx context.Context, _ func()) (bool, error) {
		ok, err := up.BlobExists(ctx, upRepo, d)
		if err == nil && !ok {
			f.absent.add(absent)
		}
		return ok, err
	})
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
	ok, err = f.ask(ctx, f.budgetOf(r, blind), up, upRepo, d)
	switch {
	case errors.Is(err, api.ErrPullThroughBusy):
		return false, err
	case err != nil:
		f.fetches.WithLabelValues("blob", "error").Inc()
		return false, err
	case !ok:
		f.fetches.WithLabelValues("blob", "absent").Inc()
		return false, nil
	}
	// The upstream has it: real content, in the known lane.
	return true, f.blob(ctx, f.budgetOf(r, known), up, upRepo, repo, v1.Descriptor{Digest: d, Size: -1}, true)
}

// blob makes repo hold blob b: linked if the registry has it anywhere,
// otherwise copied from the upstream into storage through an upload
// session, which checks the digest before the blob becomes visible. One
// copy per digest across servers (the lock is the digest's, whichever
// rule asks), at most MaxDownloads at once per server, within budget bu
// (nil: the caller's fetch holds a slot). Unless confirmed, the upstream
// is asked first whether it has the blob: a manifest naming a digest
// proves nothing, and linking on its word would hand a hostile upstream
// any blob of the registry whose digest it knows.
func (f *Fetcher) blob(ctx context.Context, bu *budget, up *upstream.Client, upRepo, repo string, b v1.Descriptor, confirmed bool) error {
	if !confirmed {
		if _, err := f.o.Blobs.Mount(ctx, repo, []string{repo}, b.Digest); err == nil {
			return nil // repo has it already
		} else if !errors.Is(err, metadata.ErrNotFound) {
			return err
		}
		ok, err := f.ask(ctx, nil, up, upRepo, b.Digest)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("the upstream manifest names blob %s, which %s does not have in %s", b.Digest, up.URL(), upRepo)
		}
	}
	if _, err := f.o.Blobs.MountAny(ctx, repo, b.Digest); err == nil {
		return nil
	} else if !errors.Is(err, metadata.ErrNotFound) {
		return err
	}
	_, err := f.once(ctx, bu, f.o.BlobLockDB, "gaia-pullthrough:blob:"+b.Digest.String(), func(ctx context.Context, _ func()) (bool, error) {
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
		if !errors.Is(err, api.ErrPullThroughBusy) {
			f.fetches.WithLabelValues("blob", "error").Inc()
		}
		return err
	}
	// The blob may have been fetched under another repository's name.
	_, err = f.o.Blobs.MountAny(ctx, repo, b.Digest)
	return err
}
