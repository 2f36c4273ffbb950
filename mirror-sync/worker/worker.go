// Package worker runs mirror rules: it claims queued runs from PostgreSQL
// (mirror-sync/store), reads the rule's upstream, and writes what the rule
// selects into Gaia through Gaia's own API with a robot credential.
//
// A run is incremental. For each selected tag it compares the upstream's
// digest (a HEAD) with Gaia's and stops there when they agree. Otherwise
// it copies the manifest bottom-up: blobs first (a HEAD, then a
// cross-repository mount of a blob Gaia holds elsewhere, then a streamed
// copy verified against its digest), then child manifests by digest, and
// the tag last, so a tag never points at anything half-copied and a run
// resumed by another worker skips all that is done. Indexes are copied
// byte for byte (their digests are the upstream's) with only the children
// whose platforms the rule selects.
//
// Several workers share the runs: each claim is a lease that the running
// worker extends with its progress; a worker that dies stops extending it
// and another worker resumes the run.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/gaia-registry/gaia/mirror-sync/rule"
	"github.com/gaia-registry/gaia/mirror-sync/store"
	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/registry/manifest"
)

// Options configure a Worker.
type Options struct {
	Store    *store.Store
	Registry *upstream.Client // Gaia, with the robot credential
	ID       string           // default hostname:pid
	Lease    time.Duration    // a claim's lease, renewed at a third of it (default 30s)
	Poll     time.Duration    // how often to look for due rules and queued runs (default 2s)
	Parallel int              // tags copied at once in a run (default 8)
	Retries  int              // attempts at copying one blob (default 4)
	Log      *slog.Logger
	Metrics  *Metrics // nil: none
}

// Worker runs mirror rules.
type Worker struct {
	o Options

	clients upstream.Clients // one per upstream: its limit holds across runs
	wake    chan struct{}
}

