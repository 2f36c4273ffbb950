package metadata

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/tests/harness"
)

// store is a migrated database of the test's own with the queries over it.
type store struct {
	pool      *pgxpool.Pool
	blobs     *Blobs
	manifests *Manifests
}

// holdUntilAnotherWaits returns a Manifests hook that holds the first Put
// to reach its commit until PostgreSQL shows another transaction waiting
// for a lock it holds: proof that the concurrent Puts really contended.
// It fails the test if none ever waits.
func holdUntilAnotherWaits(t *testing.T, observer *pgxpool.Pool) func(string) {
	var once sync.Once
	return func(step string) {
		if step != StepBeforeCommit {
			return
		}
		once.Do(func() {
			deadline := time.Now().Add(30 * time.Second)
			for {
				var waiting int
				if err := observer.QueryRow(context.Background(),
					`SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
					 WHERE NOT l.granted AND a.datname = current_database()`).Scan(&waiting); err != nil {
					t.Errorf("pg_locks: %v", err)
					return
				}
				if waiting > 0 {
					return
				}
				if time.Now().After(deadline) {
					t.Error("no other Put ever waited for the first: the pushes never overlapped")
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

func newStore(t *testing.T) store {
	t.Helper()
	pool := testDB(t)
	if _, _, err := Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	return store{pool, NewBlobs(pool), NewManifests(pool)}
}

// newLinguisticStore is newStore on a database whose default collation is
// linguistic (ICU en-US: "a" < "B", punctuation ignored), not byte order
// as the test server's is: listing order must come from the schema.
func newLinguisticStore(t *testing.T) store {
	t.Helper()
	ctx := context.Background()
	base := harness.NewDatabase(t)
	cfg, err := pgxpool.ParseConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	name := cfg.ConnConfig.Database + "_icu"
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if admin, err := pgx.Connect(ctx, base); err == nil {
			admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			admin.Close(ctx)
		}
	})
	cfg.ConnConfig.Database = name
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var byteOrder bool
	if err := pool.QueryRow(ctx, `SELECT 'B' < 'a'`).Scan(&byteOrder); err != nil || byteOrder {
		t.Fatalf("the database's default collation is byte order (%v): the test would prove nothing", err)
	}
	if _, _, err := Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	return store{pool, NewBlobs(pool), NewManifests(pool)}
}

// wide returns s over a second pool with a connection for each of n
// clients, so that they really run at once (a default pool has 4 here).
func (s store) wide(t *testing.T, n int) store {
	t.Helper()
	cfg := s.pool.Config()
	cfg.MaxConns = int32(n + 1)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return store{pool, NewBlobs(pool), NewManifests(pool)}
}

// link records blobs as stored and links them into repo (created if new).
func (s store) link(t *testing.T, repo string, ds ...digest.Digest) {
	t.Helper()
	ctx := context.Background()
	for _, d := range ds {
		if _, err := s.pool.Exec(ctx, `INSERT INTO blobs (digest, size) VALUES ($1, 7) ON CONFLICT DO NOTHING`, d.String()); err != nil {
			t.Fatal(err)
		}
		if size, err := s.blobs.MountAny(ctx, repo, d); err != nil || size != 7 {
			t.Fatalf("Mount %s into %s: %d, %v", d, repo, size, err)
		}
	}
}

func (s store) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// image builds an image manifest over config and layers; its content is
// unique to seed.
func image(seed string, config digest.Digest, layers ...digest.Digest) NewManifest {
	content := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%q,"layers":%q,"seed":%q}`,
		config, layers, seed)
	return NewManifest{
		Manifest: Manifest{
			Digest:       digest.FromString(content),
			MediaType:    "application/vnd.oci.image.manifest.v1+json",
			ArtifactType: "application/vnd.oci.image.config.v1+json",
			Content:      []byte(content),
		},
		Blobs: append([]digest.Digest{config}, layers...),
	}
}

func index(seed string, children ...digest.Digest) NewManifest {
	content := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":%q,"seed":%q}`, children, seed)
	return NewManifest{
		Manifest: Manifest{
			Digest:    digest.FromString(content),
			MediaType: "application/vnd.oci.image.index.v1+json",
			Content:   []byte(content),
		},
		Children: children,
	}
}

func withTags(nm NewManifest, tags ...string) NewManifest {
	nm.Tags = tags
	return nm
}

func sorted(ds []digest.Digest) []digest.Digest {
	out := slices.Clone(ds)
	slices.Sort(out)
	return out
}

// sameManifest checks that got is what was put.
func sameManifest(t *testing.T, what string, got *Manifest, want NewManifest) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: no manifest", what)
	}
	if !reflect.DeepEqual(*got, want.Manifest) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, *got, want.Manifest)
	}
}

var (
	cfgA   = digest.FromString("config A")
	layerA = digest.FromString("layer A")
	layerB = digest.FromString("layer B")
)

