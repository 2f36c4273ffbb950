package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/tests/harness"
)

// Fault tests: a registry's backend (PostgreSQL, or the NameNode of its
// IDC's HDFS) goes away under concurrent pushes and pulls and comes back.
// Every answer is either right or the spec's 503 UNAVAILABLE saying which
// backend is down; everything acknowledged stays readable; the same
// gaia-registry process serves again once the backend is back.

// Operations of the traffic.
const (
	opPushBlob       = "push blob"
	opPushManifest   = "push manifest"
	opGetTag         = "GET manifest by tag"
	opGetDigest      = "GET manifest by digest"
	opGetBlob        = "GET blob"
	opHeadBlob       = "HEAD blob"
	opTags           = "tags/list"
	opCatalog        = "_catalog"
	opUploadPOST     = "upload POST"
	opUploadPATCH    = "upload PATCH"
	opUploadPUT      = "upload PUT"
	trafficManifestT = "application/vnd.oci.image.manifest.v1+json"
)

// trafficOps are what the workers take turns at (opUploadPOST: a chunked
// upload, POST then PATCH then PUT).
var trafficOps = []string{opPushBlob, opPushManifest, opGetTag, opGetDigest, opGetBlob, opHeadBlob, opTags, opCatalog, opUploadPOST}

// answer is one request of the traffic and what came back.
type answer struct {
	op         string
	start, end time.Time
	status     int
	body       string // error answers only
	err        error  // a transport error, or a 2xx with wrong content
}

type pushedManifest struct {
	repo, tag string
	d         digest.Digest
}

// traffic is concurrent clients pushing and pulling over plain HTTP; it
// records every answer and everything the registry acknowledged.
type traffic struct {
	base   string
	client *http.Client
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	answers   []answer
	blobs     map[string][]digest.Digest // acknowledged, by repository
	sizes     map[digest.Digest]int
	manifests []pushedManifest // acknowledged
}

// startTraffic runs workers clients, each on a repository of its own and
// each sending a request every few milliseconds until stop.
func startTraffic(t *testing.T, base string, workers int) *traffic {
	ctx, cancel := context.WithCancel(context.Background())
	tr := &traffic{
		base:   base,
		client: &http.Client{Timeout: 30 * time.Second},
		cancel: cancel,
		blobs:  map[string][]digest.Digest{},
		sizes:  map[digest.Digest]int{},
	}
	for i := range workers {
		tr.wg.Add(1)
		go tr.worker(ctx, fmt.Sprintf("faults/w%d", i))
	}
	t.Cleanup(tr.stop)
	return tr
}

func (tr *traffic) stop() { tr.cancel(); tr.wg.Wait() }

func (tr *traffic) worker(ctx context.Context, repo string) {
	defer tr.wg.Done()
	// Pacing, not synchronisation: a bounded request rate for two cores.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		tr.one(ctx, repo, trafficOps[n%len(trafficOps)])
	}
}

