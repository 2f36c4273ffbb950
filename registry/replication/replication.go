// Package replication moves blob bytes between the IDCs of a Gaia
// cluster. Each IDC keeps blobs in its own storage; PostgreSQL (shared)
// records which IDCs hold each blob (blob_placements). A pull of a blob
// its IDC lacks is filled once from an IDC that has it, through that IDC's
// gateway, then served locally; eager replication queues the same copy
// right after a push (replication_jobs) so even the first pull stays local.
//
// Exactly one transfer per blob and IDC: a fill takes a PostgreSQL
// advisory lock named after the blob and the IDC, so concurrent pulls on
// every server of the IDC wait for one copy, then find it placed.
package replication

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/registry/coalesce"
	"github.com/gaia-registry/gaia/registry/internaltoken"
	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/uploadsession"
	"github.com/gaia-registry/gaia/registry/watchdog"
)

// Headers of requests between IDCs.
const (
	// TokenHeader carries the cluster's internal token: it lets a peer
	// IDC read blobs whatever the auth configuration.
	TokenHeader = internaltoken.Header
	// NoFillHeader asks a server to answer from its own storage only, so
	// two IDCs lacking a blob never ask each other in a loop.
	NoFillHeader = internaltoken.NoFillHeader
	// IDCHeader and CauseHeader say who asks and why (for the metrics).
	IDCHeader   = "X-Gaia-IDC"
	CauseHeader = "X-Gaia-Cause"
)

// Causes of cross-IDC transfers.
const (
	CauseFill        = "fill"
	CauseReplication = "replication"
)

// ErrUnavailable: no other IDC could provide the blob.
var ErrUnavailable = errors.New("blob not available from any other IDC")

// Options configure a Replicator.
type Options struct {
	IDC   string            // this server's IDC
	Peers map[string]string // other IDCs: name → gateway base URL
	Token string            // the cluster's internal token
	// Username and Password are a robot credential (auth.builtin: a
	// system robot with pull on every namespace). Set, copies send it to
	// the peers' gateways (a token from the realm their challenge names)
	// instead of Token.
	Username, Password string
	Prefixes           []string // repositories pushed eagerly to every peer IDC (prefix match)
	DB                 *pgxpool.Pool
	// LockDB holds the connections of copies in progress (each keeps one
	// for its advisory lock while it transfers), apart from DB so a burst
	// of fills cannot starve the API's queries; nil: DB.
	LockDB *pgxpool.Pool
	Driver storagedriver.StorageDriver // this IDC's storage
	Log    *slog.Logger
	Client *http.Client // default: no overall timeout (blobs are large), 30 s to response headers
	TLS    *tls.Config  // the default client's: how peers' https gateways are verified
	// IdleTimeout fails a copy whose peer sends nothing for this long
	// (default 1m): the copy holds the IDC-wide lock for its blob.
	IdleTimeout time.Duration
	// Bytes counts bytes crossing IDCs by direction ("in"), cause and peer.
	Bytes *prometheus.CounterVec
	// RetryDelay is the first back-off of a failed job (doubling, at most 10 min).
	RetryDelay time.Duration
}

// Replicator fills and replicates blobs for one server.
type Replicator struct {
	o     Options
	fills coalesce.Group[string, struct{}]
	// robot: a client per peer that authenticates as Options.Username
	// (tokens cached per repository), when one is configured.
	robot map[string]*upstream.Client
}

