package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
)

func (b *bench) repo(name string) string { return b.cfg.prefix + "/" + name }

// discard is io.Discard without ReadFrom, so io.CopyBuffer uses our
// (large) buffer instead of io.Discard's 8 KiB ones.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// ---------------------------------------------------------------- push

// pushBlob uploads the generator stream (seed, size) as one streamed PATCH:
// POST (202) -> PATCH whole body (202) -> PUT ?digest= (201).
func (t *target) pushBlob(ctx context.Context, repo string, seed uint64, size int64, d digest.Digest) (time.Duration, error) {
	start := time.Now()
	loc, err := t.startUpload(ctx, repo)
	if err != nil {
		return 0, err
	}
	hdr := http.Header{"Content-Type": {"application/octet-stream"}}
	resp, err := t.do(ctx, "PATCH", loc.String(), hdr, newGen(seed, size), size, 202)
	if err != nil {
		return 0, err
	}
	drain(resp)
	if r := resp.Header.Get("Range"); r != "" && r != fmt.Sprintf("0-%d", size-1) {
		return 0, fmt.Errorf("[%s] PATCH %s: Range %q after %d bytes, want 0-%d", t.name, loc.Path, r, size, size-1)
	}
	loc2, err := t.resolve(resp.Header.Get("Location"))
	if err != nil {
		return 0, err
	}
	if err := t.finishUpload(ctx, loc2, d, nil); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// syncDisks runs sync(2) before a timed transfer when -sync is set.
func (b *bench) syncDisks() {
	if !b.cfg.sync {
		return
	}
	t0 := time.Now()
	syncDisks()
	if d := time.Since(t0); d > 100*time.Millisecond {
		logf("sync(2) before the next transfer took %s (untimed)", d.Round(time.Millisecond))
	}
}

func syncNote(on bool) string {
	if on {
		return "; sync(2), untimed, before each transfer"
	}
	return ""
}

func mibps(size int64, d time.Duration) float64 {
	return float64(size) / (1 << 20) / d.Seconds()
}

func (b *bench) runPush(ctx context.Context) error {
	size, repo := b.cfg.blobSize, b.repo("bigblob")
	tps := map[string]map[string][]float64{} // client -> target -> MiB/s
	for _, c := range b.cfg.pushClients {
		tps[c] = map[string][]float64{}
	}
	for i := range b.cfg.n {
		for _, c := range b.cfg.pushClients {
			if err := b.pushRound(ctx, c, i, repo, size, tps[c]); err != nil {
				return err
			}
		}
	}
	for _, c := range b.cfg.pushClients {
		b.add("push "+formatSize(size)+" blob", pushMetric(c, b.cfg.n), higherBetter, medians(tps[c]))
	}
	b.note("push: each client pushes new content in every repetition (a fresh splitmix64 stream; for the external clients written to a file in -work-dir first, untimed); targets take turns within each repetition, first target rotated; after every push a HEAD checks the blob is there with its size (untimed)%s", syncNote(b.cfg.sync))
	return nil
}

// pushMetric names a client's push row.
func pushMetric(c string, n int) string {
	switch c {
	case "curl-put":
		return fmt.Sprintf("curl: POST + monolithic PUT -T file; MiB/s, median of %d", n)
	case "curl-patch":
		return fmt.Sprintf("curl: POST + PATCH -T file + PUT; MiB/s, median of %d", n)
	case clientCrane:
		return fmt.Sprintf("crane push (OCI layout, 1 layer); MiB/s, median of %d", n)
	}
	return fmt.Sprintf("regbench: POST + one streamed PATCH (Content-Length, generated on the fly) + PUT; MiB/s, median of %d", n)
}

// pushRound is repetition i of client c's push: new content, pushed to
// every target in turn.
func (b *bench) pushRound(ctx context.Context, c string, i int, repo string, size int64, tps map[string][]float64) error {
	seed := rand.Uint64()
	t0 := time.Now()
	var (
		f   *pushFile
		lay *ociLayout
		err error
	)
	if c == clientRegbench {
		var d digest.Digest
		if d, err = genDigest(seed, size); err != nil {
			return err
		}
		f = &pushFile{digest: d, size: size}
	} else {
		if f, err = writeBlobFile(b.tools.workDir, seed, size); err != nil {
			return fmt.Errorf("writing the content to push into %s: %w", b.tools.workDir, err)
		}
		defer os.Remove(f.path)
		if c == clientCrane {
			if lay, err = newOCILayout(b.tools.workDir, f); err != nil {
				return err
			}
			defer os.RemoveAll(lay.dir)
		}
	}
	logf("push %s %d/%d: new blob %s (%s, prepared in %s, untimed)", c, i+1, b.cfg.n, f.digest.Encoded()[:12], formatSize(size), time.Since(t0).Round(time.Millisecond))
	for _, t := range b.order(i) {
		b.syncDisks()
		el, err := timed(func() error {
			switch c {
			case "curl-put":
				return t.curlPushPut(ctx, &b.tools, repo, f)
			case "curl-patch":
				return t.curlPushPatch(ctx, &b.tools, repo, f)
			case clientCrane:
				return t.cranePush(ctx, &b.tools, repo, fmt.Sprintf("crane-%d", i), lay)
			default:
				_, err := t.pushBlob(ctx, repo, seed, size, f.digest)
				return err
			}
		})
		if err != nil {
			return err
		}
		if err := t.checkBlob(ctx, repo, f.digest, size); err != nil {
			return err
		}
		tp := mibps(size, el)
		tps[t.name] = append(tps[t.name], tp)
		logf("[%s] push %s %d/%d: %s in %s = %.1f MiB/s", t.name, c, i+1, b.cfg.n, formatSize(size), el.Round(time.Millisecond), tp)
	}
	if c == clientRegbench {
		b.blobSeed, b.blobDigest = seed, f.digest
	}
	return nil
}

// ---------------------------------------------------------------- pull

func (t *target) pullBlob(ctx context.Context, repo string, d digest.Digest, size int64, buf []byte) (time.Duration, error) {
	start := time.Now()
	resp, err := t.do(ctx, "GET", t.url("/v2/"+repo+"/blobs/"+d.String()), nil, nil, 0, 200)
	if err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(discard{}, resp.Body, buf)
	resp.Body.Close()
	if err != nil {
		return 0, fmt.Errorf("[%s] GET blob %s: after %d bytes: %w", t.name, d, n, err)
	}
	el := time.Since(start)
	if n != size {
		return 0, fmt.Errorf("[%s] GET blob %s: got %d bytes, want %d", t.name, d, n, size)
	}
	return el, t.checkDigestHeader(resp, d, "blob GET")
}

func (b *bench) runPull(ctx context.Context) error {
	size, repo := b.cfg.blobSize, b.repo("bigblob")
	if b.blobDigest == "" {
		seed := rand.Uint64()
		d, err := genDigest(seed, size)
		if err != nil {
			return err
		}
		for _, t := range b.targets {
			el, err := t.pushBlob(ctx, repo, seed, size, d)
			if err != nil {
				return err
			}
			logf("[%s] pull: pushed the blob to pull (%s, untimed here, %.1f MiB/s)", t.name, formatSize(size), mibps(size, el))
		}
		b.blobSeed, b.blobDigest = seed, d
	}
	var multi *multiImage
	if contains(b.cfg.pullClients, clientCtr) {
		var err error
		if multi, err = newMultiImage(b.cfg.layers, size); err != nil {
			return err
		}
		for _, t := range b.targets {
			if err := multi.push(ctx, t, b.repo("multi"), "latest"); err != nil {
				return err
			}
		}
		if err := b.tools.ctrForget(ctx); err != nil {
			return fmt.Errorf("emptying containerd namespace %s before the fetches: %w", b.tools.ctrNamespace, err)
		}
	}
	buf := make([]byte, 1<<20)
	tps := map[string]map[string][]float64{}
	for _, c := range b.cfg.pullClients {
		tps[c] = map[string][]float64{}
	}
	for i := range b.cfg.pullN {
		for _, c := range b.cfg.pullClients {
			for _, t := range b.order(i) {
				b.syncDisks()
				el, err := timed(func() error {
					switch c {
					case clientCurl:
						return t.curlPull(ctx, &b.tools, repo, b.blobDigest, size)
					case clientCrane:
						return t.cranePull(ctx, &b.tools, repo, b.blobDigest)
					case clientCtr:
						return t.ctrFetch(ctx, &b.tools, b.repo("multi"), "latest")
					default:
						_, err := t.pullBlob(ctx, repo, b.blobDigest, size, buf)
						return err
					}
				})
				if err != nil {
					return err
				}
				if c == clientCtr {
					if err := b.tools.ctrForget(ctx); err != nil {
						return err
					}
				}
				tp := mibps(size, el)
				tps[c][t.name] = append(tps[c][t.name], tp)
				logf("[%s] pull %s %d/%d: %s in %s = %.1f MiB/s", t.name, c, i+1, b.cfg.pullN, formatSize(size), el.Round(time.Millisecond), tp)
			}
		}
	}
	for _, c := range b.cfg.pullClients {
		b.add("pull "+formatSize(size)+" blob", pullMetric(c, b.cfg.pullN, multi), higherBetter, medians(tps[c]))
	}
	b.note("pull: every client reads what was pushed moments before (in the page cache on both); targets take turns within each repetition, first target rotated%s", syncNote(b.cfg.sync))
	if multi != nil {
		b.note("pull: ctr is containerd %s's `ctr content fetch --plain-http` into a containerd of its own (-ctr-address), whose content store should be on tmpfs so that the client's disk does not bound it; it fetches the image's %d layers of %s, config and manifest, verifying each digest; everything is removed from containerd after each fetch (untimed)", ctrVersion(ctx, &b.tools), len(multi.layers), formatSize(multi.layerSize))
	}
	return nil
}

// pullMetric names a client's pull row.
func pullMetric(c string, n int, m *multiImage) string {
	switch c {
	case clientCurl:
		return fmt.Sprintf("curl -L -o /dev/null; MiB/s, median of %d", n)
	case clientCrane:
		return fmt.Sprintf("crane blob > /dev/null (verifies the digest); MiB/s, median of %d", n)
	case clientCtr:
		return fmt.Sprintf("ctr content fetch, image of %d layers x %s; MiB/s, median of %d", len(m.layers), formatSize(m.layerSize), n)
	}
	return fmt.Sprintf("regbench, 1 MiB reads, discarded (large-buffer client); MiB/s, median of %d", n)
}

// ---------------------------------------------------------------- manifest

var acceptManifest = http.Header{"Accept": {mediaTypeManifest}}

func (t *target) getManifest(ctx context.Context, rawURL string, img *image) error {
	resp, err := t.do(ctx, "GET", rawURL, acceptManifest, nil, 0, 200)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("[%s] GET %s: %w", t.name, rawURL, err)
	}
	if n != int64(len(img.manifest)) {
		return fmt.Errorf("[%s] GET %s: %d bytes, want %d", t.name, rawURL, n, len(img.manifest))
	}
	return t.checkDigestHeader(resp, img.manifestDigest, "manifest GET")
}