// one sends one request of kind op (a push of a blob when the repository
// has too few blobs for it yet) and records the answer.
func (tr *traffic) one(ctx context.Context, repo, op string) {
	tr.mu.Lock()
	blobs := slices.Clone(tr.blobs[repo])
	sizes := map[digest.Digest]int{}
	for _, d := range blobs {
		sizes[d] = tr.sizes[d]
	}
	var mine []pushedManifest
	for _, m := range tr.manifests {
		if m.repo == repo {
			mine = append(mine, m)
		}
	}
	tr.mu.Unlock()
	if (op == opPushManifest && len(blobs) < 2) || (op == opGetBlob || op == opHeadBlob) && len(blobs) == 0 {
		op = opPushBlob
	}
	if (op == opGetTag || op == opGetDigest || op == opTags || op == opCatalog) && len(mine) == 0 {
		op = opPushManifest
		if len(blobs) < 2 {
			op = opPushBlob
		}
	}
	var (
		req   *http.Request
		check func(body []byte) error // of a 2xx answer
		want  = http.StatusOK
		ack   func()
	)
	switch op {
	case opPushBlob:
		data, d := randomBlob()
		req, _ = http.NewRequestWithContext(ctx, http.MethodPost, tr.base+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), bytes.NewReader(data))
		req.Header.Set("Content-Type", "application/octet-stream")
		want = http.StatusCreated
		ack = func() { tr.blobs[repo] = append(tr.blobs[repo], d); tr.sizes[d] = len(data) }
	case opUploadPOST:
		tr.chunked(ctx, repo)
		return
	case opPushManifest:
		config, layer := blobs[rand.IntN(len(blobs))], blobs[rand.IntN(len(blobs))]
		tag := fmt.Sprintf("t%d", rand.Uint64())
		m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,`+
			`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
			`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}],`+
			`"annotations":{"tag":%q}}`, trafficManifestT, config, sizes[config], layer, sizes[layer], tag)
		d := digest.FromString(m)
		req, _ = http.NewRequestWithContext(ctx, http.MethodPut, tr.base+"/v2/"+repo+"/manifests/"+tag, strings.NewReader(m))
		req.Header.Set("Content-Type", trafficManifestT)
		want = http.StatusCreated
		ack = func() { tr.manifests = append(tr.manifests, pushedManifest{repo, tag, d}) }
	case opGetTag, opGetDigest:
		m := mine[rand.IntN(len(mine))]
		ref := m.tag
		if op == opGetDigest {
			ref = m.d.String()
		}
		req, _ = http.NewRequestWithContext(ctx, http.MethodGet, tr.base+"/v2/"+repo+"/manifests/"+ref, nil)
		req.Header.Set("Accept", trafficManifestT)
		check = digestIs(m.d)
	case opGetBlob, opHeadBlob:
		d := blobs[rand.IntN(len(blobs))]
		method := http.MethodGet
		check = digestIs(d)
		if op == opHeadBlob {
			method, check = http.MethodHead, nil
		}
		req, _ = http.NewRequestWithContext(ctx, method, tr.base+"/v2/"+repo+"/blobs/"+d.String(), nil)
	case opTags:
		req, _ = http.NewRequestWithContext(ctx, http.MethodGet, tr.base+"/v2/"+repo+"/tags/list", nil)
		check = func(body []byte) error {
			var list struct{ Tags []string }
			if err := json.Unmarshal(body, &list); err != nil {
				return err
			}
			for _, m := range mine {
				if !slices.Contains(list.Tags, m.tag) {
					return fmt.Errorf("tags/list of %s lacks acknowledged tag %s", repo, m.tag)
				}
			}
			return nil
		}
	case opCatalog:
		req, _ = http.NewRequestWithContext(ctx, http.MethodGet, tr.base+"/v2/_catalog?n=1000", nil)
		check = func(body []byte) error {
			var cat struct{ Repositories []string }
			if err := json.Unmarshal(body, &cat); err != nil {
				return err
			}
			if !slices.Contains(cat.Repositories, repo) {
				return fmt.Errorf("_catalog %v lacks %s", cat.Repositories, repo)
			}
			return nil
		}
	}
	tr.send(ctx, op, req, want, check, ack)
}

// chunked pushes a blob in three requests (POST, one PATCH, PUT), each
// recorded as an answer of its own; a failed step ends the upload.
func (tr *traffic) chunked(ctx context.Context, repo string) {
	data, d := randomBlob()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, tr.base+"/v2/"+repo+"/blobs/uploads/", nil)
	hdr, ok := tr.send(ctx, opUploadPOST, req, http.StatusAccepted, nil, nil)
	if !ok {
		return
	}
	req, _ = http.NewRequestWithContext(ctx, http.MethodPatch, tr.base+hdr.Get("Location"), bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Content-Range", fmt.Sprintf("0-%d", len(data)-1))
	if hdr, ok = tr.send(ctx, opUploadPATCH, req, http.StatusAccepted, nil, nil); !ok {
		return
	}
	loc, _ := url.Parse(hdr.Get("Location"))
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	req, _ = http.NewRequestWithContext(ctx, http.MethodPut, tr.base+loc.String(), nil)
	tr.send(ctx, opUploadPUT, req, http.StatusCreated, nil, func() {
		tr.blobs[repo] = append(tr.blobs[repo], d)
		tr.sizes[d] = len(data)
	})
}

