package metadata

import (
	"context"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
)

// Mount links only from the repositories it is given; MountAny from
// anywhere.
func TestMountFromGivenRepositories(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	d := digest.FromString("a private layer")
	s.link(t, "private/team", d)
	for _, from := range [][]string{nil, {}, {"public/app"}, {"public/app", "other/x"}} {
		if _, err := s.blobs.Mount(ctx, "attacker/app", from, d); !errors.Is(err, ErrNotFound) {
			t.Errorf("Mount from %q: %v, want ErrNotFound", from, err)
		}
	}
	if n := s.count(t, `SELECT count(*) FROM repositories WHERE name = 'attacker/app'`); n != 0 {
		t.Errorf("a refused mount created the repository")
	}
	if size, err := s.blobs.Mount(ctx, "team/app", []string{"public/app", "private/team"}, d); err != nil || size != 7 {
		t.Fatalf("Mount from a list holding it: %d, %v", size, err)
	}
	if _, err := s.blobs.Lookup(ctx, "team/app", d, "default"); err != nil {
		t.Fatalf("mounted blob: %v", err)
	}
	if _, err := s.blobs.MountAny(ctx, "other/app", d); err != nil {
		t.Fatalf("MountAny: %v", err)
	}
	if _, err := s.blobs.MountAny(ctx, "other/app", digest.FromString("nowhere")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("MountAny of an unknown blob: %v", err)
	}
}