func TestPutMissingBlobsStoresNothing(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)

	// A repository that does not exist yet: the failed push creates nothing.
	nm := withTags(image("one", cfgA, layerA, layerB), "latest")
	err := s.manifests.Put(ctx, "fresh/app", nm)
	var missing *MissingError
	if !errors.As(err, &missing) {
		t.Fatalf("Put with no blobs linked: %v; want *MissingError", err)
	}
	if got, want := sorted(missing.Blobs), sorted([]digest.Digest{cfgA, layerA, layerB}); !slices.Equal(got, want) || len(missing.Manifests) != 0 {
		t.Fatalf("MissingError: blobs %v manifests %v; want blobs %v", missing.Blobs, missing.Manifests, want)
	}
	if n := s.count(t, `SELECT count(*) FROM repositories WHERE name = 'fresh/app'`); n != 0 {
		t.Fatalf("a failed push left %d repository rows", n)
	}
	if _, _, err := s.manifests.Tags(ctx, "fresh/app", "", 10); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Tags after a failed push: %v; want ErrNotFound", err)
	}

	// A repository holding some of the blobs: exactly the others are missing.
	s.link(t, "team/app", cfgA)
	err = s.manifests.Put(ctx, "team/app", nm)
	if !errors.As(err, &missing) {
		t.Fatalf("Put with layers missing: %v; want *MissingError", err)
	}
	if got, want := sorted(missing.Blobs), sorted([]digest.Digest{layerA, layerB}); !slices.Equal(got, want) || len(missing.Manifests) != 0 {
		t.Fatalf("MissingError: blobs %v manifests %v; want blobs %v", missing.Blobs, missing.Manifests, want)
	}
	if err.Error() != "manifest refers to 2 unknown blobs and 0 unknown manifests" {
		t.Fatalf("Error() = %q", err.Error())
	}
	s.link(t, "team/app", layerA)
	err = s.manifests.Put(ctx, "team/app", nm)
	if !errors.As(err, &missing) || !slices.Equal(missing.Blobs, []digest.Digest{layerB}) {
		t.Fatalf("Put with one layer missing: %v; want MissingError{%s}", err, layerB)
	}
	// A blob linked in another repository does not count.
	s.link(t, "other/app", layerB)
	err = s.manifests.Put(ctx, "team/app", nm)
	if !errors.As(err, &missing) || !slices.Equal(missing.Blobs, []digest.Digest{layerB}) {
		t.Fatalf("Put with a layer linked elsewhere only: %v; want MissingError{%s}", err, layerB)
	}
	for _, table := range []string{"manifests", "manifest_blobs", "tags"} {
		if n := s.count(t, `SELECT count(*) FROM `+table); n != 0 {
			t.Fatalf("failed pushes left %d rows in %s", n, table)
		}
	}
	if _, err := s.manifests.ByTag(ctx, "team/app", "latest"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ByTag after failed pushes: %v", err)
	}
	if _, err := s.manifests.ByDigest(ctx, "team/app", nm.Digest); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ByDigest after failed pushes: %v", err)
	}
	if repos, _, err := s.manifests.Repositories(ctx, "", 10); err != nil || len(repos) != 0 {
		t.Fatalf("Repositories after failed pushes: %v, %v; want none (no repository holds a manifest)", repos, err)
	}
}

func TestPutGetIdempotentAndTagMove(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	s.link(t, "team/app", cfgA, layerA, layerB)

	m1 := withTags(image("one", cfgA, layerA), "latest", "v1")
	m1.Annotations = map[string]string{"org.opencontainers.image.title": "one"}
	m1.Subject = digest.FromString("some subject")
	if err := s.manifests.Put(ctx, "team/app", m1); err != nil {
		t.Fatal(err)
	}
	got, err := s.manifests.ByDigest(ctx, "team/app", m1.Digest)
	if err != nil {
		t.Fatal(err)
	}
	sameManifest(t, "ByDigest", got, m1)
	for _, tag := range []string{"latest", "v1"} {
		got, err := s.manifests.ByTag(ctx, "team/app", tag)
		if err != nil {
			t.Fatalf("ByTag %s: %v", tag, err)
		}
		sameManifest(t, "ByTag "+tag, got, m1)
	}
	if n := s.count(t, `SELECT count(*) FROM manifest_blobs`); n != 2 {
		t.Fatalf("%d manifest_blobs rows; want 2", n)
	}
	// Wrong repository, tag or digest.
	if _, err := s.manifests.ByDigest(ctx, "other/app", m1.Digest); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ByDigest in another repository: %v", err)
	}
	if _, err := s.manifests.ByTag(ctx, "team/app", "v2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ByTag of an unknown tag: %v", err)
	}

	// Idempotent: same rows, nothing duplicated, same content.
	if err := s.manifests.Put(ctx, "team/app", m1); err != nil {
		t.Fatalf("second Put: %v", err)
	}
	if n := s.count(t, `SELECT count(*) FROM manifests`); n != 1 {
		t.Fatalf("%d manifests after a repeated Put", n)
	}
	if n := s.count(t, `SELECT count(*) FROM manifest_blobs`); n != 2 {
		t.Fatalf("%d manifest_blobs rows after a repeated Put", n)
	}
	if n := s.count(t, `SELECT count(*) FROM tags`); n != 2 {
		t.Fatalf("%d tags after a repeated Put", n)
	}

	// The tag moves to a new manifest; the old one stays, with its other tag.
	m2 := withTags(image("two", cfgA, layerB), "latest")
	if err := s.manifests.Put(ctx, "team/app", m2); err != nil {
		t.Fatal(err)
	}
	got, err = s.manifests.ByTag(ctx, "team/app", "latest")
	if err != nil {
		t.Fatal(err)
	}
	sameManifest(t, "latest after the move", got, m2)
	if got, err := s.manifests.ByTag(ctx, "team/app", "v1"); err != nil || got.Digest != m1.Digest {
		t.Fatalf("v1 after moving latest: %v, %v", got, err)
	}
	if got, err := s.manifests.ByDigest(ctx, "team/app", m1.Digest); err != nil || got.Digest != m1.Digest {
		t.Fatalf("old manifest after moving latest: %v, %v", got, err)
	}
	if n := s.count(t, `SELECT count(*) FROM tags`); n != 2 {
		t.Fatalf("%d tags after moving one; want 2", n)
	}
	// The same manifest in another repository is a different row, with its own tags.
	s.link(t, "other/app", cfgA, layerA)
	if err := s.manifests.Put(ctx, "other/app", withTags(image("one", cfgA, layerA), "latest")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.manifests.ByTag(ctx, "team/app", "latest"); err != nil || got.Digest != m2.Digest {
		t.Fatalf("team/app latest after pushing other/app latest: %v, %v", got, err)
	}
}

