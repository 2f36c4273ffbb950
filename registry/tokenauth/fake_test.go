package tokenauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeBackend: users with passwords; a subject may have pull,push on
// repositories under "<subject>/" and pull on "public/"; anonymous gets
// pull on "public/"; deleted subjects are no longer valid.
type fakeBackend struct {
	mu      sync.Mutex
	users   map[string]string
	deleted map[string]bool
	authN   atomic.Int64 // Authenticate calls
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{users: map[string]string{"alice": "alice-pw", "bob": "bob-pw"}, deleted: map[string]bool{}}
}

func (b *fakeBackend) Authenticate(_ context.Context, user, password string) (string, error) {
	b.authN.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if p, ok := b.users[user]; !ok || p != password || b.deleted[user] {
		return "", ErrBadCredentials
	}
	return user, nil
}

func (b *fakeBackend) Valid(_ context.Context, subject string, _ time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.users[subject]; !ok || b.deleted[subject] {
		return ErrBadCredentials
	}
	return nil
}

func (b *fakeBackend) Grant(_ context.Context, subject string, requested []Access) ([]Access, error) {
	var out []Access
	for _, r := range requested {
		g := Access{Type: r.Type, Name: r.Name}
		for _, a := range r.Actions {
			own := subject != "" && strings.HasPrefix(r.Name, subject+"/") && (a == "pull" || a == "push")
			public := strings.HasPrefix(r.Name, "public/") && a == "pull"
			if r.Type == "repository" && (own || public) {
				g.Actions = append(g.Actions, a)
			}
		}
		out = append(out, g)
	}
	return out, nil
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Unix(1_800_000_000, 0)} }
func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func ecKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustKeys(t testing.TB, ks ...*ecdsa.PrivateKey) *Keys {
	var cs []crypto.Signer
	for _, k := range ks {
		cs = append(cs, k)
	}
	keys, err := NewKeys(cs...)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}
