package gc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gohdfs "github.com/colinmarc/hdfs/v2"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/gc"
	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
	"github.com/gaia-registry/gaia/registry/uploadsession"
	hdfsdriver "github.com/gaia-registry/gaia/storage-hdfs"
	"github.com/gaia-registry/gaia/tests/harness"
)

// idc is one IDC of a test cluster: its storage, its uploads, its collector.
type idc struct {
	name    string
	drv     storagedriver.StorageDriver
	uploads *uploadsession.Store
	gc      *gc.Collector
}

type cluster struct {
	db        *pgxpool.Pool
	manifests *metadata.Manifests
	blobs     *metadata.Blobs
	idcs      []*idc
}

// drivers are the storage drivers the tests run on: the filesystem and
// the harness's real HDFS (a test fails if HDFS is not running).
var drivers = []string{"filesystem", "hdfs"}

// hdfsRoots and fsRoots: each test driver's root directory.
var (
	hdfsRoots = map[storagedriver.StorageDriver]string{}
	fsRoots   = map[storagedriver.StorageDriver]string{}
	rootsMu   sync.Mutex
)

func fsRootOf(t *testing.T, d storagedriver.StorageDriver) string {
	rootsMu.Lock()
	defer rootsMu.Unlock()
	return fsRoots[d]
}