func TestIndexChildrenAndDelete(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	s.link(t, "team/app", cfgA, layerA, layerB)
	c1 := image("child1", cfgA, layerA)
	c2 := image("child2", cfgA, layerB)
	if err := s.manifests.Put(ctx, "team/app", c1); err != nil {
		t.Fatal(err)
	}
	idx := withTags(index("idx", c1.Digest, c2.Digest), "multi")
	err := s.manifests.Put(ctx, "team/app", idx)
	var missing *MissingError
	if !errors.As(err, &missing) || !slices.Equal(missing.Manifests, []digest.Digest{c2.Digest}) || len(missing.Blobs) != 0 {
		t.Fatalf("index with a missing child: %v (%+v); want MissingError.Manifests = [%s]", err, missing, c2.Digest)
	}
	if _, err := s.manifests.ByTag(ctx, "team/app", "multi"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("tag of a refused index: %v", err)
	}
	// A child pushed to another repository does not count.
	s.link(t, "other/app", cfgA, layerB)
	if err := s.manifests.Put(ctx, "other/app", c2); err != nil {
		t.Fatal(err)
	}
	if err := s.manifests.Put(ctx, "team/app", idx); !errors.As(err, &missing) || !slices.Equal(missing.Manifests, []digest.Digest{c2.Digest}) {
		t.Fatalf("index whose child is in another repository: %v", err)
	}
	if err := s.manifests.Put(ctx, "team/app", c2); err != nil {
		t.Fatal(err)
	}
	if err := s.manifests.Put(ctx, "team/app", idx); err != nil {
		t.Fatalf("index with its children: %v", err)
	}
	got, err := s.manifests.ByTag(ctx, "team/app", "multi")
	if err != nil {
		t.Fatal(err)
	}
	sameManifest(t, "index", got, idx)
	if n := s.count(t, `SELECT count(*) FROM manifest_references`); n != 2 {
		t.Fatalf("%d manifest_references; want 2", n)
	}

	// Children cannot go while the index lists them.
	for _, c := range []NewManifest{c1, c2} {
		if err := s.manifests.Delete(ctx, "team/app", c.Digest); !errors.Is(err, ErrReferenced) {
			t.Fatalf("Delete of a listed child: %v; want ErrReferenced", err)
		}
		if _, err := s.manifests.ByDigest(ctx, "team/app", c.Digest); err != nil {
			t.Fatalf("child after a refused delete: %v", err)
		}
	}
	// The same child in another repository is not listed there.
	if err := s.manifests.Delete(ctx, "other/app", c2.Digest); err != nil {
		t.Fatalf("Delete of other/app's copy of the child: %v", err)
	}
	if err := s.manifests.Delete(ctx, "team/app", idx.Digest); err != nil {
		t.Fatalf("Delete of the index: %v", err)
	}
	if _, err := s.manifests.ByTag(ctx, "team/app", "multi"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the index's tag after Delete: %v", err)
	}
	if n := s.count(t, `SELECT count(*) FROM manifest_references`); n != 0 {
		t.Fatalf("%d manifest_references after deleting the index", n)
	}
	for _, c := range []NewManifest{c1, c2} {
		if err := s.manifests.Delete(ctx, "team/app", c.Digest); err != nil {
			t.Fatalf("Delete of a child after its index: %v", err)
		}
		if _, err := s.manifests.ByDigest(ctx, "team/app", c.Digest); !errors.Is(err, ErrNotFound) {
			t.Fatalf("child after Delete: %v", err)
		}
	}
	if err := s.manifests.Delete(ctx, "team/app", c1.Digest); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete: %v; want ErrNotFound", err)
	}
	if err := s.manifests.Delete(ctx, "nowhere/app", c1.Digest); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete in an unknown repository: %v; want ErrNotFound", err)
	}
	if n := s.count(t, `SELECT count(*) FROM manifest_blobs`); n != 0 {
		t.Fatalf("%d manifest_blobs rows after every manifest was deleted", n)
	}
}