// New returns a Replicator.
func New(o Options) *Replicator {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Client == nil {
		o.Client = &http.Client{Transport: &http.Transport{
			Proxy:                 nil,
			ResponseHeaderTimeout: 30 * time.Second,
			MaxIdleConnsPerHost:   16,
			TLSClientConfig:       o.TLS,
		}}
	}
	// The token goes to the peers' gateways and nowhere else: a redirect
	// (which the API never answers a blob GET with) is not followed.
	c := *o.Client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	o.Client = &c
	if o.RetryDelay == 0 {
		o.RetryDelay = time.Second
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = time.Minute
	}
	if o.LockDB == nil {
		o.LockDB = o.DB
	}
	r := &Replicator{o: o}
	if o.Username != "" {
		// The robot's requests go to the peers' gateways like any
		// client's, and no further: a gateway proxies a copy (it carries
		// NoFillHeader) instead of redirecting it, and a redirect is not
		// followed (the client above answers it as an error).
		header := http.Header{}
		header.Set(NoFillHeader, "1")
		header.Set(IDCHeader, o.IDC)
		r.robot = map[string]*upstream.Client{}
		for peer, base := range o.Peers {
			r.robot[peer] = upstream.New(upstream.Options{
				URL: base, Username: o.Username, Password: o.Password, HTTP: o.Client, Header: header,
				Concurrency: 1 << 16, // bounded by the fills themselves (one per blob and IDC)
				MaxRetries:  -1,      // none: a copy that fails tries the next IDC holding the blob, not this one later
				IdleTimeout: o.IdleTimeout,
			})
		}
	}
	return r
}

// IDC is the server's IDC.
func (r *Replicator) IDC() string { return r.o.IDC }

// Fill makes this IDC's storage hold blob d (linked in repo), copying it
// from another IDC once. Concurrent fills of one blob, on any server of
// the IDC, share that one copy. No overall timeout: a large layer takes
// as long as it takes (the transfer fails on a stalled peer instead).
func (r *Replicator) Fill(ctx context.Context, repo string, d digest.Digest) error {
	_, err := r.fills.Do(ctx, repo+"@"+d.String(), func(ctx context.Context) (struct{}, error) {
		return struct{}{}, r.copyOnce(ctx, repo, d, CauseFill, false)
	})
	return err
}

// Refill is Fill for a blob recorded as held by this IDC whose bytes its
// storage no longer has: under the IDC's lock for the blob, the stale
// record is dropped (only if another IDC holds the blob: otherwise the
// record is all that says where it was) and the blob copied back.
func (r *Replicator) Refill(ctx context.Context, repo string, d digest.Digest) error {
	_, err := r.fills.Do(ctx, repo+"@"+d.String()+"#refill", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, r.copyOnce(ctx, repo, d, CauseFill, true)
	})
	return err
}