// Wake makes the worker look for runs now rather than at its next poll.
func (w *Worker) Wake() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// New returns a Worker.
func New(o Options) *Worker {
	if o.ID == "" {
		host, _ := os.Hostname()
		o.ID = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	if o.Lease == 0 {
		o.Lease = 30 * time.Second
	}
	if o.Poll == 0 {
		o.Poll = 2 * time.Second
	}
	if o.Parallel <= 0 {
		o.Parallel = 8
	}
	if o.Retries <= 0 {
		o.Retries = 4
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	w := &Worker{o: o, wake: make(chan struct{}, 1)}
	if o.Metrics != nil {
		w.clients.Added = o.Metrics.watch
	}
	return w
}

// ID is the worker's name in the runs it claims.
func (w *Worker) ID() string { return w.o.ID }

// Run queues due runs and works through queued ones until ctx ends.
func (w *Worker) Run(ctx context.Context) {
	for ctx.Err() == nil {
		if _, err := w.o.Store.Schedule(ctx, time.Now()); err != nil && ctx.Err() == nil {
			w.o.Log.Error("mirror scheduling failed", "err", err)
		}
		for ctx.Err() == nil {
			did, err := w.RunOne(ctx)
			if err != nil && ctx.Err() == nil {
				w.o.Log.Error("mirror run claim failed", "err", err)
			}
			if !did || err != nil {
				break
			}
		}
		select {
		case <-ctx.Done():
		case <-w.wake:
		case <-time.After(w.o.Poll):
		}
	}
}

// RunOne claims one run (queued, or abandoned by a dead worker) and runs
// it to its end; false when there was none.
func (w *Worker) RunOne(ctx context.Context) (bool, error) {
	run, ok, err := w.o.Store.Claim(ctx, w.o.ID, w.o.Lease)
	if err != nil || !ok {
		return false, err
	}
	w.execute(ctx, run)
	return true, nil
}

// counts are a run's progress not yet recorded.
type counts struct {
	images, tags, blobs, mounted, skipped atomic.Int64
	bytes                                 atomic.Int64
}

type job struct {
	ctx    context.Context // the run's: shared transfers outlive the image that started them
	w      *Worker
	run    store.Run
	r      *rule.Rule
	up     *upstream.Client
	gaia   *upstream.Client
	log    *slog.Logger
	c      counts
	blobs  singleflight.Group // one transfer per blob in a run
	mu     sync.Mutex
	errs   []string
	failed int
}

func (j *job) fail(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	j.log.Warn("mirror copy failed", "err", msg)
	j.mu.Lock()
	defer j.mu.Unlock()
	j.failed++
	if len(j.errs) < 50 {
		j.errs = append(j.errs, msg)
	} else if len(j.errs) == 50 {
		j.errs = append(j.errs, "(more errors left out)")
	}
}

func (w *Worker) execute(ctx context.Context, run store.Run) {
	log := w.o.Log.With("rule", run.Rule, "run", run.ID)
	start := time.Now()
	log.Info("mirror run started", "trigger", run.Trigger, "resumed", run.Images+run.Tags+run.Blobs > 0)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	entry, err := w.o.Store.Get(ctx, run.Rule)
	if err != nil {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer rcancel()
		if ctx.Err() != nil { // shutting down right after the claim
			w.o.Store.Release(rctx, run.ID, w.o.ID)
			return
		}
		log.Error("mirror run: rule unreadable", "err", err)
		w.o.Store.Finish(rctx, run.ID, w.o.ID, true, []string{err.Error()})
		return
	}
	j := &job{ctx: ctx, w: w, run: run, r: &entry.Rule, up: w.clients.For(entry.Rule.Upstream), gaia: w.o.Registry, log: log}
	requests0, throttled0 := j.up.Requests.Load(), j.up.Throttled.Load()

	// The lease keeper records progress every third of the lease; a lost
	// lease (this worker stalled, another took the run) stops the run.
	var recorded struct{ images, tags, blobs, bytes int64 }
	flush := func(ctx context.Context) error {
		im, tg, bl, by := j.c.images.Load(), j.c.tags.Load(), j.c.blobs.Load(), j.c.bytes.Load()
		err := w.o.Store.Progress(ctx, run.ID, w.o.ID, w.o.Lease,
			int(im-recorded.images), int(tg-recorded.tags), int(bl-recorded.blobs), by-recorded.bytes)
		if err == nil {
			recorded.images, recorded.tags, recorded.blobs, recorded.bytes = im, tg, bl, by
		}
		return err
	}
	keeperDone, stopKeeper := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(keeperDone)
		t := time.NewTicker(w.o.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-stopKeeper:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				// Not on the run's context: a flush cut by cancellation
				// after it committed would be counted again by the last one.
				fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				err := flush(fctx)
				fcancel()
				if errors.Is(err, store.ErrLeaseLost) {
					log.Warn("mirror run lease lost: another worker has the run; stopping")
					cancel(store.ErrLeaseLost)
					return
				} else if err != nil && ctx.Err() == nil {
					log.Warn("mirror run progress not recorded", "err", err)
				}
			}
		}
	}()

	j.mirror(ctx)

	// Stop the keeper before the last flush (not by cancelling the
	// context its flush may be using: a cancelled flush that committed
	// would be counted twice).
	close(stopKeeper)
	<-keeperDone
	stop := context.Cause(ctx)
	cancel(nil)
	if errors.Is(stop, store.ErrLeaseLost) {
		return
	}
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer fcancel()
	if stop != nil { // shutting down: hand the run back for another worker to resume
		log.Info("mirror run interrupted; handing it back", "err", stop)
		flush(fctx)
		if err := w.o.Store.Release(fctx, run.ID, w.o.ID); err != nil {
			log.Warn("mirror run not handed back; another worker resumes it when its lease ends", "err", err)
		}
		return
	}
	if err := flush(fctx); err != nil {
		log.Error("mirror run: recording progress", "err", err)
		return
	}
	failed := j.failed > 0
	if err := w.o.Store.Finish(fctx, run.ID, w.o.ID, failed, j.errs); err != nil {
		log.Error("mirror run: recording its end", "err", err)
		return
	}
	if w.o.Metrics != nil {
		w.o.Metrics.finished(run.Rule, failed, time.Since(start))
	}
	log.Info("mirror run finished", "failed", failed, "errors", j.failed,
		"images", j.c.images.Load(), "tags", j.c.tags.Load(), "blobs", j.c.blobs.Load(),
		"mounted", j.c.mounted.Load(), "bytes", j.c.bytes.Load(), "up_to_date_tags", j.c.skipped.Load(),
		// the upstream client is shared by the worker's runs of the rule's upstream: approximate when they overlap
		"upstream_requests", j.up.Requests.Load()-requests0, "upstream_throttled", j.up.Throttled.Load()-throttled0,
		"duration", time.Since(start).Round(time.Millisecond))
}