func TestDeleteTagsAndUnlink(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	s.link(t, "team/app", cfgA, layerA)
	m := withTags(image("one", cfgA, layerA), "a", "b", "c")
	if err := s.manifests.Put(ctx, "team/app", m); err != nil {
		t.Fatal(err)
	}

	// A blob a manifest uses cannot be unlinked.
	if err := s.blobs.Unlink(ctx, "team/app", layerA); !errors.Is(err, ErrReferenced) {
		t.Fatalf("Unlink of a layer in use: %v; want ErrReferenced", err)
	}
	if info, err := s.blobs.Lookup(ctx, "team/app", layerA, ""); err != nil || info.Size != 7 {
		t.Fatalf("layer after a refused Unlink: %d, %v", info.Size, err)
	}

	// DeleteTag leaves the manifest and the other tags.
	if err := s.manifests.DeleteTag(ctx, "team/app", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.manifests.ByTag(ctx, "team/app", "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted tag: %v", err)
	}
	if got, err := s.manifests.ByDigest(ctx, "team/app", m.Digest); err != nil || got.Digest != m.Digest {
		t.Fatalf("manifest after DeleteTag: %v, %v", got, err)
	}
	if tags, _, err := s.manifests.Tags(ctx, "team/app", "", 10); err != nil || !slices.Equal(tags, []string{"b", "c"}) {
		t.Fatalf("tags after DeleteTag: %v, %v", tags, err)
	}
	if err := s.manifests.DeleteTag(ctx, "team/app", "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteTag twice: %v; want ErrNotFound", err)
	}
	if err := s.manifests.DeleteTag(ctx, "nowhere/app", "b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteTag in an unknown repository: %v; want ErrNotFound", err)
	}

	// Deleting the manifest deletes its tags, and frees its blobs.
	if err := s.manifests.Delete(ctx, "team/app", m.Digest); err != nil {
		t.Fatal(err)
	}
	for _, tag := range []string{"b", "c"} {
		if _, err := s.manifests.ByTag(ctx, "team/app", tag); !errors.Is(err, ErrNotFound) {
			t.Fatalf("tag %s after deleting its manifest: %v", tag, err)
		}
	}
	if tags, more, err := s.manifests.Tags(ctx, "team/app", "", 10); err != nil || len(tags) != 0 || more {
		t.Fatalf("tags after deleting the manifest: %v %v, %v", tags, more, err)
	}
	if err := s.blobs.Unlink(ctx, "team/app", layerA); err != nil {
		t.Fatalf("Unlink once no manifest uses the layer: %v", err)
	}
	if err := s.blobs.Unlink(ctx, "team/app", layerA); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Unlink twice: %v; want ErrNotFound", err)
	}
}

func TestTagsPagination(t *testing.T) {
	ctx := context.Background()
	s := newLinguisticStore(t)
	s.link(t, "team/app", cfgA)
	if err := s.manifests.Put(ctx, "team/app", withTags(image("one", cfgA), "B", "a", "a-1", "Z")); err != nil {
		t.Fatal(err)
	}
	if err := s.manifests.Put(ctx, "team/app", withTags(image("two", cfgA), "10", "9", "a1", "_u")); err != nil {
		t.Fatal(err)
	}
	// Byte order: digits, then upper case, '_', lower case; "a" before
	// "a-1" before "a1" ('-' < '1').
	all := []string{"10", "9", "B", "Z", "_u", "a", "a-1", "a1"}
	tags, more, err := s.manifests.Tags(ctx, "team/app", "", 100)
	if err != nil || more || !slices.Equal(tags, all) {
		t.Fatalf("all tags: %q more=%v, %v\nwant %q", tags, more, err, all)
	}
	for _, c := range []struct {
		last string
		n    int
		want []string
		more bool
	}{
		{"", 3, []string{"10", "9", "B"}, true},
		{"B", 3, []string{"Z", "_u", "a"}, true},
		{"a", 3, []string{"a-1", "a1"}, false},
		{"", 8, all, false},    // exactly all: no more
		{"", 7, all[:7], true}, // one short
		{"", 1, []string{"10"}, true},
		{"10", 1, []string{"9"}, true},
		{"C", 2, []string{"Z", "_u"}, true}, // last need not be a tag
		{"a1", 5, nil, false},
		{"zzz", 5, nil, false},
	} {
		tags, more, err := s.manifests.Tags(ctx, "team/app", c.last, c.n)
		if err != nil || more != c.more || !slices.Equal(tags, c.want) {
			t.Errorf("Tags(last=%q, n=%d) = %q more=%v, %v; want %q more=%v", c.last, c.n, tags, more, err, c.want, c.more)
		}
	}
	// Walking the pages finds every tag once, in order.
	var walked []string
	last, pages := "", 0
	for {
		page, more, err := s.manifests.Tags(ctx, "team/app", last, 3)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		walked = append(walked, page...)
		if !more {
			break
		}
		last = page[len(page)-1]
	}
	if !slices.Equal(walked, all) || pages != 3 {
		t.Fatalf("walked %q in %d pages", walked, pages)
	}

	// Unknown repository; a repository with no tags.
	if _, _, err := s.manifests.Tags(ctx, "nowhere/app", "", 10); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Tags of an unknown repository: %v; want ErrNotFound", err)
	}
	s.link(t, "blobs/only", cfgA)
	if tags, more, err := s.manifests.Tags(ctx, "blobs/only", "", 10); err != nil || len(tags) != 0 || more {
		t.Fatalf("Tags of a repository without tags: %q %v, %v", tags, more, err)
	}
	s.link(t, "untagged/app", cfgA)
	if err := s.manifests.Put(ctx, "untagged/app", image("one", cfgA)); err != nil {
		t.Fatal(err)
	}
	if tags, more, err := s.manifests.Tags(ctx, "untagged/app", "", 10); err != nil || len(tags) != 0 || more {
		t.Fatalf("Tags of a repository with an untagged manifest: %q %v, %v", tags, more, err)
	}
}