// send sends req and records the answer of kind op: right when its status
// is want and check (if any) accepts the body; then ack runs (under tr.mu).
// It returns the answer's header and whether it was right.
func (tr *traffic) send(ctx context.Context, op string, req *http.Request, want int,
	check func([]byte) error, ack func()) (http.Header, bool) {
	a := answer{op: op, start: time.Now()}
	var hdr http.Header
	resp, err := tr.client.Do(req)
	if err != nil {
		a.err = err
	} else {
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		a.status, hdr = resp.StatusCode, resp.Header
		switch {
		case rerr != nil:
			a.err = fmt.Errorf("reading the body: %w", rerr)
		case resp.StatusCode == want && check != nil:
			a.err = check(body)
		case resp.StatusCode != want:
			a.body = string(body)
		}
	}
	a.end = time.Now()
	if ctx.Err() != nil {
		return nil, false // stopping: we may have cut the request
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.answers = append(tr.answers, a)
	ok := a.err == nil && a.status == want
	if ok && ack != nil {
		ack()
	}
	return hdr, ok
}

// randomBlob is 1 to 65 KiB of random bytes and their digest.
func randomBlob() ([]byte, digest.Digest) {
	data := make([]byte, 1024+rand.IntN(64<<10))
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	return data, digest.FromBytes(data)
}

func digestIs(d digest.Digest) func([]byte) error {
	return func(body []byte) error {
		if got := digest.FromBytes(body); got != d {
			return fmt.Errorf("body digest %s, want %s", got, d)
		}
		return nil
	}
}

// counts are the answers per operation since some moment: all, and the
// successful ones.
type counts struct{ all, ok map[string]int }

func (tr *traffic) counts(since time.Time) counts {
	c := counts{all: map[string]int{}, ok: map[string]int{}}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, a := range tr.answers {
		if a.start.Before(since) {
			continue
		}
		c.all[a.op]++
		if a.err == nil && a.status/100 == 2 {
			c.ok[a.op]++
		}
	}
	return c
}

// waitFor polls the answers given since `since` until cond holds; a minute
// without fails the test.
func (tr *traffic) waitFor(t *testing.T, what string, since time.Time, cond func(counts) bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		c := tr.counts(since)
		if cond(c) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 1m; answers since %s: %v, successful: %v\nfirst failures:\n%s",
				what, since.Format(time.StampMilli), c.all, c.ok, tr.failures(since, 10))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// failures describes up to n unsuccessful answers since `since`.
func (tr *traffic) failures(since time.Time, n int) string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var b strings.Builder
	for _, a := range tr.answers {
		if !a.start.Before(since) && (a.err != nil || a.status/100 != 2) && n > 0 {
			n--
			fmt.Fprintf(&b, "  %s\n", a)
		}
	}
	return b.String()
}

func (a answer) String() string {
	return fmt.Sprintf("%s at %s-%s: %d %q %v", a.op, a.start.Format(time.StampMilli), a.end.Format(time.StampMilli),
		a.status, a.body, a.err)
}

// unavailable checks an error answer: the spec's JSON error body with one
// error, code UNAVAILABLE, its message naming what is down.
func unavailable(status int, body, what string) error {
	var e struct {
		Errors []struct{ Code, Message string }
	}
	if status != http.StatusServiceUnavailable || json.Unmarshal([]byte(body), &e) != nil ||
		len(e.Errors) != 1 || e.Errors[0].Code != "UNAVAILABLE" || !strings.Contains(e.Errors[0].Message, what) {
		return fmt.Errorf("%d %q, want 503 with one UNAVAILABLE error whose message names the %s", status, body, what)
	}
	return nil
}

