package retention_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
	"github.com/gaia-registry/gaia/registry/retention"
)

func put(t *testing.T, m *metadata.Manifests, repo, tag string, n int) error {
	t.Helper()
	content := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[],"annotations":{"n":"%d"}}`, n)
	return m.Put(context.Background(), repo, metadata.NewManifest{
		Manifest: metadata.Manifest{Digest: digest.FromBytes(content), MediaType: "application/vnd.oci.image.manifest.v1+json", Content: content},
		Tags:     []string{tag},
	})
}

func tags(t *testing.T, m *metadata.Manifests, repo string) []string {
	t.Helper()
	ts, _, err := m.Tags(context.Background(), repo, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// TestKeepLatestProtected: 10 tags, a policy keeping the latest 3 and
// protecting release-*: the dry run deletes nothing and lists the 5 that
// would go; the run leaves exactly the 3 newest others and the 2
// releases. A repository the pattern does not match is untouched.
func TestKeepLatestProtected(t *testing.T) {
	ctx := context.Background()
	db := metadatatest.Pool(t)
	m := metadata.NewManifests(db)
	order := []string{"v1", "release-1", "v2", "v3", "v4", "release-2", "v5", "v6", "v7", "v8"}
	for i, tag := range order {
		if err := put(t, m, "team/app", tag, i); err != nil {
			t.Fatal(err)
		}
		if err := put(t, m, "other/app", tag, i); err != nil {
			t.Fatal(err)
		}
	}
	s := &retention.Store{DB: db, Holder: "test"}
	if err := s.Put(ctx, "team", retention.Spec{Repositories: "team/*", KeepLatest: 3, Protect: "release-*"}); err != nil {
		t.Fatal(err)
	}
	dry, err := s.Run(ctx, "team", true)
	if err != nil {
		t.Fatal(err)
	}
	var wouldGo []string
	for _, d := range dry.Decisions {
		if d.Delete {
			wouldGo = append(wouldGo, d.Tag)
		}
	}
	slices.Sort(wouldGo)
	if strings.Join(wouldGo, " ") != "v1 v2 v3 v4 v5" || len(tags(t, m, "team/app")) != 10 {
		t.Fatalf("dry run would delete %v (and left %d tags); want v1..v5 and all 10", wouldGo, len(tags(t, m, "team/app")))
	}
	res, err := s.Run(ctx, "team", false)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tags(t, m, "team/app"), " "); got != "release-1 release-2 v6 v7 v8" || res.Deleted != 5 {
		t.Fatalf("tags left: %s (%d deleted); want release-1 release-2 v6 v7 v8", got, res.Deleted)
	}
	if n := len(tags(t, m, "other/app")); n != 10 {
		t.Fatalf("other/app has %d tags; the policy does not match it", n)
	}
	// The deleted tags' manifests are queued for garbage collection.
	var queued int
	db.QueryRow(ctx, `SELECT count(*) FROM gc_manifest_reviews`).Scan(&queued)
	if queued < 5 {
		t.Fatalf("%d manifest reviews queued", queued)
	}
}

// TestImmutable: a tag an immutable policy covers cannot move to another
// digest (DENIED, naming the policy), can be pushed again to the same
// digest, and new tags still can be pushed.
func TestImmutable(t *testing.T) {
	ctx := context.Background()
	db := metadatatest.Pool(t)
	m := metadata.NewManifests(db)
	s := &retention.Store{DB: db, Holder: "test"}
	if err := s.Put(ctx, "frozen", retention.Spec{Repositories: "/prod/.*/", Immutable: `^v\d+`}); err != nil {
		t.Fatal(err)
	}
	if err := put(t, m, "prod/api", "v1", 1); err != nil {
		t.Fatal(err)
	}
	err := put(t, m, "prod/api", "v1", 2)
	var e errcode.Error
	if !errors.As(err, &e) || e.Code != errcode.ErrorCodeDenied || !strings.Contains(e.Message, `"frozen"`) {
		t.Fatalf("moving an immutable tag: %v; want DENIED naming the policy", err)
	}
	for _, step := range []struct {
		repo, tag string
		n         int
	}{{"prod/api", "v1", 1}, {"prod/api", "latest", 2}, {"prod/api", "latest", 3}, {"dev/api", "v1", 2}, {"dev/api", "v1", 3}} {
		if err := put(t, m, step.repo, step.tag, step.n); err != nil {
			t.Fatalf("%s:%s → %d: %v", step.repo, step.tag, step.n, err)
		}
	}
	if err := s.Put(ctx, "frozen", retention.Spec{Repositories: "prod/*", Immutable: "(?<=x)"}); err == nil {
		t.Fatal("a regex neither dialect takes was stored")
	}
}