func TestRepositories(t *testing.T) {
	ctx := context.Background()
	s := newLinguisticStore(t)
	// Byte order: '-' < '.' < '/' < '_' (a linguistic order puts '_' first).
	withManifest := []string{"a-b", "a.b", "a/app", "a_b", "c"}
	for _, repo := range []string{"c", "a_b", "a/app", "a.b", "a-b", "gone/app"} {
		s.link(t, repo, cfgA)
		if err := s.manifests.Put(ctx, repo, image("one", cfgA)); err != nil {
			t.Fatal(err)
		}
	}
	s.link(t, "blobs/only", cfgA) // a repository without manifests
	if err := s.manifests.Delete(ctx, "gone/app", image("one", cfgA).Digest); err != nil {
		t.Fatal(err)
	}
	if n := s.count(t, `SELECT count(*) FROM repositories`); n != 7 {
		t.Fatalf("%d repository rows; want 7", n)
	}
	for _, c := range []struct {
		last string
		n    int
		want []string
		more bool
	}{
		{"", 100, withManifest, false},
		{"", 5, withManifest, false},
		{"", 4, withManifest[:4], true},
		{"", 2, []string{"a-b", "a.b"}, true},
		{"a.b", 2, []string{"a/app", "a_b"}, true},
		{"a_b", 2, []string{"c"}, false},
		{"a/app", 2, []string{"a_b", "c"}, false},
		{"blobs/only", 2, []string{"c"}, false},
		{"c", 2, nil, false},
	} {
		repos, more, err := s.manifests.Repositories(ctx, c.last, c.n)
		if err != nil || more != c.more || !slices.Equal(repos, c.want) {
			t.Errorf("Repositories(last=%q, n=%d) = %q more=%v, %v; want %q more=%v", c.last, c.n, repos, more, err, c.want, c.more)
		}
	}
}

func TestReferrers(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	s.link(t, "team/app", cfgA, layerA)
	subj := image("subject", cfgA, layerA)
	if err := s.manifests.Put(ctx, "team/app", subj); err != nil {
		t.Fatal(err)
	}
	const sbom, sig = "application/vnd.example.sbom.v1", "application/vnd.example.sig.v1"
	var refs []NewManifest
	for i, at := range []string{sbom, sig, sbom, ""} {
		r := image(fmt.Sprintf("referrer %d", i), cfgA)
		r.Subject = subj.Digest
		r.ArtifactType = at
		r.Annotations = map[string]string{"n": fmt.Sprint(i)}
		refs = append(refs, r)
	}
	// Push in descending digest order, so that "oldest first" is not
	// digest order by accident.
	slices.SortFunc(refs, func(a, b NewManifest) int { return cmp.Compare(b.Digest, a.Digest) })
	for _, r := range refs {
		if err := s.manifests.Put(ctx, "team/app", r); err != nil {
			t.Fatal(err)
		}
	}
	// Pushing one again keeps its place.
	if err := s.manifests.Put(ctx, "team/app", refs[0]); err != nil {
		t.Fatal(err)
	}
	// A referrer of the same subject in another repository is not listed.
	s.link(t, "other/app", cfgA)
	other := image("elsewhere", cfgA)
	other.Subject = subj.Digest
	if err := s.manifests.Put(ctx, "other/app", other); err != nil {
		t.Fatal(err)
	}

	want := func(ms ...NewManifest) []Referrer {
		var out []Referrer
		for _, m := range ms {
			out = append(out, Referrer{Digest: m.Digest, MediaType: m.MediaType, ArtifactType: m.ArtifactType,
				Size: int64(len(m.Content)), Annotations: m.Annotations})
		}
		return out
	}
	filter := func(at string) []NewManifest {
		var out []NewManifest
		for _, r := range refs {
			if r.ArtifactType == at {
				out = append(out, r)
			}
		}
		return out
	}
	for _, c := range []struct {
		artifactType string
		want         []Referrer
	}{
		{"", want(refs...)},
		{sbom, want(filter(sbom)...)},
		{sig, want(filter(sig)...)},
		{"application/vnd.example.none", nil},
	} {
		got, more, err := s.manifests.Referrers(ctx, "team/app", subj.Digest, c.artifactType, "", 100, 1<<20)
		if err != nil || more || len(got) != len(c.want) || (len(got) > 0 && !reflect.DeepEqual(got, c.want)) {
			t.Errorf("Referrers(artifactType=%q):\n got %+v, %v, more %v\nwant %+v", c.artifactType, got, err, more, c.want)
		}
		// Page by page, one at a time, after the last of the page before.
		var paged []Referrer
		var last digest.Digest
		for i := 0; ; i++ {
			page, more, err := s.manifests.Referrers(ctx, "team/app", subj.Digest, c.artifactType, last, 1, 1<<20)
			if err != nil || len(page) > 1 || (more && len(page) == 0) || i > len(c.want) {
				t.Fatalf("Referrers(artifactType=%q) page %d after %q: %+v, more %v, %v", c.artifactType, i, last, page, more, err)
			}
			paged = append(paged, page...)
			if !more {
				break
			}
			last = page[0].Digest
		}
		if len(paged) != len(c.want) || (len(paged) > 0 && !reflect.DeepEqual(paged, c.want)) {
			t.Errorf("Referrers(artifactType=%q) by pages of 1:\n got %+v\nwant %+v", c.artifactType, paged, c.want)
		}
	}
	if len(filter(sbom)) != 2 || len(refs) != 4 {
		t.Fatal("test setup")
	}
	if got, _, err := s.manifests.Referrers(ctx, "team/app", digest.FromString("unknown"), "", "", 100, 1<<20); err != nil || len(got) != 0 {
		t.Fatalf("Referrers of an unknown digest: %v, %v", got, err)
	}
	if got, _, err := s.manifests.Referrers(ctx, "nowhere/app", subj.Digest, "", "", 100, 1<<20); err != nil || len(got) != 0 {
		t.Fatalf("Referrers in an unknown repository: %v, %v", got, err)
	}
	// A page ends where its descriptors pass maxBytes, after one at least.
	first, more, err := s.manifests.Referrers(ctx, "team/app", subj.Digest, "", "", 100, 1)
	if err != nil || !more || len(first) != 1 || !reflect.DeepEqual(first, want(refs[0])) {
		t.Fatalf("Referrers within 1 byte: %+v, more %v, %v", first, more, err)
	}
	if got, _, err := s.manifests.Referrers(ctx, "team/app", subj.Digest, "", refs[3].Digest, 100, 1<<20); err != nil || len(got) != 0 {
		t.Fatalf("Referrers after the last one: %v, %v", got, err)
	}
	if _, _, err := s.manifests.Referrers(ctx, "team/app", subj.Digest, "", digest.FromString("never pushed"), 100, 1<<20); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Referrers after an unknown manifest: %v; want ErrNotFound", err)
	}
	// A deleted referrer is no longer listed.
	if err := s.manifests.Delete(ctx, "team/app", refs[1].Digest); err != nil {
		t.Fatal(err)
	}
	got, _, err := s.manifests.Referrers(ctx, "team/app", subj.Digest, "", "", 100, 1<<20)
	if wantRefs := want(refs[0], refs[2], refs[3]); err != nil || !reflect.DeepEqual(got, wantRefs) {
		t.Fatalf("Referrers after a delete:\n got %+v, %v\nwant %+v", got, err, wantRefs)
	}
}

