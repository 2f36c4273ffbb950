package pullthrough

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gaia-registry/gaia/mirror-sync/rule"
	"github.com/gaia-registry/gaia/mirror-sync/store"
	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
	"github.com/gaia-registry/gaia/registry/uploadsession"
)

// These tests run two registry servers' Fetchers, each with pools of its
// own (as two gaia-registry processes have), over one database and one
// storage. Nothing in-process joins their fetches (each has its own
// flights): only the PostgreSQL advisory locks make them one upstream
// fetch.

// heldUpstream is an upstream registry holding one image (a config and a
// layer) at lib/app:v1. The first GET of kind hold ("manifest" or "blob")
// is held open until let is called; each GET of that kind is reported as
// it begins.
type heldUpstream struct {
	srv             *httptest.Server
	manifest        []byte
	blobs           map[digest.Digest][]byte
	config, layer   digest.Digest
	manifests, gets atomic.Int64 // GETs of the manifest, of blobs
	started         chan int64   // the held kind's GETs, numbered
	release         chan struct{}
	once            sync.Once
}

func newHeldUpstream(t *testing.T, hold string) *heldUpstream {
	u := &heldUpstream{blobs: map[digest.Digest][]byte{}, started: make(chan int64, 16), release: make(chan struct{})}
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	layer := make([]byte, 200_000)
	rand.Read(layer)
	u.config, u.layer = digest.FromBytes(config), digest.FromBytes(layer)
	u.blobs[u.config], u.blobs[u.layer] = config, layer
	u.manifest, _ = json.Marshal(v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: u.config, Size: int64(len(config))},
		Layers:    []v1.Descriptor{{MediaType: v1.MediaTypeImageLayerGzip, Digest: u.layer, Size: int64(len(layer))}},
	})
	// held serves body, holding the first GET of kind hold (counted in n).
	held := func(w http.ResponseWriter, r *http.Request, kind string, n *atomic.Int64, body []byte) {
		if r.Method != http.MethodGet {
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			return
		}
		i := n.Add(1)
		if kind == hold {
			u.started <- i
			if i == 1 {
				select {
				case <-u.release:
				case <-r.Context().Done():
					return
				}
			}
		}
		w.Write(body)
	}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch ref, _ := strings.CutPrefix(r.URL.Path, "/v2/lib/app/"); {
		case ref == "manifests/v1" || ref == "manifests/"+digest.FromBytes(u.manifest).String():
			w.Header().Set("Content-Type", v1.MediaTypeImageManifest)
			w.Header().Set("Docker-Content-Digest", digest.FromBytes(u.manifest).String())
			held(w, r, "manifest", &u.manifests, u.manifest)
		case strings.HasPrefix(ref, "blobs/") && u.blobs[digest.Digest(strings.TrimPrefix(ref, "blobs/"))] != nil:
			held(w, r, "blob", &u.gets, u.blobs[digest.Digest(strings.TrimPrefix(ref, "blobs/"))])
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(u.srv.Close)
	t.Cleanup(u.let) // runs first: Close waits for the held handler
	return u
}

func (u *heldUpstream) let() { u.once.Do(func() { close(u.release) }) }