func newDriver(t *testing.T, kind string) storagedriver.StorageDriver {
	t.Helper()
	switch kind {
	case "filesystem":
		root := t.TempDir()
		d, err := filesystem.FromParameters(map[string]any{"rootdirectory": root})
		if err != nil {
			t.Fatal(err)
		}
		rootsMu.Lock()
		fsRoots[d] = root
		rootsMu.Unlock()
		return d
	case "hdfs":
		env := harness.Start(t, harness.HDFS)
		root := fmt.Sprintf("/gaia-gc-test/%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), time.Now().UnixNano())
		d, err := hdfsdriver.FromParameters(map[string]any{
			"namenodes": []any{env.Get(t, "GAIA_TEST_HDFS_NAMENODE")}, "rootdirectory": root, "user": "gaia", "replication": 1,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			d.Delete(context.Background(), "/")
			d.Close()
		})
		rootsMu.Lock()
		hdfsRoots[d] = root
		rootsMu.Unlock()
		return d
	}
	t.Fatalf("driver %q", kind)
	return nil
}

// newCluster: IDCs named a, b, ... with the storage drivers given.
func newCluster(t *testing.T, kinds ...string) *cluster {
	t.Helper()
	db := metadatatest.Pool(t)
	c := &cluster{db: db, manifests: metadata.NewManifests(db), blobs: metadata.NewBlobs(db)}
	for i, k := range kinds {
		name := string(rune('a' + i))
		drv := newDriver(t, k)
		c.idcs = append(c.idcs, &idc{
			name: name, drv: drv,
			uploads: uploadsession.New(db, drv).InIDC(name),
			gc:      gc.New(gc.Options{DB: db, IDC: name, Driver: drv, Batch: 50}),
		})
	}
	return c
}

// pushBlob uploads content into repo through IDC i's uploads.
func (c *cluster) pushBlob(ctx context.Context, i int, repo string, content []byte) (digest.Digest, error) {
	d := digest.FromBytes(content)
	s, err := c.idcs[i].uploads.Start(ctx, repo)
	if err != nil {
		return "", err
	}
	_, err = c.idcs[i].uploads.Finish(ctx, repo, s.ID, 0, bytes.NewReader(content), d)
	return d, err
}

// place copies a blob into IDC i as a cross-IDC fill does: bytes in
// place and the placement recorded under the IDC's lock on the digest.
func (c *cluster) place(t *testing.T, i int, content []byte) {
	t.Helper()
	ctx := context.Background()
	d := digest.FromBytes(content)
	unlock, _, err := metadata.AdvisoryLock(ctx, c.db, metadata.BlobLockKey(c.idcs[i].name, d.String()), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := c.idcs[i].drv.PutContent(ctx, uploadsession.BlobPath(d), content); err != nil {
		t.Fatal(err)
	}
	if _, err := c.db.Exec(ctx, `INSERT INTO blob_placements (digest, idc) VALUES ($1, $2)`, d.String(), c.idcs[i].name); err != nil {
		t.Fatal(err)
	}
}

// image is a manifest over a config and layers.
func image(layers ...[]byte) (manifest []byte, blobs map[digest.Digest][]byte) {
	blobs = map[digest.Digest][]byte{}
	config := fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","layers":%d}`, len(layers))
	blobs[digest.FromBytes(config)] = config
	var descs []string
	for _, l := range layers {
		d := digest.FromBytes(l)
		blobs[d] = l
		descs = append(descs, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}`, d, len(l)))
	}
	manifest = fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		digest.FromBytes(config), len(config), strings.Join(descs, ","))
	return manifest, blobs
}

// pushImage pushes an image as a client does: the blobs the repository
// lacks, uploaded in parallel (as docker does), then the manifest under
// tag. A *metadata.MissingError is the answer MANIFEST_BLOB_UNKNOWN (a
// race lost to the collector).
func (c *cluster) pushImage(ctx context.Context, i int, repo, tag string, layers ...[]byte) (digest.Digest, error) {
	mf, blobs := image(layers...)
	var ds []digest.Digest
	var wg sync.WaitGroup
	errs := make(chan error, len(blobs))
	for d, content := range blobs {
		ds = append(ds, d)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.blobs.Lookup(ctx, repo, d, c.idcs[i].name)
			if errors.Is(err, metadata.ErrNotFound) {
				_, err = c.pushBlob(ctx, i, repo, content)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return "", err
		}
	}
	md := digest.FromBytes(mf)
	err := c.manifests.Put(ctx, repo, metadata.NewManifest{
		Manifest: metadata.Manifest{Digest: md, MediaType: "application/vnd.oci.image.manifest.v1+json", Content: mf},
		Blobs:    ds, Tags: []string{tag},
	})
	return md, err
}

// pass runs a collection pass in every IDC (reviews are cluster-wide;
// bytes are each IDC's), repeated until one finds nothing to do.
func (c *cluster) pass(t *testing.T) {
	t.Helper()
	for range 10 {
		busy := false
		for _, x := range c.idcs {
			st, err := x.gc.Pass(context.Background())
			if err != nil {
				t.Fatalf("gc pass in %s: %v", x.name, err)
			}
			busy = busy || st.ManifestsReviewed+st.BlobsReviewed+st.BytesDeleted > 0
		}
		if !busy {
			return
		}
	}
	t.Fatal("gc passes still finding work after 10 rounds")
}

// objects lists the blob objects in a storage: digest → size.
func objects(t *testing.T, drv storagedriver.StorageDriver) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	out := map[string]int64{}
	algs, err := drv.List(ctx, "/blobs")
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return out
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, alg := range algs {
		prefixes, err := drv.List(ctx, alg)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range prefixes {
			dirs, err := drv.List(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			for _, dir := range dirs {
				fi, err := drv.Stat(ctx, dir+"/data")
				if err != nil {
					t.Fatalf("%s: %v", dir, err)
				}
				out[path.Base(alg)+":"+path.Base(dir)] = fi.Size()
			}
		}
	}
	return out
}

// checkStorage: each IDC's storage holds exactly the blobs placed there,
// each hashing to its digest, and every blob row is referenced by a
// manifest (nothing unreferenced left). It returns the referenced bytes.
func (c *cluster) checkStorage(t *testing.T) int64 {
	t.Helper()
	ctx := context.Background()
	var unreferenced []string
	rows, _ := c.db.Query(ctx, `SELECT digest FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.digest = b.digest)`)
	unreferenced, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(unreferenced) > 0 {
		t.Errorf("%d blob rows no manifest references after a final pass: %v", len(unreferenced), unreferenced)
	}
	var leftManifests int
	if err := c.db.QueryRow(ctx, `SELECT count(*) FROM manifests m WHERE NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id)
		AND NOT EXISTS (SELECT 1 FROM manifest_references r WHERE r.child_id = m.id)`).Scan(&leftManifests); err != nil {
		t.Fatal(err)
	}
	if leftManifests > 0 {
		t.Errorf("%d untagged, unreferenced manifests left after a final pass", leftManifests)
	}
	var total int64
	for _, x := range c.idcs {
		rows, _ := c.db.Query(ctx, `SELECT b.digest, b.size FROM blobs b JOIN blob_placements p ON p.digest = b.digest AND p.idc = $1`, x.name)
		placed := map[string]int64{}
		for rows.Next() {
			var d string
			var n int64
			if err := rows.Scan(&d, &n); err != nil {
				t.Fatal(err)
			}
			placed[d] = n
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		stored := objects(t, x.drv)
		var storedSum, placedSum int64
		for d, n := range stored {
			storedSum += n
			if _, ok := placed[d]; !ok {
				t.Errorf("IDC %s: object %s (%d bytes) in storage, no placement records it", x.name, d, n)
			}
		}
		for d, n := range placed {
			placedSum += n
			if stored[d] != n {
				t.Errorf("IDC %s: blob %s placed (%d bytes), storage has %d bytes", x.name, d, n, stored[d])
				continue
			}
			content, err := x.drv.GetContent(ctx, uploadsession.BlobPath(digest.Digest(d)))
			if err != nil || digest.FromBytes(content).String() != d {
				t.Errorf("IDC %s: blob %s does not hash right (%v)", x.name, d, err)
			}
		}
		if storedSum != placedSum {
			t.Errorf("IDC %s: storage holds %d bytes of blobs, the placed blobs sum to %d", x.name, storedSum, placedSum)
		}
		total += storedSum
	}
	return total
}

func layer(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, 42))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestReclaim: images pushed in IDC a (filesystem), some copied to IDC b
// (HDFS); tags and manifests deleted; a collection with no review delay
// leaves each storage holding exactly the blobs still referenced, hashing
// right, and nothing else.
func TestReclaim(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, "filesystem", "hdfs")
	shared := layer(1, 3000)
	keep := layer(2, 2000)
	gone1, gone2 := layer(3, 5000), layer(4, 7000)
	m1, err := c.pushImage(ctx, 0, "app/one", "v1", shared, keep)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := c.pushImage(ctx, 0, "app/two", "v1", shared, gone1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.pushImage(ctx, 0, "app/two", "v2", gone2); err != nil {
		t.Fatal(err)
	}
	// Re-pushing app/one:v1 over another image leaves m1 untagged.
	if _, err := c.pushImage(ctx, 0, "app/one", "v1", shared, keep, layer(5, 100)); err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{shared, gone1, gone2, keep} {
		c.place(t, 1, b) // IDC b holds copies
	}
	// An upload completed whose blob no manifest ever names.
	if _, err := c.pushBlob(ctx, 0, "app/two", layer(6, 4000)); err != nil {
		t.Fatal(err)
	}
	if err := c.manifests.Delete(ctx, "app/two", m2); err != nil {
		t.Fatal(err)
	}
	if err := c.manifests.DeleteTag(ctx, "app/two", "v2"); err != nil {
		t.Fatal(err)
	}
	before := map[string]int{}
	for _, x := range c.idcs {
		before[x.name] = len(objects(t, x.drv))
	}

	c.pass(t)
	if _, err := c.manifests.ByDigest(ctx, "app/one", m1); !errors.Is(err, metadata.ErrNotFound) {
		t.Errorf("untagged manifest app/one@%s: %v, want deleted", m1, err)
	}
	total := c.checkStorage(t)
	c.checkUsage(t)
	for _, gone := range [][]byte{gone1, gone2} {
		d := digest.FromBytes(gone)
		for _, x := range c.idcs {
			if _, err := x.drv.Stat(ctx, uploadsession.BlobPath(d)); !errors.As(err, new(storagedriver.PathNotFoundError)) {
				t.Errorf("IDC %s: unreferenced blob %s still in storage (%v)", x.name, d, err)
			}
		}
	}
	after := map[string]int{}
	for _, x := range c.idcs {
		after[x.name] = len(objects(t, x.drv))
	}
	// a: the re-push's config, shared, keep and layer 5 stay (the first
	// config was app/two:v1's too: gone with both manifests).
	if after["a"] != 4 || after["b"] != 2 || before["a"] <= after["a"] || before["b"] <= after["b"] {
		t.Errorf("objects before %v, after %v; want a: 4 and b: 2 (shared and keep) after", before, after)
	}
	st, err := gc.ReadStatus(ctx, c.db, 0)
	if err != nil {
		t.Fatal(err)
	}
	var reclaimed int64
	for _, tot := range st.Totals {
		reclaimed += tot.BytesReclaimed
	}
	if reclaimed == 0 || total == 0 {
		t.Errorf("status totals %+v (referenced bytes %d)", st.Totals, total)
	}
}

// TestRace: 8 clients push images sharing layers, 4 delete tags and
// manifests, and the collector runs continuously with no review delay,
// for a bounded number of operations. A push that loses a race to the
// collector gets MANIFEST_BLOB_UNKNOWN (a *MissingError) and retries,
// re-uploading. Afterwards every tag resolves to a manifest whose blobs
// are in storage and hash right, and after a final pass nothing
// unreferenced is left. On both storage drivers.
func TestRace(t *testing.T) {
	for _, kind := range drivers {
		t.Run(kind, func(t *testing.T) { race(t, kind) })
	}
}

func race(t *testing.T, kind string) {
	ctx := context.Background()
	c := newCluster(t, kind)
	// Widen the windows a missing serialisation would open: between an
	// upload's move into place and its record, and between a byte
	// deletion's check and its delete. (Inside the locks, they only slow
	// the test down.)
	pause := func(string) { time.Sleep(time.Duration(rand.IntN(5000)) * time.Microsecond) }
	c.idcs[0].uploads.Hook(func(step string) {
		if step == uploadsession.StepMoved {
			pause(step)
		}
	})
	c.idcs[0].gc = gc.New(gc.Options{DB: c.db, IDC: "a", Driver: c.idcs[0].drv, Batch: 50, Workers: 2, Hook: func(step string) {
		if step == gc.StepBytesChecked {
			pause(step)
		}
	}})
	const pushers, deleters, pushes, deletes = 8, 4, 6, 12
	repos := []string{"race/r0", "race/r1"}
	var shared [][]byte
	for i := range 4 {
		shared = append(shared, layer(uint64(100+i), 2048))
	}
	var wg, gcWG sync.WaitGroup
	var mu sync.Mutex
	var losses, pushed, gaveUp int
	stop := make(chan struct{})
	var gcErrs []error
	gcWG.Add(1)
	go func() {
		defer gcWG.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.idcs[0].gc.Pass(ctx); err != nil {
				gcErrs = append(gcErrs, err)
			}
		}
	}()
	for p := range pushers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range pushes + 1 {
				repo := repos[p%2]
				tag := fmt.Sprintf("p%d-%d", p, j%3)
				if j == pushes { // a last tag the deleters leave alone
					tag = fmt.Sprintf("keep-p%d", p)
				}
				layers := [][]byte{shared[(p+j)%4], shared[(p+j+1)%4], layer(uint64(1000*p+j), 1024)}
				for attempt := 0; ; attempt++ {
					md, err := c.pushImage(ctx, 0, repo, tag, layers...)
					if err == nil {
						// Pull it back at once, as a client would: a blob
						// missing while its manifest is still there (a
						// manifest is never resurrected) is the collector
						// deleting reachable bytes.
						_, blobs := image(layers...)
						for d := range blobs {
							content, rerr := c.idcs[0].drv.GetContent(ctx, uploadsession.BlobPath(d))
							if rerr == nil && digest.FromBytes(content) == d {
								continue
							}
							if _, merr := c.manifests.ByDigest(ctx, repo, md); merr == nil {
								t.Errorf("manifest %s@%s is present, its blob %s is not in storage (%v)", repo, md, d, rerr)
							}
						}
					}
					var missing *metadata.MissingError
					if errors.As(err, &missing) {
						mu.Lock()
						losses++
						if attempt == 20 { // the collector keeps winning: a liveness matter, not safety
							gaveUp++
							mu.Unlock()
							break
						}
						mu.Unlock()
						continue
					}
					if err != nil {
						t.Errorf("push %s:%s: %v", repo, tag, err)
						return
					}
					mu.Lock()
					pushed++
					mu.Unlock()
					break
				}
			}
		}()
	}
	for k := range deleters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(k), 7))
			repo := repos[k%2]
			for range deletes {
				tags, _, err := c.manifests.Tags(ctx, repo, "", 100)
				if errors.Is(err, metadata.ErrNotFound) || len(tags) == 0 {
					time.Sleep(time.Millisecond)
					continue
				}
				if err != nil {
					t.Errorf("tags: %v", err)
					return
				}
				tag := tags[r.IntN(len(tags))]
				if strings.HasPrefix(tag, "keep-") {
					continue
				}
				if r.IntN(2) == 0 {
					err = c.manifests.DeleteTag(ctx, repo, tag)
				} else {
					var m *metadata.Manifest
					if m, err = c.manifests.ByTag(ctx, repo, tag); err == nil {
						err = c.manifests.Delete(ctx, repo, m.Digest)
					}
				}
				if err != nil && !errors.Is(err, metadata.ErrNotFound) {
					t.Errorf("delete %s:%s: %v", repo, tag, err)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	gcWG.Wait()
	if len(gcErrs) > 0 {
		t.Errorf("collector errors during the race: %v", errors.Join(gcErrs...))
	}
	t.Logf("%d pushes, %d races lost to the collector (retried), %d pushes given up after 20 losses", pushed, losses, gaveUp)

	// Every tag resolves, to a manifest whose blobs are placed here.
	tagged := 0
	for _, repo := range repos {
		tags, _, err := c.manifests.Tags(ctx, repo, "", 1000)
		if err != nil && !errors.Is(err, metadata.ErrNotFound) {
			t.Fatal(err)
		}
		for _, tag := range tags {
			if _, err := c.manifests.ByTag(ctx, repo, tag); err != nil {
				t.Errorf("tag %s:%s does not resolve: %v", repo, tag, err)
			}
			tagged++
		}
	}
	var unplaced []string
	rows, _ := c.db.Query(ctx, `SELECT DISTINCT mb.digest FROM manifest_blobs mb
		WHERE NOT EXISTS (SELECT 1 FROM blob_placements p WHERE p.digest = mb.digest AND p.idc = 'a')`)
	unplaced, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(unplaced) > 0 {
		t.Errorf("blobs manifests reference with no placement: %v", unplaced)
	}
	// Bytes of referenced blobs: present and hashing right, checked
	// before the final pass as well as after it.
	var refs []string
	rows, _ = c.db.Query(ctx, `SELECT DISTINCT digest FROM manifest_blobs`)
	if refs, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	for _, d := range refs {
		content, err := c.idcs[0].drv.GetContent(ctx, uploadsession.BlobPath(digest.Digest(d)))
		if err != nil || digest.FromBytes(content).String() != d {
			t.Errorf("referenced blob %s: bytes missing or wrong (%v)", d, err)
		}
	}
	if pushed < pushers || tagged == 0 || len(refs) == 0 {
		t.Errorf("%d tags and %d referenced blobs left: the race tested nothing", tagged, len(refs))
	}
	c.pass(t)
	c.checkStorage(t)
	c.checkUsage(t)
}

// checkUsage: the incrementally kept storage usage equals a count from
// scratch, for every repository and namespace.
func (c *cluster) checkUsage(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	nss, repos, err := metadata.StorageUsage(ctx, c.db, "")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][2]int64{}
	for _, u := range repos {
		got["repo "+u.Name] = [2]int64{u.DedupBytes, u.LogicalBytes}
	}
	for _, u := range nss {
		got["ns "+u.Name] = [2]int64{u.DedupBytes, u.LogicalBytes}
	}
	rows, _ := c.db.Query(ctx, `
		SELECT 'repo ' || r.name,
		       coalesce((SELECT sum(b.size) FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest WHERE rb.repository_id = r.id), 0)::bigint,
		       (coalesce((SELECT sum(b.size) FROM manifest_blobs mb JOIN blobs b ON b.digest = mb.digest WHERE mb.repository_id = r.id), 0)
		      + coalesce((SELECT sum(octet_length(m.content)) FROM manifests m WHERE m.repository_id = r.id), 0))::bigint
		FROM repositories r
		UNION ALL
		SELECT 'ns ' || ns,
		       coalesce((SELECT sum(b.size) FROM blobs b WHERE b.digest IN (
		           SELECT rb.digest FROM repository_blobs rb JOIN repositories r2 ON r2.id = rb.repository_id WHERE split_part(r2.name, '/', 1) = ns)), 0)::bigint,
		       (coalesce((SELECT sum(b.size) FROM manifest_blobs mb JOIN blobs b ON b.digest = mb.digest JOIN repositories r3 ON r3.id = mb.repository_id WHERE split_part(r3.name, '/', 1) = ns), 0)
		      + coalesce((SELECT sum(octet_length(m.content)) FROM manifests m JOIN repositories r4 ON r4.id = m.repository_id WHERE split_part(r4.name, '/', 1) = ns), 0))::bigint
		FROM (SELECT DISTINCT split_part(name, '/', 1) AS ns FROM repositories) x`)
	for rows.Next() {
		var name string
		var want [2]int64
		if err := rows.Scan(&name, &want[0], &want[1]); err != nil {
			t.Fatal(err)
		}
		if got[name] != want {
			t.Errorf("%s: usage kept %v (dedup, logical), counted from scratch %v", name, got[name], want)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestUsageAndQuota: usage per repository and namespace, deduplicated and
// logical, follows pushes, deletions and collection (checked against a
// count from scratch, before and after folding); a namespace quota
// refuses an upload that would pass it and a manifest PUT once over it,
// with DENIED and the numbers, and lets a blob the namespace holds in.
func TestUsageAndQuota(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, "filesystem")
	l1, l2, l3 := layer(11, 3000), layer(12, 2000), layer(13, 1000)
	if _, err := c.pushImage(ctx, 0, "team/a", "v1", l1, l2); err != nil {
		t.Fatal(err)
	}
	if _, err := c.pushImage(ctx, 0, "team/a", "v2", l1, l2); err != nil { // the same manifest, another tag
		t.Fatal(err)
	}
	mb, err := c.pushImage(ctx, 0, "team/b", "v1", l1, l3)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.pushImage(ctx, 0, "other", "v1", l3); err != nil {
		t.Fatal(err)
	}
	c.checkUsage(t)
	nss, _, err := metadata.StorageUsage(ctx, c.db, "team/")
	if err != nil || len(nss) != 1 || nss[0].Name != "team" {
		t.Fatalf("namespaces for prefix team/: %+v %v", nss, err)
	}
	_, cfg := image(l1, l2)
	var cfgSize int64
	for d, b := range cfg {
		if d != digest.FromBytes(l1) && d != digest.FromBytes(l2) {
			cfgSize = int64(len(b))
		}
	}
	if want := int64(3000+2000+1000) + cfgSize; nss[0].DedupBytes != want {
		t.Errorf("team deduplicated: %d, want %d (l1 once, l2, l3, one config)", nss[0].DedupBytes, want)
	}
	if err := c.manifests.Delete(ctx, "team/b", mb); err != nil {
		t.Fatal(err)
	}
	c.pass(t)
	c.checkUsage(t)
	if _, err := metadata.FoldUsage(ctx, c.db); err != nil {
		t.Fatal(err)
	}
	c.checkUsage(t)

	nss, _, _ = metadata.StorageUsage(ctx, c.db, "team")
	used := nss[0].DedupBytes
	if err := metadata.SetQuota(ctx, c.db, "team", used+100); err != nil {
		t.Fatal(err)
	}
	_, err = c.pushBlob(ctx, 0, "team/c", layer(14, 200))
	var e errcode.Error
	if !errors.As(err, &e) || e.Code != errcode.ErrorCodeDenied || !strings.Contains(e.Message, fmt.Sprintf("%d bytes used of %d", used, used+100)) {
		t.Fatalf("an upload past the quota: %v; want DENIED with the numbers", err)
	}
	if _, err := c.pushBlob(ctx, 0, "team/c", l1); err != nil { // the namespace holds it: adds nothing
		t.Fatalf("a blob the namespace holds: %v", err)
	}
	if _, err := c.pushBlob(ctx, 0, "other/c", layer(14, 200)); err != nil { // another namespace
		t.Fatal(err)
	}
	if err := metadata.SetQuota(ctx, c.db, "team", used-1); err != nil {
		t.Fatal(err)
	}
	_, err = c.pushImage(ctx, 0, "team/a", "v3", l1, l2)
	if !errors.As(err, &e) || e.Code != errcode.ErrorCodeDenied || !strings.Contains(e.Message, "over its storage quota") {
		t.Fatalf("a manifest PUT over the quota: %v", err)
	}
	c.checkUsage(t)
}

// TestWalk: the storage walk removes blob objects no placement records
// once older than the grace period (aged here by setting their mtime),
// and, on HDFS, stale @staging files; it leaves young ones, placed ones,
// and runs at most once per Every (a lease).
func TestWalk(t *testing.T) {
	for _, kind := range drivers {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			c := newCluster(t, kind)
			x := c.idcs[0]
			var age func(p string)
			var staging gc.StagingSweeper
			switch kind {
			case "filesystem":
				fsRoot := fsRootOf(t, x.drv)
				age = func(p string) {
					old := time.Now().Add(-48 * time.Hour)
					if err := os.Chtimes(filepath.Join(fsRoot, p), old, old); err != nil {
						t.Fatal(err)
					}
				}
			case "hdfs":
				hd := x.drv.(*hdfsdriver.Driver)
				staging = hd
				env := harness.Start(t, harness.HDFS)
				cl, err := gohdfs.NewClient(gohdfs.ClientOptions{Addresses: []string{env.Get(t, "GAIA_TEST_HDFS_NAMENODE")}, User: "gaia"})
				if err != nil {
					t.Fatal(err)
				}
				defer cl.Close()
				rootsMu.Lock()
				root := hdfsRoots[x.drv]
				rootsMu.Unlock()
				age = func(p string) {
					old := time.Now().Add(-48 * time.Hour)
					if err := cl.Chtimes(path.Join(root, p), old, old); err != nil {
						t.Fatal(err)
					}
				}
				if err := cl.MkdirAll(path.Join(root, "@staging"), 0o755); err != nil {
					t.Fatal(err)
				}
				for _, name := range []string{"old", "new"} {
					w, err := cl.Create(path.Join(root, "@staging", name))
					if err != nil {
						t.Fatal(err)
					}
					w.Write([]byte(name))
					w.Close()
				}
				age("@staging/old")
			}
			placed, err := c.pushBlob(ctx, 0, "walk/app", layer(31, 100))
			if err != nil {
				t.Fatal(err)
			}
			age(uploadsession.BlobPath(placed))
			orphanOld, orphanNew := layer(32, 100), layer(33, 100)
			for _, b := range [][]byte{orphanOld, orphanNew} {
				if err := x.drv.PutContent(ctx, uploadsession.BlobPath(digest.FromBytes(b)), b); err != nil {
					t.Fatal(err)
				}
			}
			age(uploadsession.BlobPath(digest.FromBytes(orphanOld)))
			res, err := x.gc.Walk(ctx, gc.WalkOptions{Grace: time.Hour, Rate: 10_000, Staging: staging})
			if err != nil || !res.Ran {
				t.Fatalf("walk: %+v %v", res, err)
			}
			if res.Removed != 1 {
				t.Errorf("walk removed %d objects; want the old unplaced one", res.Removed)
			}
			exists := func(p string) bool { _, err := x.drv.Stat(ctx, p); return err == nil }
			if exists(uploadsession.BlobPath(digest.FromBytes(orphanOld))) || !exists(uploadsession.BlobPath(digest.FromBytes(orphanNew))) ||
				!exists(uploadsession.BlobPath(placed)) {
				t.Errorf("after the walk: old orphan %v (want gone), young orphan %v, placed blob %v (want both there)",
					exists(uploadsession.BlobPath(digest.FromBytes(orphanOld))), exists(uploadsession.BlobPath(digest.FromBytes(orphanNew))),
					exists(uploadsession.BlobPath(placed)))
			}
			if kind == "hdfs" && res.Staging != 1 {
				t.Errorf("walk removed %d staging files; want the old one", res.Staging)
			}
			if again, err := x.gc.Walk(ctx, gc.WalkOptions{Grace: time.Hour}); err != nil || again.Ran {
				t.Errorf("a second walk within Every ran: %+v %v", again, err)
			}
		})
	}
}

// Locks a test may wait to see waited for (SQL over pg_locks l): another
// transaction's rows, or the advisory lock 4242 that
// TestUploadRecordedWhileReviewDeletes holds an upload's link insert on.
const (
	rowLock  = `l.locktype IN ('transactionid', 'tuple')`
	heldLink = `l.locktype = 'advisory' AND l.objid = 4242`
)

// lockWaits counts the backends of this test's database (other packages'
// tests share the server) waiting for a lock of kind.
func (c *cluster) lockWaits(t *testing.T, kind string) int {
	t.Helper()
	var n int
	if err := c.db.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE NOT l.granted AND a.datname = current_database() AND `+kind).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestUploadRecordedWhileReviewDeletes: an upload of blob X finishes
// while a review deletes X. The upload's record is held (by a trigger the
// test installs) after its placement insert found this IDC's old
// placement and before its link and blob row are written; the review
// deletes X meanwhile. Whatever order the two end in, an upload that
// succeeded must leave X complete: its row, its link and this IDC's
// placement, so the byte deletion the review queued keeps the bytes a
// manifest then names. (Before the upload locked X's row first, it left
// the row and the link without the placement, and the collector deleted
// the bytes under a manifest.)
func TestUploadRecordedWhileReviewDeletes(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, "filesystem")
	x := layer(7, 3000)
	d, err := c.pushBlob(ctx, 0, "race/x", x) // recorded, placed, reviewed when due (now)
	if err != nil {
		t.Fatal(err)
	}
	// Inserts into repository_blobs wait while the test holds advisory
	// lock 4242.
	if _, err := c.db.Exec(ctx, `
		CREATE FUNCTION test_hold_links() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN PERFORM pg_advisory_lock_shared(4242); PERFORM pg_advisory_unlock_shared(4242); RETURN NEW; END $$;
		CREATE TRIGGER test_hold_links BEFORE INSERT ON repository_blobs FOR EACH ROW EXECUTE FUNCTION test_hold_links();`); err != nil {
		t.Fatal(err)
	}
	hold, err := c.db.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Release()
	if _, err := hold.Exec(ctx, `SELECT pg_advisory_lock(4242)`); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			released = true
			if _, err := hold.Exec(ctx, `SELECT pg_advisory_unlock(4242)`); err != nil {
				t.Error(err)
			}
		}
	}
	defer release()
	uploaded := make(chan error, 1)
	go func() {
		_, err := c.pushBlob(ctx, 0, "race/x", x)
		uploaded <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for c.lockWaits(t, heldLink) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the upload never reached its link insert")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The review runs now: it deletes X unless the upload holds X's row,
	// in which case it waits for the upload.
	reviewed := make(chan error, 1)
	go func() {
		_, err := c.idcs[0].gc.Pass(ctx)
		reviewed <- err
	}()
	var reviewErr error
	reviewDone := false
	for !reviewDone && c.lockWaits(t, rowLock) == 0 {
		select {
		case reviewErr = <-reviewed:
			reviewDone = true
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the review neither ended nor waited for the upload")
		}
	}
	// Which order it was (the review waiting for the upload's lock on the
	// blob's row, or done first) is the implementation's; the outcome below
	// must be safe either way.
	t.Logf("review done before the upload's record: %v", reviewDone)
	release()
	if err := <-uploaded; err != nil {
		t.Fatalf("upload: %v", err)
	}
	if !reviewDone {
		reviewErr = <-reviewed
	}
	if reviewErr != nil {
		t.Fatalf("review: %v", reviewErr)
	}
	// The upload succeeded, so X is either whole (row, link and this
	// IDC's placement) or gone with all three, the review having won
	// after it. A manifest naming X is then refused, or its bytes outlive
	// every byte deletion queued meanwhile.
	var row, linked, placed bool
	if err := c.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM blobs WHERE digest = $1),
		EXISTS (SELECT 1 FROM repository_blobs WHERE digest = $1),
		EXISTS (SELECT 1 FROM blob_placements WHERE digest = $1 AND idc = 'a')`, d.String()).Scan(&row, &linked, &placed); err != nil {
		t.Fatal(err)
	}
	if row != linked || row != placed {
		t.Errorf("blob %s after the upload and the review: row %v, link %v, placement in a %v; want all or none", d, row, linked, placed)
	}
	mf, blobs := image(x)
	var ds []digest.Digest
	for bd, content := range blobs {
		ds = append(ds, bd)
		if bd != d {
			if _, err := c.pushBlob(ctx, 0, "race/x", content); err != nil {
				t.Fatal(err)
			}
		}
	}
	err = c.manifests.Put(ctx, "race/x", metadata.NewManifest{
		Manifest: metadata.Manifest{Digest: digest.FromBytes(mf), MediaType: "application/vnd.oci.image.manifest.v1+json", Content: mf},
		Blobs:    ds, Tags: []string{"v1"},
	})
	var missing *metadata.MissingError
	if errors.As(err, &missing) {
		if row {
			t.Errorf("manifest PUT refused (%v) with blob %s recorded", err, d)
		}
		return // the client lost the race and would upload X again
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.db.Exec(ctx, `UPDATE gc_blob_deletions SET lease_until = NULL`); err != nil {
		t.Fatal(err)
	}
	c.pass(t)
	if content, err := c.idcs[0].drv.GetContent(ctx, uploadsession.BlobPath(d)); err != nil || digest.FromBytes(content) != d {
		t.Errorf("blob %s named by a manifest is gone from storage after a pass: %v", d, err)
	}
}

// TestStalledCollectorHoldsNoOneUp: a collector stalled inside a
// deletion's transaction (a paused process, a connection not yet known to
// be lost) must not hold up another collector's deletions. Their running
// totals once shared one row, which the stalled transaction held.
func TestStalledCollectorHoldsNoOneUp(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, "filesystem")
	x, err := c.pushBlob(ctx, 0, "stall/x", layer(8, 100)) // unreferenced, due at once
	if err != nil {
		t.Fatal(err)
	}
	y, err := c.pushBlob(ctx, 0, "stall/y", layer(9, 100))
	if err != nil {
		t.Fatal(err)
	}
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	a := gc.New(gc.Options{DB: c.db, IDC: "a", Driver: c.idcs[0].drv, Batch: 1, Workers: 1, Hook: func(step string) {
		if step == gc.StepBlobDeleted {
			once.Do(func() { close(held) })
			<-release
		}
	}})
	aDone := make(chan error, 1)
	go func() {
		_, err := a.Pass(ctx)
		aDone <- err
	}()
	defer func() {
		close(release)
		if err := <-aDone; err != nil {
			t.Errorf("the stalled collector, released: %v", err)
		}
	}()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the first collector never reached its deletion")
	}
	b := gc.New(gc.Options{DB: c.db, IDC: "a", Driver: c.idcs[0].drv, Batch: 1, Workers: 1})
	bDone := make(chan error, 1)
	go func() {
		_, err := b.Pass(ctx)
		bDone <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); ; {
		select {
		case err := <-bDone:
			if err != nil {
				t.Fatal(err)
			}
			// b deleted the other blob, rows and bytes, and its counts are
			// in the totals already.
			var rows int
			if err := c.db.QueryRow(ctx, `SELECT count(*) FROM blobs WHERE digest IN ($1, $2)`, x.String(), y.String()).Scan(&rows); err != nil {
				t.Fatal(err)
			}
			if rows != 1 {
				t.Errorf("%d of the two blobs' rows left while one review is stalled, want 1", rows)
			}
			st, err := gc.ReadStatus(ctx, c.db, 0)
			if err != nil {
				t.Fatal(err)
			}
			var blobs, bytes int64
			for _, tot := range st.Totals {
				blobs += tot.BlobsDeleted
				bytes += tot.BytesReclaimed
			}
			if blobs != 1 || bytes != 100 {
				t.Errorf("totals %+v: %d blobs deleted and %d bytes reclaimed, want 1 and 100", st.Totals, blobs, bytes)
			}
			// Folded (as each pass ends), the totals read the same. (b's
			// pass folded its own deltas already: fold the rest.)
			var folded int64
			if err := c.db.QueryRow(ctx, `SELECT gc_totals_fold()`).Scan(&folded); err != nil {
				t.Fatal(err)
			}
			again, err := gc.ReadStatus(ctx, c.db, 0)
			if err != nil {
				t.Fatal(err)
			}
			var left int
			if err := c.db.QueryRow(ctx, `SELECT count(*) FROM gc_totals_deltas`).Scan(&left); err != nil {
				t.Fatal(err)
			}
			if left != 0 || fmt.Sprint(again.Totals) != fmt.Sprint(st.Totals) {
				t.Errorf("after a fold (%d deltas) %d committed deltas left; totals %+v after, %+v before", folded, left, again.Totals, st.Totals)
			}
			return
		case <-time.After(5 * time.Millisecond):
		}
		if c.lockWaits(t, rowLock) > 0 {
			t.Fatal("the second collector waits for the stalled one's transaction")
		}
		if time.Now().After(deadline) {
			t.Fatal("the second collector neither finished nor waited on a lock in 10s")
		}
	}
}

// TestBlobReviewDecisions: what a blob review decides, and why, for a blob
// a manifest references, one nothing references, and one already gone.
func TestBlobReviewDecisions(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, "filesystem")
	kept := layer(10, 300)
	if _, err := c.pushImage(ctx, 0, "dec/app", "v1", kept); err != nil {
		t.Fatal(err)
	}
	loose, err := c.pushBlob(ctx, 0, "dec/app", layer(11, 200))
	if err != nil {
		t.Fatal(err)
	}
	gone := digest.FromBytes(layer(12, 100))
	if _, err := c.db.Exec(ctx, `SELECT gc_queue_blob($1)`, gone.String()); err != nil {
		t.Fatal(err)
	}
	ds, err := c.idcs[0].gc.DryRun(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	got := map[digest.Digest]string{}
	for _, d := range ds {
		if d.Kind == "blob" {
			got[digest.Digest(d.Digest)] = fmt.Sprintf("%v %s", d.Delete, d.Reason)
		}
	}
	want := map[digest.Digest]string{
		digest.FromBytes(kept): "false referenced by 1 manifest(s), in dec/app among others",
		loose:                  "true no manifest references it",
		gone:                   "", // already deleted: a dry run does not list it
	}
	for d, w := range want {
		if got[d] != w {
			t.Errorf("review of %s: %q, want %q", d, got[d], w)
		}
	}
	// The pass acts on them: the loose blob goes, the others' reviews end
	// (the one already gone included).
	c.pass(t)
	var reviews, rows int
	if err := c.db.QueryRow(ctx, `SELECT (SELECT count(*) FROM gc_blob_reviews), (SELECT count(*) FROM blobs WHERE digest = $1)`, loose.String()).Scan(&reviews, &rows); err != nil {
		t.Fatal(err)
	}
	if reviews != 0 || rows != 0 {
		t.Errorf("after a pass: %d blob reviews queued, loose blob's row %d; want 0 and 0", reviews, rows)
	}
}