// TestConcurrentSamePush: clients pushing the same manifest and tag at
// once all succeed, and leave one manifest and one tag.
func TestConcurrentSamePush(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	s.link(t, "team/app", cfgA, layerA, layerB)
	m := withTags(image("same", cfgA, layerA, layerB), "latest")
	const n = 16
	w := s.wide(t, n)
	w.manifests.Hook(holdUntilAnotherWaits(t, s.pool))
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- w.manifests.Put(ctx, "team/app", m)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent Put: %v", err)
		}
	}
	if got := s.count(t, `SELECT count(*) FROM manifests`); got != 1 {
		t.Fatalf("%d manifest rows; want 1", got)
	}
	if got := s.count(t, `SELECT count(*) FROM tags`); got != 1 {
		t.Fatalf("%d tags; want 1", got)
	}
	if got := s.count(t, `SELECT count(*) FROM manifest_blobs`); got != 3 {
		t.Fatalf("%d manifest_blobs rows; want 3", got)
	}
	if got := s.count(t, `SELECT count(*) FROM repositories`); got != 1 {
		t.Fatalf("%d repositories; want 1", got)
	}
	got, err := s.manifests.ByTag(ctx, "team/app", "latest")
	if err != nil {
		t.Fatal(err)
	}
	sameManifest(t, "ByTag", got, m)
}

// TestConcurrentTagMoves: clients pushing different manifests to one tag
// all succeed; readers meanwhile only ever see one of them, whole.
func TestConcurrentTagMoves(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	s.link(t, "team/app", cfgA, layerA)
	const n = 16
	w := s.wide(t, n+1) // and a reader
	w.manifests.Hook(holdUntilAnotherWaits(t, s.pool))
	pushed := map[digest.Digest]NewManifest{}
	var ms []NewManifest
	for i := 0; i < n; i++ {
		m := withTags(image(fmt.Sprint("variant ", i), cfgA, layerA), "latest")
		ms = append(ms, m)
		pushed[m.Digest] = m
	}

	// checkRead: a read of the tag is nothing (before the first push) or
	// one of the pushed manifests, whole.
	checkRead := func(got *Manifest, err error) error {
		if errors.Is(err, ErrNotFound) {
			return err
		}
		if err != nil {
			return fmt.Errorf("ByTag: %w", err)
		}
		want, ok := pushed[got.Digest]
		if !ok {
			return fmt.Errorf("ByTag returned %s, which nobody pushed", got.Digest)
		}
		if !reflect.DeepEqual(*got, want.Manifest) || digest.FromBytes(got.Content) != got.Digest {
			return fmt.Errorf("ByTag returned an incomplete manifest: %+v", *got)
		}
		return nil
	}
	done := make(chan struct{})
	readErr := make(chan error, 1)
	reads := 0
	go func() {
		seen := false
		for {
			select {
			case <-done:
				readErr <- nil
				return
			default:
			}
			err := checkRead(w.manifests.ByTag(ctx, "team/app", "latest"))
			reads++
			switch {
			case errors.Is(err, ErrNotFound) && seen:
				readErr <- errors.New("the tag vanished while it was being moved")
				return
			case errors.Is(err, ErrNotFound):
			case err != nil:
				readErr <- err
				return
			default:
				seen = true
			}
		}
	}()

	errs := make(chan error, n)
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- w.manifests.Put(ctx, "team/app", m)
		}()
	}
	wg.Wait()
	close(done)
	if err := <-readErr; err != nil {
		t.Errorf("reader (after %d reads): %v", reads, err)
	}
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent Put: %v", err)
		}
	}
	if err := checkRead(s.manifests.ByTag(ctx, "team/app", "latest")); err != nil {
		t.Fatalf("the tag after every push: %v", err)
	}
	if got := s.count(t, `SELECT count(*) FROM manifests`); got != n {
		t.Fatalf("%d manifest rows; want %d", got, n)
	}
	if got := s.count(t, `SELECT count(*) FROM tags`); got != 1 {
		t.Fatalf("%d tags; want 1", got)
	}
	if got := s.count(t, `SELECT count(*) FROM manifest_blobs`); got != 2*n {
		t.Fatalf("%d manifest_blobs rows; want %d", got, 2*n)
	}
}