// mirror copies everything the rule selects.
func (j *job) mirror(ctx context.Context) {
	repos, err := j.repositories(ctx)
	if err != nil {
		j.fail("listing upstream repositories: %v", err)
		return
	}
	type work struct{ repo, tag string }
	todo := make(chan work)
	var wg sync.WaitGroup
	for range j.w.o.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range todo {
				if err := j.copyTag(ctx, t.repo, t.tag); err != nil && ctx.Err() == nil {
					j.fail("%s:%s: %v", t.repo, t.tag, j.refused(err, j.r.DestinationOf(t.repo)))
				}
			}
		}()
	}
	for _, repo := range repos {
		tags, err := j.up.Tags(ctx, repo)
		if err != nil {
			if ctx.Err() == nil {
				j.fail("%s: listing tags: %v", repo, err)
			}
			continue
		}
		for _, t := range j.r.SelectTags(tags) {
			select {
			case todo <- work{repo, t}:
			case <-ctx.Done():
			}
		}
	}
	close(todo)
	wg.Wait()
}

// refused explains Gaia refusing the worker's own credential (a 401 or
// 403 from Gaia, not from the upstream): what to fix is the robot's
// permissions on the destination, which the bare DENIED does not say.
func (j *job) refused(err error, dst string) error {
	var se *upstream.StatusError
	if !errors.As(err, &se) || (se.Status != http.StatusUnauthorized && se.Status != http.StatusForbidden) ||
		!strings.HasPrefix(se.URL, j.gaia.URL()+"/") {
		return err
	}
	who := "anonymous (registry.username is not set)"
	if u := j.gaia.Username(); u != "" {
		who = fmt.Sprintf("registry.username %q", u)
	}
	return fmt.Errorf("Gaia refused the mirror's credential, %s, on %s: it needs pull and push there (%w)", who, dst, err)
}