// hammer runs c clients GETting the manifest for dur and returns every
// request's latency (unsorted) and the elapsed time.
func (t *target) hammer(ctx context.Context, rawURL string, img *image, c int, dur time.Duration) ([]time.Duration, time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
		lats     = make([][]time.Duration, c)
	)
	start := time.Now()
	deadline := start.Add(dur)
	for g := range c {
		wg.Go(func() {
			l := make([]time.Duration, 0, 1<<14)
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(deadline) {
					break
				}
				rctx, rcancel := context.WithTimeout(ctx, smallTimeout)
				err := t.getManifest(rctx, rawURL, img)
				rcancel()
				if err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
				l = append(l, time.Since(t0))
			}
			lats[g] = l
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return nil, 0, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	return all, elapsed, nil
}

func (b *bench) runManifest(ctx context.Context) error {
	repo, c := b.repo("image"), b.cfg.concurrency
	for _, t := range b.targets {
		if err := b.img.push(ctx, t, repo, "latest"); err != nil {
			return err
		}
	}
	ref := "latest"
	if b.cfg.manifestRef == "digest" {
		ref = digest.FromBytes(b.img.manifest).String()
	}
	rounds := b.cfg.manifestRounds
	slice := b.cfg.duration / time.Duration(rounds)
	lats := map[string][]time.Duration{}
	elapsed := map[string]time.Duration{}
	// Warm-up: open the c connections, fill caches.
	for _, t := range b.targets {
		if _, _, err := t.hammer(ctx, t.url("/v2/"+repo+"/manifests/"+ref), b.img, c, 500*time.Millisecond); err != nil {
			return err
		}
	}
	for r := range rounds {
		for _, t := range b.order(r) {
			l, el, err := t.hammer(ctx, t.url("/v2/"+repo+"/manifests/"+ref), b.img, c, slice)
			if err != nil {
				return err
			}
			lats[t.name] = append(lats[t.name], l...)
			elapsed[t.name] += el
			logf("[%s] manifest GET x%d round %d/%d: %d requests in %s = %.0f req/s", t.name, c, r+1, rounds, len(l), el.Round(time.Millisecond), float64(len(l))/el.Seconds())
		}
	}
	rps, p50, p99 := map[string]val{}, map[string]val{}, map[string]val{}
	for _, t := range b.targets {
		l := lats[t.name]
		if len(l) == 0 {
			return fmt.Errorf("[%s] manifest GET: no request completed in %s", t.name, b.cfg.duration)
		}
		slices.Sort(l)
		rps[t.name] = val{v: float64(len(l)) / elapsed[t.name].Seconds()}
		p50[t.name] = val{v: ms(percentile(l, 0.50))}
		p99[t.name] = val{v: ms(percentile(l, 0.99))}
		logf("[%s] manifest GET x%d for %s: %d requests, %.0f req/s, p50 %.2f ms, p99 %.2f ms",
			t.name, c, elapsed[t.name].Round(time.Millisecond), len(l), rps[t.name].v, p50[t.name].v, p99[t.name].v)
	}
	sc := fmt.Sprintf("manifest GET by %s, %d clients", b.cfg.manifestRef, c)
	b.add(sc, fmt.Sprintf("req/s over %s", b.cfg.duration), higherBetter, rps)
	b.add(sc, "latency p50 (ms)", lowerBetter, p50)
	b.add(sc, "latency p99 (ms)", lowerBetter, p99)
	b.note("manifest: Accept: %s; every response's status, length and Docker-Content-Digest are checked; after a 0.5 s unmeasured warm-up, each target's %s runs as %d rounds interleaved with the other targets'; the client shares the machine's cores with the server", mediaTypeManifest, b.cfg.duration, rounds)
	return nil
}

// ---------------------------------------------------------------- tags

func (b *bench) runTags(ctx context.Context) error {
	repo, n := b.repo("tags"), b.cfg.tags
	width := len(itoa(n - 1))
	tag := func(i int) string { return fmt.Sprintf("t%0*d", width, i) }

	for _, t := range b.targets {
		if _, err := t.pushSmallBlob(ctx, repo, b.img.config); err != nil {
			return err
		}
		if _, err := t.pushSmallBlob(ctx, repo, b.img.layer); err != nil {
			return err
		}
	}
	seed, err := b.seedInterleaved(ctx, "tags seed (manifest PUT by tag)", b.targets, n, func(ctx context.Context, t *target, i int) error {
		return t.putManifest(ctx, repo, tag(i), b.img.manifest)
	})
	if err != nil {
		return err
	}

	full, walk := map[string][]float64{}, map[string][]float64{}
	for i := range b.cfg.reps {
		for _, t := range b.order(i) {
			// Full list, no n.
			start := time.Now()
			var body struct {
				Name string   `json:"name"`
				Tags []string `json:"tags"`
			}
			lctx, cancel := context.WithTimeout(ctx, smallTimeout)
			next, err := t.getJSON(lctx, t.url("/v2/"+repo+"/tags/list"), &body)
			cancel()
			if err != nil {
				return err
			}
			el := time.Since(start)
			if len(body.Tags) < n {
				return fmt.Errorf("[%s] GET /v2/%s/tags/list (no n): %d tags, want >= %d (Link: %q): the full list was not returned", t.name, repo, len(body.Tags), n, next)
			}
			full[t.name] = append(full[t.name], ms(el))

			// Paginated walk, n=1000.
			start = time.Now()
			seen := make(map[string]struct{}, n)
			lctx, cancel = context.WithTimeout(ctx, smallTimeout)
			pages, err := t.walkList(lctx, "/v2/"+repo+"/tags/list?n=1000", "tags", func(tags []string) error {
				if len(tags) > 1000 {
					return fmt.Errorf("[%s] tags/list?n=1000: page of %d tags", t.name, len(tags))
				}
				for _, tg := range tags {
					if _, dup := seen[tg]; dup {
						return fmt.Errorf("[%s] tags/list walk: tag %q returned twice", t.name, tg)
					}
					seen[tg] = struct{}{}
				}
				return nil
			})
			cancel()
			if err != nil {
				return err
			}
			el2 := time.Since(start)
			if len(seen) < n {
				return fmt.Errorf("[%s] tags/list walk (n=1000): %d tags in %d pages, want >= %d", t.name, len(seen), pages, n)
			}
			walk[t.name] = append(walk[t.name], ms(el2))
			logf("[%s] tags/list %d/%d: full %d tags in %.1f ms; n=1000 walk %d pages in %.1f ms", t.name, i+1, b.cfg.reps, len(body.Tags), ms(el), pages, ms(el2))
		}
	}
	sc := fmt.Sprintf("tags/list, %d tags", n)
	b.add(sc, fmt.Sprintf("seed: manifest PUT by tag, tags/s (%d clients)", b.cfg.seedConcurrency), higherBetter, seed)
	b.add(sc, fmt.Sprintf("full list, no n (ms, median of %d)", b.cfg.reps), lowerBetter, medians(full))
	b.add(sc, fmt.Sprintf("walk n=1000 via Link (ms, median of %d)", b.cfg.reps), lowerBetter, medians(walk))
	return nil
}

// seedInterleaved runs fn(t, i) for i in [0, n) on each of targets with
// -seed-concurrency clients, in -seed-rounds chunks that alternate between
// the targets (order rotated every chunk), so that all targets seed under
// the same machine conditions. It returns each target's items/s over the
// time its own chunks took.
func (b *bench) seedInterleaved(ctx context.Context, what string, targets []*target, n int, fn func(ctx context.Context, t *target, i int) error) (map[string]val, error) {
	rounds := max(1, min(b.cfg.seedRounds, n))
	busy := map[string]time.Duration{}
	for r := range rounds {
		lo, hi := r*n/rounds, (r+1)*n/rounds
		for _, t := range rotate(targets, r) {
			start := time.Now()
			err := parallel(ctx, hi-lo, b.cfg.seedConcurrency, nil, func(ctx context.Context, i int) error {
				return fn(ctx, t, lo+i)
			})
			if err != nil {
				return nil, err
			}
			el := time.Since(start)
			busy[t.name] += el
			if el >= time.Second {
				logf("[%s] %s %d/%d: %d in %s = %.0f/s (%d of %d done)", t.name, what, r+1, rounds, hi-lo, el.Round(time.Millisecond), float64(hi-lo)/el.Seconds(), hi, n)
			}
		}
	}
	out := map[string]val{}
	for _, t := range targets {
		out[t.name] = val{v: float64(n) / busy[t.name].Seconds()}
		logf("[%s] %s: %d in %s = %.0f/s", t.name, what, n, busy[t.name].Round(time.Millisecond), out[t.name].v)
	}
	return out, nil
}

func medians(m map[string][]float64) map[string]val {
	out := map[string]val{}
	for k, xs := range m {
		out[k] = val{v: median(xs)}
	}
	return out
}

// ---------------------------------------------------------------- catalog

func (b *bench) runCatalog(ctx context.Context) error {
	n := b.cfg.repos
	src := b.repo("image")
	width := max(6, len(itoa(n-1)))
	repoName := func(i int) string { return fmt.Sprintf("%s/catalog/r%0*d", b.cfg.prefix, width, i) }

	var apiTargets []*target
	for _, t := range b.targets {
		// The mount source: the test image (idempotent if the manifest
		// scenario already pushed it).
		if err := b.img.push(ctx, t, src, "latest"); err != nil {
			return err
		}
		dir, ok := b.cfg.seedCatalogFS[t.name]
		if !ok {
			apiTargets = append(apiTargets, t)
			continue
		}
		start := time.Now()
		if err := seedCatalogFS(dir, n, repoName, b.img); err != nil {
			return fmt.Errorf("[%s] -seed-catalog-fs %s: %w", t.name, dir, err)
		}
		logf("[%s] catalog seed: wrote %d repositories into %s directly in %s (not through the API)", t.name, n, dir, time.Since(start).Round(time.Millisecond))
		b.note("catalog: %s's %d repositories were written directly into its filesystem storage (-seed-catalog-fs), not through the API; it has no seeding rate", t.name, n)
	}
	fallbacks := map[string]*atomic.Int64{}
	for _, t := range apiTargets {
		fallbacks[t.name] = new(atomic.Int64)
	}
	seedRate, err := b.seedInterleaved(ctx, "catalog seed (2 mounts + manifest PUT)", apiTargets, n, func(ctx context.Context, t *target, i int) error {
		r := repoName(i)
		for _, blob := range [][]byte{b.img.config, b.img.layer} {
			fb, err := t.mountBlob(ctx, r, src, digest.FromBytes(blob), blob)
			if err != nil {
				return err
			}
			if fb {
				fallbacks[t.name].Add(1)
			}
		}
		return t.putManifest(ctx, r, "latest", b.img.manifest)
	})
	if err != nil {
		return err
	}
	for _, t := range apiTargets {
		if f := fallbacks[t.name].Load(); f > 0 {
			b.note("catalog: %s declined %d of %d cross-repo mounts (202); those blobs were uploaded instead", t.name, f, 2*n)
		}
	}
	if len(apiTargets) == len(b.targets) {
		b.note("catalog: seeded through the API on every target (POST ?mount=&from= for config and layer, then PUT manifest :latest)")
	}

	first := map[string][]float64{}
	for i := range b.cfg.reps {
		for _, t := range b.order(i) {
			var body struct {
				Repositories []string `json:"repositories"`
			}
			start := time.Now()
			lctx, cancel := context.WithTimeout(ctx, smallTimeout)
			_, err := t.getJSON(lctx, t.url("/v2/_catalog?n=100"), &body)
			cancel()
			if err != nil {
				return err
			}
			el := time.Since(start)
			if len(body.Repositories) == 0 || len(body.Repositories) > 100 {
				return fmt.Errorf("[%s] GET /v2/_catalog?n=100: %d repositories, want 1..100", t.name, len(body.Repositories))
			}
			first[t.name] = append(first[t.name], ms(el))
			logf("[%s] _catalog?n=100 %d/%d: %d repositories in %.1f ms", t.name, i+1, b.cfg.reps, len(body.Repositories), ms(el))
		}
	}

	walk := map[string]val{}
	for _, t := range b.targets {
		seen := make(map[string]struct{}, n+16)
		start := time.Now()
		wctx, cancel := context.WithTimeout(ctx, b.cfg.walkCap)
		pages, err := t.walkList(wctx, "/v2/_catalog?n=1000", "repositories", func(repos []string) error {
			if len(repos) > 1000 {
				return fmt.Errorf("[%s] _catalog?n=1000: page of %d repositories", t.name, len(repos))
			}
			for _, r := range repos {
				if _, dup := seen[r]; dup {
					return fmt.Errorf("[%s] _catalog walk: repository %q returned twice", t.name, r)
				}
				seen[r] = struct{}{}
			}
			return nil
		})
		capped := wctx.Err() != nil && ctx.Err() == nil
		cancel()
		el := time.Since(start)
		if capped && (err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err)) {
			walk[t.name] = val{v: b.cfg.walkCap.Seconds(), capped: true}
			logf("[%s] _catalog walk (n=1000): stopped at the %s cap after %d pages, %d repositories", t.name, b.cfg.walkCap, pages, len(seen))
			continue
		}
		if err != nil {
			return err
		}
		if len(seen) < n {
			return fmt.Errorf("[%s] _catalog walk (n=1000): %d repositories in %d pages, want >= %d", t.name, len(seen), pages, n)
		}
		walk[t.name] = val{v: el.Seconds()}
		logf("[%s] _catalog walk (n=1000): %d repositories, %d pages in %s", t.name, len(seen), pages, el.Round(time.Millisecond))
	}

	sc := fmt.Sprintf("_catalog, %d repos", n)
	b.add(sc, fmt.Sprintf("seed: 2 mounts + manifest PUT, repos/s (%d clients)", b.cfg.seedConcurrency), higherBetter, seedRate)
	b.add(sc, fmt.Sprintf("first page n=100 (ms, median of %d)", b.cfg.reps), lowerBetter, medians(first))
	b.add(sc, fmt.Sprintf("full walk n=1000 via Link (s, once, cap %s)", b.cfg.walkCap), lowerBetter, walk)
	return nil
}

func isTimeout(err error) bool {
	var ue *url.Error
	return errors.As(err, &ue) && ue.Timeout()
}