// TestConcurrentDeleteAndTagging: a manifest deleted while others tag it
// never leaves a tag pointing at a missing (or incomplete) manifest. Each
// push either succeeds or says the manifest went missing.
func TestConcurrentDeleteAndTagging(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	s.link(t, "team/app", cfgA, layerA, layerB)
	m := image("contested", cfgA, layerA, layerB)
	if err := s.manifests.Put(ctx, "team/app", m); err != nil {
		t.Fatal(err)
	}
	const pushers, rounds = 8, 50
	w := s.wide(t, pushers+1) // and the deleter
	done := make(chan struct{})
	var deleted, finished atomic.Int64
	deleteErr := make(chan error, 1)
	go func() { // deletes until three quarters of the pushes are done
		for {
			select {
			case <-done:
				deleteErr <- nil
				return
			default:
			}
			if finished.Load() >= pushers*rounds*3/4 {
				deleteErr <- nil
				return
			}
			switch err := w.manifests.Delete(ctx, "team/app", m.Digest); {
			case err == nil:
				deleted.Add(1)
			case errors.Is(err, ErrNotFound):
			default:
				deleteErr <- fmt.Errorf("Delete: %w", err)
				return
			}
		}
	}()
	errs := make(chan error, pushers*rounds)
	var wg sync.WaitGroup
	var mu sync.Mutex
	succeeded, missing := 0, 0
	// Tags of pushes that began after every delete had landed: nothing
	// removed them afterwards, so each must be there at the end.
	type push struct {
		tag            string
		deletesAtStart int64
	}
	var pushed []push
	for p := 0; p < pushers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				// Its own tag, and one tag every pusher moves.
				tag := fmt.Sprintf("p%d-r%d", p, r)
				before := deleted.Load()
				err := w.manifests.Put(ctx, "team/app", withTags(m, tag, "shared"))
				finished.Add(1)
				var me *MissingError
				switch {
				case err == nil:
					mu.Lock()
					succeeded++
					pushed = append(pushed, push{tag, before})
					mu.Unlock()
				case errors.As(err, &me) && slices.Equal(me.Manifests, []digest.Digest{m.Digest}) && len(me.Blobs) == 0:
					mu.Lock()
					missing++
					mu.Unlock()
				default:
					errs <- fmt.Errorf("Put: %T %w", err, err)
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	if err := <-deleteErr; err != nil {
		t.Error(err)
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d pushes succeeded, %d found the manifest deleted; %d deletes", succeeded, missing, deleted.Load())
	if succeeded+missing != pushers*rounds {
		t.Fatalf("%d outcomes for %d pushes", succeeded+missing, pushers*rounds)
	}
	// The race happened: a Delete succeeds only when the manifest exists,
	// so two of them mean a push re-created it in between.
	if deleted.Load() < 2 {
		t.Fatalf("%d deletes landed during %d pushes: the race never happened", deleted.Load(), pushers*rounds)
	}
	final, checked := deleted.Load(), 0
	for _, p := range pushed {
		if p.deletesAtStart != final {
			continue
		}
		checked++
		if n := s.count(t, `SELECT count(*) FROM tags t JOIN manifests m ON m.id = t.manifest_id WHERE t.name = $1 AND m.digest = $2`,
			p.tag, m.Digest.String()); n != 1 {
			t.Fatalf("tag %s of a push acknowledged after the last delete is gone", p.tag)
		}
	}
	if checked == 0 {
		t.Fatal("no push began after the last delete: the deleter never stopped")
	}
	if n := s.count(t, `SELECT count(*) FROM tags t JOIN manifests m ON m.id = t.manifest_id WHERE m.digest <> $1`, m.Digest.String()); n != 0 {
		t.Fatalf("%d tags point at some other manifest", n)
	}
	// Every manifest left is whole: all its blobs recorded.
	if n := s.count(t, `SELECT count(*) FROM manifests`); n > 1 {
		t.Fatalf("%d manifest rows for one digest", n)
	}
	if n := s.count(t, `
		SELECT count(*) FROM manifests m
		WHERE (SELECT count(*) FROM manifest_blobs mb WHERE mb.manifest_id = m.id) <> 3`); n != 0 {
		t.Fatalf("%d manifests without all their blobs recorded", n)
	}
	// Whatever happened, a push afterwards works and its tag resolves.
	if err := s.manifests.Put(ctx, "team/app", withTags(m, "final")); err != nil {
		t.Fatalf("Put after the race: %v", err)
	}
	got, err := s.manifests.ByTag(ctx, "team/app", "final")
	if err != nil {
		t.Fatal(err)
	}
	sameManifest(t, "final", got, m)
}

// TestConcurrentIndexAndChildDelete: indexes pushed while their child is
// deleted and pushed again either fail with the child missing or are
// stored with the child recorded (so it cannot be deleted from under them).
func TestConcurrentIndexAndChildDelete(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	s.link(t, "team/app", cfgA, layerA)
	child := image("child", cfgA, layerA)
	if err := s.manifests.Put(ctx, "team/app", child); err != nil {
		t.Fatal(err)
	}
	const pushers, rounds = 8, 40
	w := s.wide(t, pushers+1)
	done := make(chan struct{})
	churnErr := make(chan error, 1)
	go func() { // delete the child and push it again, until the pushers finish
		for {
			select {
			case <-done:
				churnErr <- nil
				return
			default:
			}
			if err := w.manifests.Delete(ctx, "team/app", child.Digest); err != nil &&
				!errors.Is(err, ErrReferenced) && !errors.Is(err, ErrNotFound) {
				churnErr <- fmt.Errorf("Delete: %w", err)
				return
			}
			if err := w.manifests.Put(ctx, "team/app", child); err != nil {
				churnErr <- fmt.Errorf("Put of the child: %w", err)
				return
			}
		}
	}()
	// Each pusher makes at least rounds pushes, and goes on (up to
	// maxRounds) until both outcomes were seen: an index stored, and one
	// refused for its child deleted meanwhile. On a loaded machine the
	// deleter can lose every race for a while.
	const maxRounds = 25 * rounds
	errs := make(chan error, 2*pushers*maxRounds)
	var stored, missed, pushes atomic.Int64
	var wg sync.WaitGroup
	for p := 0; p < pushers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < maxRounds && (r < rounds || stored.Load() == 0 || missed.Load() == 0); r++ {
				pushes.Add(1)
				idx := index(fmt.Sprintf("index %d/%d", p, r), child.Digest)
				err := w.manifests.Put(ctx, "team/app", idx)
				var me *MissingError
				if errors.As(err, &me) && slices.Equal(me.Manifests, []digest.Digest{child.Digest}) {
					missed.Add(1)
					continue
				} else if err != nil {
					errs <- fmt.Errorf("Put of an index: %T %w", err, err)
					continue
				}
				// Stored: its child must be recorded. Then delete it, so
				// that the child can go again.
				stored.Add(1)
				var refs int
				if err := w.pool.QueryRow(ctx, `
					SELECT count(*) FROM manifest_references r JOIN manifests m ON m.id = r.parent_id
					WHERE m.digest = $1`, idx.Digest.String()).Scan(&refs); err != nil || refs != 1 {
					errs <- fmt.Errorf("index %s stored with %d child references (%v)", idx.Digest, refs, err)
				}
				if err := w.manifests.Delete(ctx, "team/app", idx.Digest); err != nil {
					errs <- fmt.Errorf("Delete of an index: %w", err)
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	if err := <-churnErr; err != nil {
		t.Error(err)
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d of %d index pushes stored, %d refused for the missing child", stored.Load(), pushes.Load(), missed.Load())
	if stored.Load() == 0 || missed.Load() == 0 {
		t.Fatalf("%d of %d index pushes stored, %d refused: the child's deletion never raced them", stored.Load(), pushes.Load(), missed.Load())
	}
	if n := s.count(t, `SELECT count(*) FROM manifests WHERE media_type = 'application/vnd.oci.image.index.v1+json'`); n != 0 {
		t.Fatalf("%d indexes left after each pusher deleted its own", n)
	}
	// Afterwards, an index holds its child.
	if err := s.manifests.Put(ctx, "team/app", index("last", child.Digest)); err != nil {
		t.Fatal(err)
	}
	if err := s.manifests.Delete(ctx, "team/app", child.Digest); !errors.Is(err, ErrReferenced) {
		t.Fatalf("Delete of an index's child: %v; want ErrReferenced", err)
	}
}

// A sparse index (a mirror's platform filter) may list children the
// repository lacks; those it has are referenced, so they cannot be deleted
// from under it, and the index keeps its digest.
func TestSparseIndex(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	s.link(t, "mirror/app", cfgA, layerA)
	present := image("amd64", cfgA, layerA)
	absent := image("s390x", cfgA, layerB)
	if err := s.manifests.Put(ctx, "mirror/app", present); err != nil {
		t.Fatal(err)
	}
	idx := withTags(index("sparse", present.Digest, absent.Digest), "1.0")
	idx.Sparse = true
	if err := s.manifests.Put(ctx, "mirror/app", idx); err != nil {
		t.Fatalf("sparse index: %v", err)
	}
	got, err := s.manifests.ByTag(ctx, "mirror/app", "1.0")
	if err != nil {
		t.Fatal(err)
	}
	sameManifest(t, "sparse index", got, idx)
	if n := s.count(t, `SELECT count(*) FROM manifest_references`); n != 1 {
		t.Fatalf("%d manifest_references; want 1 (the child present)", n)
	}
	if err := s.manifests.Delete(ctx, "mirror/app", present.Digest); !errors.Is(err, ErrReferenced) {
		t.Fatalf("Delete of a child the sparse index lists: %v; want ErrReferenced", err)
	}
	if _, err := s.manifests.ByDigest(ctx, "mirror/app", absent.Digest); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the absent child: %v", err)
	}
	for _, c := range []struct {
		repo string
		d    digest.Digest
		want bool
	}{{"mirror/app", absent.Digest, true}, {"mirror/app", present.Digest, false}, {"other/app", absent.Digest, false}} {
		if got, err := s.manifests.Pending(ctx, c.repo, c.d); err != nil || got != c.want {
			t.Errorf("Pending(%s, %s): %v %v, want %v", c.repo, c.d, got, err, c.want)
		}
	}
	// The absent child arriving later is referenced from then on.
	s.link(t, "mirror/app", layerB)
	if err := s.manifests.Put(ctx, "mirror/app", absent); err != nil {
		t.Fatal(err)
	}
	if n := s.count(t, `SELECT count(*) FROM manifest_references`); n != 2 {
		t.Fatalf("%d manifest_references after the child arrived; want 2", n)
	}
	if n := s.count(t, `SELECT count(*) FROM manifest_pending_references`); n != 0 {
		t.Fatalf("%d pending references left", n)
	}
	if got, err := s.manifests.Pending(ctx, "mirror/app", absent.Digest); err != nil || got {
		t.Errorf("Pending once the child arrived: %v %v", got, err)
	}
	if err := s.manifests.Delete(ctx, "mirror/app", absent.Digest); !errors.Is(err, ErrReferenced) {
		t.Fatalf("Delete of the late child: %v; want ErrReferenced", err)
	}
	// Without Sparse the same index is refused (the default for pushes).
	idx.Sparse = false
	if err := s.manifests.Put(ctx, "other/app", idx); !errors.As(err, new(*MissingError)) {
		t.Fatalf("non-sparse index with missing children: %v", err)
	}
}