// check goes through every answer: each is either right or the spec's 503
// naming what was down. Answers wholly inside the outage [down, up] are 503
// unless served (ok) without the backend that was down, and then right.
func (tr *traffic) check(t *testing.T, what string, down, up time.Time, served func(op string) bool) {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	bad := 0
	fail := func(a answer, format string, args ...any) {
		if bad++; bad <= 20 {
			t.Errorf("%s: %s", a, fmt.Sprintf(format, args...))
		}
	}
	for _, a := range tr.answers {
		during := !a.start.Before(down) && !a.end.After(up)
		switch {
		case a.err != nil:
			fail(a, "a wrong answer")
		case a.status/100 == 2 && during && !served(a.op):
			fail(a, "succeeded while the %s was down", what)
		case a.status/100 == 2:
		case during && served(a.op):
			fail(a, "failed, yet it does not need the %s, which alone was down", what)
		case a.op == opHeadBlob: // no body to say more
			if a.status != http.StatusServiceUnavailable {
				fail(a, "want 503")
			}
		default:
			if err := unavailable(a.status, a.body, what); err != nil {
				fail(a, "want 503 with one UNAVAILABLE error whose message names the %s", what)
			}
		}
	}
	if bad > 20 {
		t.Errorf("... %d wrong answers in all (of %d)", bad, len(tr.answers))
	}
}

// checkAcked reads back everything the registry acknowledged: every blob
// and every manifest, by tag and by digest, with the right digest.
func (tr *traffic) checkAcked(t *testing.T) {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	get := func(path, accept string, want digest.Digest) {
		req, _ := http.NewRequest(http.MethodGet, tr.base+path, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := tr.client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || digest.FromBytes(body) != want {
			t.Errorf("acknowledged, then GET %s: %d, %d bytes of digest %s (%v); want %s",
				path, resp.StatusCode, len(body), digest.FromBytes(body), err, want)
		}
	}
	n := 0
	for repo, blobs := range tr.blobs {
		for _, d := range blobs {
			get("/v2/"+repo+"/blobs/"+d.String(), "", d)
			n++
		}
	}
	for _, m := range tr.manifests {
		get("/v2/"+m.repo+"/manifests/"+m.tag, trafficManifestT, m.d)
		get("/v2/"+m.repo+"/manifests/"+m.d.String(), trafficManifestT, m.d)
	}
	t.Logf("%d answers; %d blobs and %d manifests acknowledged, all read back", len(tr.answers), n, len(tr.manifests))
}

// pushedSince waits until the traffic has pushed and pulled blobs and
// manifests since `since`.
func (tr *traffic) pushedSince(t *testing.T, what string, since time.Time) {
	t.Helper()
	tr.waitFor(t, what, since, func(c counts) bool {
		return c.ok[opPushBlob] >= 10 && c.ok[opUploadPUT] >= 3 && c.ok[opPushManifest] >= 10 &&
			c.ok[opGetBlob] >= 3 && c.ok[opGetTag] >= 3
	})
}

// waitEvery waits until the traffic has had 20 answers to each op since
// `since` (answers are counted once complete).
func (tr *traffic) waitEvery(t *testing.T, what string, since time.Time, ops ...string) {
	t.Helper()
	tr.waitFor(t, "requests of every kind "+what, since, func(c counts) bool {
		for _, op := range ops {
			if c.all[op] < 20 {
				return false
			}
		}
		return true
	})
}

// TestPostgresRestartUnderTraffic: PostgreSQL stops under pushes and pulls
// and starts again. While it is down every request gets 503 UNAVAILABLE
// naming the database, and /readyz says the database is why; afterwards
// the same server serves again, and everything acknowledged before, during
// and after reads back intact.
func TestPostgresRestartUnderTraffic(t *testing.T) {
	pg := harness.StartPostgres(t)
	addr := harness.FreeAddr(t)
	reg := harness.StartRegistry(t, addr, harness.RegistryConfig(addr, pg.URL, t.TempDir()))
	base := reg.URL()
	tr := startTraffic(t, base, 6)
	tr.pushedSince(t, "pushes and pulls before the restart", time.Time{})

	pg.Stop(t)
	down := time.Now()
	// Every request but the steps of an upload whose POST failed.
	tr.waitEvery(t, "while PostgreSQL is down", down, opPushBlob, opPushManifest, opGetTag, opGetDigest,
		opGetBlob, opHeadBlob, opTags, opCatalog, opUploadPOST)
	if code, body := harness.Get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "database") {
		t.Errorf("/readyz while PostgreSQL is down: %d %q; want 503 naming the database", code, body)
	}
	up := time.Now()
	t.Logf("PostgreSQL down for %s: answers %v", up.Sub(down).Round(time.Millisecond), tr.counts(down).all)
	pg.Start(t)
	back := time.Now()
	tr.pushedSince(t, "pushes and pulls after the restart", back)
	t.Logf("serving again within %s of PostgreSQL's start", time.Since(back).Round(time.Millisecond))
	if code, body := harness.Get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after the restart: %d %q", code, body)
	}
	tr.stop()
	tr.check(t, "database", down, up, func(string) bool { return false })
	tr.checkAcked(t)
	d := pushSmallImage(t, base, "faults/after", "v1")
	get, _ := http.NewRequest(http.MethodGet, base+"/v2/faults/after/manifests/v1", nil)
	get.Header.Set("Accept", trafficManifestT)
	if resp, err := http.DefaultClient.Do(get); err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("a new push after the restart, read back: %v %v", resp, err)
	}
}