// repositories lists the upstream repositories the rule selects: its
// exact names, and when it has globs or regexes, the upstream's catalog
// filtered by them.
func (j *job) repositories(ctx context.Context) ([]string, error) {
	set := map[string]bool{}
	exact := j.r.Exact()
	for _, n := range exact {
		if j.r.MatchRepository(n) {
			set[n] = true
		}
	}
	if len(exact) < len(j.r.Repositories) {
		all, err := j.up.Catalog(ctx)
		if err != nil {
			return nil, fmt.Errorf("the rule has patterns, so the upstream's catalog is needed: %w", err)
		}
		for _, n := range all {
			if j.r.MatchRepository(n) {
				set[n] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// copyTag brings dst:tag to the upstream's repo:tag.
func (j *job) copyTag(ctx context.Context, repo, tag string) error {
	dst := j.r.DestinationOf(repo)
	want, err := j.up.ManifestDigest(ctx, repo, tag)
	if err != nil {
		return err
	}
	if have, mt, ok, err := j.gaia.ManifestInfo(ctx, dst, tag); err != nil {
		return fmt.Errorf("asking Gaia: %w", err)
	} else if ok && have == want {
		// Up to date, unless it is an index whose wanted children are not
		// all there (pull-through stores an index alone; a rule's
		// platforms may have grown): copy those.
		if manifest.IsIndex(mt) {
			body, mt, _, err := j.gaia.Manifest(ctx, dst, want.String())
			if err != nil {
				return fmt.Errorf("reading %s@%s from Gaia: %w", dst, want, err)
			}
			m, err := manifest.Parse(mt, body)
			if err != nil {
				return fmt.Errorf("manifest %s in Gaia: %w", want, err)
			}
			if _, err := j.copyChildren(ctx, repo, dst, m); err != nil {
				return err
			}
		}
		j.c.skipped.Add(1)
		return nil
	}
	body, mt, d, err := j.up.Manifest(ctx, repo, want.String())
	if err != nil {
		return err
	}
	if err := j.copyManifest(ctx, repo, dst, body, mt, d, tag); err != nil {
		return err
	}
	j.c.tags.Add(1)
	j.log.Debug("tag mirrored", "repository", dst, "tag", tag, "digest", d)
	return nil
}

// copyManifest stores manifest d (content body, type mt) as dst:ref,
// after what it refers to.
func (j *job) copyManifest(ctx context.Context, repo, dst string, body []byte, mt string, d digest.Digest, ref string) error {
	m, err := manifest.Parse(mt, body)
	if err != nil {
		return fmt.Errorf("manifest %s: %w", d, err)
	}
	sparse, err := j.copyChildren(ctx, repo, dst, m)
	if err != nil {
		return err
	}
	// An image's blobs go at once (the upstream client's limit bounds
	// the requests): a tag waiting for a base layer another tag is
	// fetching copies its own layers meanwhile.
	g, gctx := errgroup.WithContext(ctx)
	for _, b := range m.BlobDescriptors {
		g.Go(func() error { return j.copyBlob(gctx, repo, dst, b) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := j.gaia.PutManifest(ctx, dst, ref, m.MediaType, body, sparse); err != nil {
		return fmt.Errorf("storing manifest %s in Gaia: %w", d, err)
	}
	if !manifest.IsIndex(m.MediaType) {
		j.c.images.Add(1)
		if j.w.o.Metrics != nil {
			j.w.o.Metrics.manifests.WithLabelValues(j.run.Rule).Inc()
		}
	}
	return nil
}

// copyChildren copies the children of index m that the rule's platforms
// want and dst lacks; sparse: some are left out.
func (j *job) copyChildren(ctx context.Context, repo, dst string, m *manifest.Manifest) (sparse bool, err error) {
	for _, c := range m.ChildDescriptors {
		if c.Platform != nil && !j.r.WantPlatform(c.Platform.OS, c.Platform.Architecture, c.Platform.Variant) {
			sparse = true
			continue
		}
		if have, ok, err := j.gaia.HasManifest(ctx, dst, c.Digest.String()); err != nil {
			return sparse, fmt.Errorf("asking Gaia: %w", err)
		} else if ok && have == c.Digest {
			continue
		}
		cb, cmt, _, err := j.up.Manifest(ctx, repo, c.Digest.String())
		if err != nil {
			return sparse, err
		}
		if err := j.copyManifest(ctx, repo, dst, cb, cmt, c.Digest, c.Digest.String()); err != nil {
			return sparse, err
		}
	}
	return sparse, nil
}

// copyBlob makes dst hold blob b: mounted (Gaia links a blob it holds in
// any repository the robot may pull, or already has in dst), or copied from the upstream
// into the upload session the refused mount opened: once per run,
// however many tags share it; a torn or corrupt transfer is retried.
func (j *job) copyBlob(ctx context.Context, repo, dst string, b v1.Descriptor) error {
	_, err, _ := j.blobs.Do(b.Digest.String()+" "+dst, func() (any, error) {
		// Tags of other repositories sharing the blob wait for one copy:
		// the first to ask for it (below) fetches it, the others mount it.
		into, err, _ := j.blobs.Do(b.Digest.String(), func() (any, error) {
			return dst, j.transfer(j.ctx, repo, dst, b)
		})
		if err != nil || into.(string) == dst {
			return nil, err
		}
		return nil, j.mount(j.ctx, dst, into.(string), b) // shared: not on the context of the image that asked first
	})
	return err
}

// mount links b into dst from repository from, which must work: the blob
// was just copied there. (Naming it matters with token auth: Gaia mounts
// without `from` only from repositories the robot's token covers.)
func (j *job) mount(ctx context.Context, dst, from string, b v1.Descriptor) error {
	ok, session, err := j.gaia.MountBlob(ctx, dst, from, b.Digest)
	if err != nil {
		return fmt.Errorf("mounting %s: %w", b.Digest, err)
	}
	if !ok {
		j.gaia.Cancel(ctx, dst, session)
		return fmt.Errorf("blob %s: copied, yet Gaia cannot mount it into %s", b.Digest, dst)
	}
	j.c.mounted.Add(1)
	j.w.o.Metrics.blob(j.run.Rule, "mounted", 0)
	return nil
}

// transfer brings b into dst: a mount if Gaia holds it (or got it since
// this run began), otherwise a copy from the upstream, retried on failure.
func (j *job) transfer(ctx context.Context, repo, dst string, b v1.Descriptor) error {
	var err error
	for attempt := 1; attempt <= j.w.o.Retries; attempt++ {
		var mounted bool
		var session string
		mounted, session, err = j.gaia.MountBlob(ctx, dst, "", b.Digest)
		if err == nil && mounted {
			j.c.mounted.Add(1)
			j.w.o.Metrics.blob(j.run.Rule, "mounted", 0)
			return nil
		}
		if err == nil {
			if err = j.copyInto(ctx, repo, dst, session, b); err == nil {
				return nil
			}
			j.gaia.Cancel(context.WithoutCancel(ctx), dst, session)
		}
		if ctx.Err() != nil {
			break
		}
		j.log.Warn("blob copy failed; retrying", "digest", b.Digest, "attempt", attempt, "err", err)
		if j.w.o.Metrics != nil {
			j.w.o.Metrics.retries.WithLabelValues(j.run.Rule).Inc()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
		}
	}
	return err
}

func (j *job) copyInto(ctx context.Context, repo, dst, session string, b v1.Descriptor) error {
	rc, err := j.up.Blob(ctx, repo, b.Digest, b.Size)
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := j.gaia.PushBlobTo(ctx, dst, session, b.Digest, b.Size, rc); err != nil {
		return err
	}
	j.c.blobs.Add(1)
	j.c.bytes.Add(b.Size)
	j.w.o.Metrics.blob(j.run.Rule, "copied", b.Size)
	return nil
}