// lock takes the IDC-wide lock for copying d (metadata.AdvisoryLock:
// waiters hold no connection). It returns done=true, without the lock,
// when another server finished the copy meanwhile.
func (r *Replicator) lock(ctx context.Context, d digest.Digest, refill bool) (unlock func(), done bool, err error) {
	var placed func(context.Context) (bool, error)
	if !refill {
		placed = func(ctx context.Context) (bool, error) {
			var ok bool
			err := r.o.DB.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM blob_placements WHERE digest = $1 AND idc = $2)`,
				d.String(), r.o.IDC).Scan(&ok)
			return ok, err
		}
	}
	return metadata.AdvisoryLock(ctx, r.o.LockDB, fillLock(r.o.IDC, d), placed)
}

// fillLock names the IDC-wide lock for copying d into idc.
// It is the IDC's lock on d's bytes (metadata.BlobLockKey), which garbage
// collection's deleters take too.
func fillLock(idc string, d digest.Digest) string { return metadata.BlobLockKey(idc, d.String()) }

// copyOnce copies d into this IDC unless it is already placed here (for
// a refill: unless its bytes are back), under the IDC-wide lock for d.
func (r *Replicator) copyOnce(ctx context.Context, repo string, d digest.Digest, cause string, refill bool) error {
	unlock, done, err := r.lock(ctx, d, refill)
	if err != nil || done {
		return err
	}
	defer unlock()
	if refill {
		if _, err := r.o.Driver.Stat(ctx, uploadsession.BlobPath(d)); err == nil {
			return nil // another server of the IDC refilled it first
		}
		tag, err := r.o.DB.Exec(ctx, `
			DELETE FROM blob_placements WHERE digest = $1 AND idc = $2
			AND EXISTS (SELECT 1 FROM blob_placements WHERE digest = $1 AND idc <> $2)`, d.String(), r.o.IDC)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("blob %s: no other IDC holds it: %w", d, ErrUnavailable)
		}
	}

	var placed bool
	var size int64
	var sources []string
	err = r.o.DB.QueryRow(ctx, `
		SELECT bl.size,
		       EXISTS (SELECT 1 FROM blob_placements WHERE digest = bl.digest AND idc = $2),
		       coalesce(array_agg(p.idc ORDER BY p.created_at) FILTER (WHERE p.idc IS NOT NULL AND p.idc <> $2), '{}')
		FROM blobs bl LEFT JOIN blob_placements p ON p.digest = bl.digest
		WHERE bl.digest = $1 GROUP BY bl.digest, bl.size`, d.String(), r.o.IDC).Scan(&size, &placed, &sources)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("blob %s: %w", d, ErrUnavailable)
	}
	if err != nil || placed {
		return err
	}
	var errs []error
	for _, src := range sources {
		base, ok := r.o.Peers[src]
		if !ok {
			continue
		}
		err := r.copyFrom(ctx, src, base, repo, d, size, cause)
		if err == nil {
			_, err = r.o.DB.Exec(ctx, `INSERT INTO blob_placements (digest, idc) VALUES ($1, $2) ON CONFLICT DO NOTHING`, d.String(), r.o.IDC)
			if metadata.IsFKViolation(err) {
				// Garbage collection deleted the blob while it was copied:
				// the copy is nobody's (no placement can appear while we
				// hold the IDC's lock on d), so it goes now.
				r.o.Driver.Delete(context.WithoutCancel(ctx), path.Dir(uploadsession.BlobPath(d)))
				return fmt.Errorf("blob %s was deleted during the copy: %w", d, ErrUnavailable)
			}
			return err
		}
		r.o.Log.Warn("cross-IDC copy failed", "digest", d, "from", src, "cause", cause, "err", err)
		errs = append(errs, fmt.Errorf("from %s: %w", src, err))
	}
	if len(errs) == 0 {
		return fmt.Errorf("blob %s is held by IDCs %v, none of them a configured peer: %w", d, sources, ErrUnavailable)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, errors.Join(errs...))
}

// get asks a peer's gateway for the blob at path (u in full): as the
// robot when one is configured, with the internal token otherwise. Either
// way the peer is told who asks and why (counted there) and not to fill
// it in turn.
func (r *Replicator) get(ctx context.Context, peer, u, repo, path, cause string) (*http.Response, error) {
	if c := r.robot[peer]; c != nil {
		return c.Get(ctx, repo, path, http.Header{CauseHeader: {cause}})
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if !internaltoken.Safe(req.URL.Scheme, req.URL.Host) { // the config refuses such peers; never send it regardless
		return nil, fmt.Errorf("peer %s at %s: %w", peer, r.o.Peers[peer], internaltoken.ErrPlainHTTP)
	}
	req.Header.Set(TokenHeader, r.o.Token)
	req.Header.Set(NoFillHeader, "1")
	req.Header.Set(IDCHeader, r.o.IDC)
	req.Header.Set(CauseHeader, cause)
	return r.o.Client.Do(req)
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// copyFrom streams the blob from a peer IDC's gateway into this IDC's
// storage, checking size and digest before it becomes visible.
func (r *Replicator) copyFrom(ctx context.Context, peer, base, repo string, d digest.Digest, size int64, cause string) error {
	path := "/v2/" + repo + "/blobs/" + url.PathEscape(d.String())
	u := strings.TrimRight(base, "/") + path
	// No overall timeout (a large layer takes as long as it takes), but a
	// peer that stops sending fails the copy, which holds the IDC-wide
	// lock for d: every pull of d in this IDC waits on it.
	wd, rctx := watchdog.New(ctx, r.o.IdleTimeout, fmt.Errorf("GET %s: no progress for %s", u, r.o.IdleTimeout))
	defer wd.Done()
	resp, err := r.get(rctx, peer, u, repo, path, cause)
	if err != nil {
		return wd.Err(err)
	}
	defer resp.Body.Close()
	body := wd.Body(resp.Body)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(body, 512))
		return fmt.Errorf("GET %s: %s: %s", u, resp.Status, strings.TrimSpace(string(b)))
	}
	dir := fillDir(d)
	w, err := r.o.Driver.Writer(ctx, dir+"/data", false)
	if err != nil {
		return err
	}
	verifier := d.Verifier()
	buf := copyBuffers.Get().(*[]byte)
	n, err := io.CopyBuffer(io.MultiWriter(w, verifier), body, *buf)
	copyBuffers.Put(buf)
	if r.o.Bytes != nil {
		r.o.Bytes.WithLabelValues("in", cause, peer).Add(float64(n))
	}
	switch {
	case err != nil:
	case n != size:
		err = fmt.Errorf("got %d bytes, want %d", n, size)
	case !verifier.Verified():
		err = fmt.Errorf("content does not match %s", d)
	}
	if err != nil {
		w.Cancel(context.WithoutCancel(ctx))
		r.o.Driver.Delete(context.WithoutCancel(ctx), dir)
		return err
	}
	if err := w.Commit(ctx); err != nil {
		w.Cancel(context.WithoutCancel(ctx))
		r.o.Driver.Delete(context.WithoutCancel(ctx), dir)
		return err
	}
	w.Close()
	target := uploadsession.BlobPath(d)
	if _, err := r.o.Driver.Stat(ctx, target); err != nil {
		if err := r.o.Driver.Move(ctx, dir+"/data", target); err != nil {
			r.o.Driver.Delete(context.WithoutCancel(ctx), dir)
			return err
		}
	}
	r.o.Driver.Delete(context.WithoutCancel(ctx), dir)
	return nil
}

// fillsDir holds the fills' staging directories, beside upload sessions'.
const fillsDir = "/uploads"

// fillDir is a new staging directory for a copy of d: fill-<algorithm>-
// <encoded>-<random>. The digest in the name is what lets SweepFills tell
// a running fill's directory from one its server left behind.
func fillDir(d digest.Digest) string {
	var id [8]byte
	rand.Read(id[:])
	return fillsDir + "/fill-" + string(d.Algorithm()) + "-" + d.Encoded() + "-" + hex.EncodeToString(id[:])
}

// fillDigest is the digest a staging directory's name carries, if any.
func fillDigest(name string) (digest.Digest, bool) {
	rest, ok := strings.CutPrefix(name, "fill-")
	if !ok {
		return "", false
	}
	alg, rest, ok := strings.Cut(rest, "-")
	i := strings.LastIndexByte(rest, '-')
	if !ok || i < 0 {
		return "", false
	}
	d, err := digest.Parse(alg + ":" + rest[:i])
	return d, err == nil
}

// SweepFills removes the staging directories of fills that died with
// their server (a crash or kill mid-copy) from drv, idc's storage, and
// returns how many it removed. A fill holds the IDC-wide lock for its
// blob for as long as its directory exists, so a directory whose blob's
// lock is free belongs to no running fill, whatever its age: it is removed
// under that lock. A fill- directory without a digest in its name (as
// older versions named them) is removed once older than olderThan.
// Upload sessions' directories, beside them, are not touched.
func SweepFills(ctx context.Context, lockDB *pgxpool.Pool, idc string, drv storagedriver.StorageDriver, olderThan time.Duration) (int, error) {
	entries, err := drv.List(ctx, fillsDir)
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	// Tried once: a done func that says "finished" makes AdvisoryLock
	// return at the first refusal, without the lock.
	tryOnce := func(context.Context) (bool, error) { return true, nil }
	removed := 0
	var errs []error
	for _, p := range entries {
		name := path.Base(p)
		if !strings.HasPrefix(name, "fill-") {
			continue
		}
		if d, ok := fillDigest(name); ok {
			unlock, busy, err := metadata.AdvisoryLock(ctx, lockDB, fillLock(idc, d), tryOnce)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if busy {
				continue // a fill of d runs: this may be its directory
			}
			err = drv.Delete(ctx, p)
			unlock()
			if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
				errs = append(errs, err)
				continue
			}
		} else {
			fi, err := drv.Stat(ctx, p)
			if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
				errs = append(errs, err)
			}
			if err != nil || time.Since(fi.ModTime()) < olderThan {
				continue
			}
			if err := drv.Delete(ctx, p); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
				errs = append(errs, err)
				continue
			}
		}
		removed++
	}
	return removed, errors.Join(errs...)
}

// Enqueue queues eager copies of a blob just pushed to repo into every
// peer IDC, when repo matches a configured prefix.
func (r *Replicator) Enqueue(ctx context.Context, repo string, d digest.Digest) error {
	if len(r.o.Peers) == 0 || !r.matches(repo) {
		return nil
	}
	idcs := make([]string, 0, len(r.o.Peers))
	for idc := range r.o.Peers {
		idcs = append(idcs, idc)
	}
	_, err := r.o.DB.Exec(ctx, `
		INSERT INTO replication_jobs (digest, repository, to_idc)
		SELECT $1, $2, t.idc FROM unnest($3::text[]) AS t (idc)
		WHERE NOT EXISTS (SELECT 1 FROM blob_placements p WHERE p.digest = $1 AND p.idc = t.idc)
		ON CONFLICT (digest, to_idc) DO NOTHING`, d.String(), repo, idcs)
	return err
}

func (r *Replicator) matches(repo string) bool {
	for _, p := range r.o.Prefixes {
		if strings.HasPrefix(repo, p) {
			return true
		}
	}
	return false
}

// Run works this IDC's replication queue until ctx ends: every server of
// the IDC runs it; jobs are claimed with FOR UPDATE SKIP LOCKED, so each
// is done once. Failed jobs back off and are retried.
func (r *Replicator) Run(ctx context.Context, idle time.Duration) {
	for ctx.Err() == nil {
		worked, err := r.RunOne(ctx)
		if err != nil && ctx.Err() == nil {
			r.o.Log.Warn("replication job", "err", err)
		}
		if !worked {
			select {
			case <-ctx.Done():
			case <-time.After(idle):
			}
		}
	}
}

// jobLease is how long a claimed job is hidden from other servers: if the
// claiming server dies mid-copy, another takes the job after it.
const jobLease = 15 * time.Minute

// RunOne does the oldest due job of this IDC, if any, and reports whether
// there was one. The job is claimed in a short transaction (a lease), not
// held in one for the length of the copy.
func (r *Replicator) RunOne(ctx context.Context) (bool, error) {
	var id int64
	var dg, repo string
	var attempts int
	err := r.o.DB.QueryRow(ctx, `
		UPDATE replication_jobs SET not_before = now() + make_interval(secs => $2)
		WHERE id = (SELECT id FROM replication_jobs WHERE to_idc = $1 AND not_before <= now()
		            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
		RETURNING id, digest, repository, attempts`, r.o.IDC, jobLease.Seconds()).Scan(&id, &dg, &repo, &attempts)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	d, err := digest.Parse(dg)
	if err == nil {
		err = r.copyOnce(ctx, repo, d, CauseReplication, false)
	}
	bg := context.WithoutCancel(ctx)
	if err != nil {
		delay := min(r.o.RetryDelay<<min(attempts, 20), 10*time.Minute)
		if _, uerr := r.o.DB.Exec(bg, `
			UPDATE replication_jobs SET attempts = attempts + 1, last_error = $2,
			       not_before = now() + make_interval(secs => $3) WHERE id = $1`,
			id, err.Error(), delay.Seconds()); uerr != nil {
			return true, uerr
		}
		return true, fmt.Errorf("job %d (%s to %s): %w", id, d, r.o.IDC, err)
	}
	_, err = r.o.DB.Exec(bg, `DELETE FROM replication_jobs WHERE id = $1`, id)
	return true, err
}