// TestNamenodeStopUnderTraffic: the NameNode of the registry's HDFS stops
// under pushes and pulls. Blob reads and uploads get 503 UNAVAILABLE naming
// storage; manifests (GET by tag and digest, PUT), tags/list, _catalog and
// blob HEADs, which PostgreSQL alone answers, keep working, and /readyz
// stays 200 (a gateway keeps the server); when the NameNode is back the
// blob path serves again without a restart of gaia-registry, and
// everything acknowledged reads back intact.
func TestNamenodeStopUnderTraffic(t *testing.T) {
	env := harness.Start(t, harness.HDFSFaults)
	harness.LockHDFSFaults(t)
	harness.WaitHDFSReady(t, env)
	nn := env.Get(t, "GAIA_TEST_HDFS_FAULTS_NAMENODE")
	addr := harness.FreeAddr(t)
	root := fmt.Sprintf("/gaia-e2e/faults-%d", time.Now().UnixNano())
	reg := harness.StartRegistry(t, addr, harness.RegistryConfig(addr, harness.NewDatabase(t),
		fmt.Sprintf("hdfs: {namenodes: [%q], rootdirectory: %s, user: gaia, replication: 1, dialtimeout: 5s, iotimeout: 15s}", nn, root)))
	base := reg.URL()
	tr := startTraffic(t, base, 6)
	tr.pushedSince(t, "pushes and pulls before the NameNode stops", time.Time{})

	// Whatever happens below, the cluster is left with its NameNode up.
	t.Cleanup(func() { harness.HDFSControl(t, env, "namenode/start") })
	harness.HDFSControl(t, env, "namenode/stop")
	down := time.Now()
	served := func(op string) bool {
		return op != opPushBlob && op != opGetBlob && op != opUploadPATCH && op != opUploadPUT
	}
	// Every request but the PUT of an upload whose PATCH failed.
	tr.waitEvery(t, "while the NameNode is down", down, opPushBlob, opPushManifest, opGetTag, opGetDigest,
		opGetBlob, opHeadBlob, opTags, opCatalog, opUploadPOST, opUploadPATCH)
	if code, body := harness.Get(t, base+"/readyz"); code != http.StatusOK || !strings.Contains(body, "storage") {
		t.Errorf("/readyz while the NameNode is down: %d %q; want 200 naming storage", code, body)
	}
	up := time.Now()
	t.Logf("NameNode down for %s: answers %v", up.Sub(down).Round(time.Millisecond), tr.counts(down).all)
	harness.HDFSControl(t, env, "namenode/start")
	harness.WaitHDFSReady(t, env)
	back := time.Now()
	t.Logf("NameNode back after %s", back.Sub(up).Round(time.Millisecond))
	tr.pushedSince(t, "pushes and pulls after the NameNode is back", back)
	t.Logf("blobs served again within %s of the NameNode's return", time.Since(back).Round(time.Millisecond))
	if code, body := harness.Get(t, base+"/readyz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/readyz with the NameNode back: %d %q", code, body)
	}
	tr.stop()
	tr.check(t, "storage", down, up, served)
	tr.checkAcked(t)
}