// server is one gaia-registry process's Fetcher over the database at url
// and the storage at root. Its pools' connections carry the application
// names name, name+"-locks" (manifest locks) and name+"-bloblocks", so
// pg_stat_activity tells them apart.
func server(t *testing.T, url, name, root string) (*Fetcher, map[string]*pgxpool.Pool) {
	t.Helper()
	pools := map[string]*pgxpool.Pool{}
	for _, app := range []string{name, name + "-locks", name + "-bloblocks"} {
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		cfg.ConnConfig.RuntimeParams["application_name"] = app
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		pools[strings.TrimPrefix(app, name)] = pool
	}
	drv, err := filesystem.FromParameters(map[string]any{"rootdirectory": root})
	if err != nil {
		t.Fatal(err)
	}
	db := pools[""]
	f := New(Options{
		DB: db, LockDB: pools["-locks"], BlobLockDB: pools["-bloblocks"],
		Manifests: metadata.NewManifests(db), Blobs: metadata.NewBlobs(db), Uploads: uploadsession.New(db, drv),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	return f, pools
}

// lockCase is one of pull-through's locks: what a pull fetches under it,
// and which of a server's lock pools holds it.
type lockCase struct {
	name  string // also the upstream GETs held: "manifest" or "blob"
	pool  string // "-locks" or "-bloblocks"
	fetch func(ctx context.Context, f *Fetcher, u *heldUpstream) (bool, error)
	// The upstream GETs one whole fetch makes: of the manifest, of blobs.
	manifests, blobs int64
}

var lockCases = []lockCase{
	{"manifest", "-locks", func(ctx context.Context, f *Fetcher, _ *heldUpstream) (bool, error) {
		return f.Manifest(ctx, "lib/app", "v1")
	}, 1, 2},
	{"blob", "-bloblocks", func(ctx context.Context, f *Fetcher, u *heldUpstream) (bool, error) {
		return f.Blob(ctx, "lib/app", u.layer)
	}, 0, 1},
}

// setup: a database with an on-demand rule for lib/app on a held
// upstream, and two servers on one storage.
func setup(t *testing.T, hold string) (pool *pgxpool.Pool, root string, u *heldUpstream, one, two *Fetcher, twoPools map[string]*pgxpool.Pool) {
	url := metadatatest.Database(t)
	pool = metadatatest.Open(t, url)
	u = newHeldUpstream(t, hold)
	r := &rule.Rule{Name: "cache", Upstream: rule.Upstream{URL: u.srv.URL}, Repositories: []string{"lib/app"},
		Schedule: "1h", Enabled: true, OnDemand: true}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := store.New(pool).Create(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	root = t.TempDir()
	one, _ = server(t, url, "one", root)
	two, twoPools = server(t, url, "two", root)
	return
}

type result struct {
	ok  bool
	err error
}

// twoServers starts tc's fetch on server one and waits until its upstream
// GET is under way, then on server two and waits until two was refused
// the lock: its lock pool was used and holds no connection (a try that
// got the lock keeps its connection). A GET beginning meanwhile fails the
// test: the servers did not exclude each other.
func twoServers(t *testing.T, tc lockCase, u *heldUpstream, one, two *Fetcher, twoLocks *pgxpool.Pool) (oneRes, twoRes chan result) {
	t.Helper()
	ctx := context.Background()
	oneRes, twoRes = make(chan result, 1), make(chan result, 1)
	go func() { ok, err := tc.fetch(ctx, one, u); oneRes <- result{ok, err} }()
	select {
	case <-u.started:
	case r := <-oneRes:
		t.Fatalf("server one's fetch ended before its upstream GET began: %v, %v", r.ok, r.err)
	case <-time.After(time.Minute):
		t.Fatal("server one's upstream GET never began")
	}
	go func() { ok, err := tc.fetch(ctx, two, u); twoRes <- result{ok, err} }()
	refused := func() bool {
		s := twoLocks.Stat()
		return s.AcquireCount() > 0 && s.AcquiredConns() == 0 && s.ConstructingConns() == 0
	}
	deadline := time.Now().Add(30 * time.Second)
	for !refused() {
		select {
		case n := <-u.started:
			t.Fatalf("upstream %s GET %d began while server one's was under way: the servers' fetches did not exclude each other", tc.name, n)
		case r := <-twoRes:
			t.Fatalf("server two's fetch ended while server one's was under way: %v, %v", r.ok, r.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server two was not refused the lock in 30s (its lock pool: %d acquired, %d held)",
				twoLocks.Stat().AcquireCount(), twoLocks.Stat().AcquiredConns())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return oneRes, twoRes
}

func wait(t *testing.T, what string, res chan result) result {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(time.Minute):
		t.Fatalf("%s never ended", what)
		return result{}
	}
}

// checkFetched: the registry holds what tc fetched, its bytes in the
// storage at root.
func checkFetched(t *testing.T, tc lockCase, f *Fetcher, root string, u *heldUpstream) {
	t.Helper()
	ctx := context.Background()
	drv, err := filesystem.FromParameters(map[string]any{"rootdirectory": root})
	if err != nil {
		t.Fatal(err)
	}
	if tc.name == "manifest" {
		m, err := f.o.Manifests.ByTag(ctx, "lib/app", "v1")
		if err != nil || !bytes.Equal(m.Content, u.manifest) {
			t.Fatalf("lib/app:v1 after the fetch: %v", err)
		}
	}
	got, err := drv.GetContent(ctx, uploadsession.BlobPath(u.layer))
	if err != nil || !bytes.Equal(got, u.blobs[u.layer]) {
		t.Fatalf("the layer in storage: %d bytes, %v", len(got), err)
	}
	if _, err := f.o.Blobs.Lookup(ctx, "lib/app", u.layer, ""); err != nil {
		t.Fatalf("the layer linked in lib/app: %v", err)
	}
}

// Two servers pulling the same missing manifest, or blob, at once make
// one upstream fetch: the second waits on the first's lock, then finds
// it fetched.
func TestFetchOnceAcrossServers(t *testing.T) {
	for _, tc := range lockCases {
		t.Run(tc.name, func(t *testing.T) {
			_, root, u, one, two, twoPools := setup(t, tc.name)
			defer u.let() // on failure too, before the pools' cleanup waits for the fetches' connections
			oneRes, twoRes := twoServers(t, tc, u, one, two, twoPools[tc.pool])
			if n := u.manifests.Load() + u.gets.Load(); n != 1 {
				t.Fatalf("%d upstream GETs while server two waited; want server one's", n)
			}
			u.let()
			for _, s := range []struct {
				name string
				res  chan result
			}{{"server one", oneRes}, {"server two", twoRes}} {
				if r := wait(t, s.name+"'s fetch", s.res); !r.ok || r.err != nil {
					t.Fatalf("%s's fetch: %v, %v", s.name, r.ok, r.err)
				}
			}
			if m, b := u.manifests.Load(), u.gets.Load(); m != tc.manifests || b != tc.blobs {
				t.Fatalf("upstream GETs for two servers' pulls: %d of the manifest, %d of blobs; want %d and %d (one fetch)",
					m, b, tc.manifests, tc.blobs)
			}
			checkFetched(t, tc, two, root, u)
		})
	}
}

// When the lock's holder dies mid-fetch (its session ends: here its lock
// connection is terminated, its upstream GET still hanging), a waiting
// server takes the lock over and fetches itself.
func TestFetchTakeoverWhenHolderDies(t *testing.T) {
	for _, tc := range lockCases {
		t.Run(tc.name, func(t *testing.T) {
			pool, root, u, one, two, twoPools := setup(t, tc.name)
			defer u.let() // on failure too, before the pools' cleanup waits for the fetches' connections
			oneRes, twoRes := twoServers(t, tc, u, one, two, twoPools[tc.pool])
			ctx := context.Background()
			var pid int
			err := pool.QueryRow(ctx, `
				SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
				WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1`, "one"+tc.pool).Scan(&pid)
			if err != nil {
				t.Fatalf("server one's %s lock connection holding an advisory lock: %v", tc.name, err)
			}
			var ended bool
			if err := pool.QueryRow(ctx, `SELECT pg_terminate_backend($1, 10000)`, pid).Scan(&ended); err != nil || !ended {
				t.Fatalf("terminating server one's lock connection: %v, %v", ended, err)
			}
			if r := wait(t, "server two's fetch, once server one's session ended,", twoRes); !r.ok || r.err != nil {
				t.Fatalf("server two's fetch after the takeover: %v, %v", r.ok, r.err)
			}
			// Server two's whole fetch, besides server one's held GET.
			wantM, wantB := tc.manifests, tc.blobs
			if tc.name == "manifest" {
				wantM++
			} else {
				wantB++
			}
			if m, b := u.manifests.Load(), u.gets.Load(); m != wantM || b != wantB {
				t.Fatalf("upstream GETs: %d of the manifest, %d of blobs; want %d and %d", m, b, wantM, wantB)
			}
			checkFetched(t, tc, two, root, u)
			select {
			case r := <-oneRes:
				t.Fatalf("server one's fetch ended while its upstream GET was held: %v, %v", r.ok, r.err)
			default:
			}
			// Let server one's held GET end. (It goes on without the lock
			// once its session died; whatever it answers, what server two
			// stored stays.)
			u.let()
			wait(t, "server one's fetch", oneRes)
			checkFetched(t, tc, two, root, u)
		})
	}
}
