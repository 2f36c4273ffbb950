package replication

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
	"github.com/gaia-registry/gaia/registry/uploadsession"
)

// These tests run two servers of IDC b: two Replicators with pools of
// their own, as two gaia-registry processes have, over one database and
// the IDC's one storage. Nothing in-process joins their fills (each has
// its own coalescing group): only the PostgreSQL advisory lock makes them
// one transfer.

// heldPeer is IDC a's gateway, serving the blob; it holds the first
// transfer open (headers sent, no bytes) until let is called, and reports
// each transfer as it begins.
type heldPeer struct {
	srv       *httptest.Server
	transfers atomic.Int64
	started   chan int64
	release   chan struct{}
	once      sync.Once
}

func newHeldPeer(t *testing.T, data []byte) *heldPeer {
	p := &heldPeer{started: make(chan int64, 16), release: make(chan struct{})}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := p.transfers.Add(1)
		p.started <- n
		if n == 1 {
			w.Header().Set("Content-Length", "300000")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			select {
			case <-p.release:
			case <-r.Context().Done():
				return
			}
		}
		w.Write(data)
	}))
	t.Cleanup(p.srv.Close)
	t.Cleanup(p.let) // runs first: Close waits for the held handler
	return p
}

func (p *heldPeer) let() { p.once.Do(func() { close(p.release) }) }

// server is one gaia-registry process of IDC b, storing into the IDC's
// storage at root. Its pools' connections carry the application name
// name (queries) and name+"-locks" (advisory locks), so pg_stat_activity
// tells them apart; the lock pool is returned.
func server(t *testing.T, url, name, peer, root string) (*Replicator, *pgxpool.Pool) {
	t.Helper()
	open := func(app string) *pgxpool.Pool {
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
		return pool
	}
	drv, err := filesystem.FromParameters(map[string]any{"rootdirectory": root})
	if err != nil {
		t.Fatal(err)
	}
	locks := open(name + "-locks")
	r := New(Options{
		IDC: "b", Peers: map[string]string{"a": peer}, Token: "tok",
		DB: open(name), LockDB: locks, Driver: drv, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	return r, locks
}

// twoServers starts a fill of d on server one and waits until its
// transfer is under way, then a fill on server two and waits until two
// was refused the lock: its lock pool was used and holds no connection
// (a try that got the lock keeps its connection). A transfer beginning
// meanwhile fails the test: the servers did not exclude each other.
func twoServers(t *testing.T, one, two *Replicator, twoLocks *pgxpool.Pool, p *heldPeer, d digest.Digest) (oneErr, twoErr chan error) {
	t.Helper()
	ctx := context.Background()
	oneErr, twoErr = make(chan error, 1), make(chan error, 1)
	go func() { oneErr <- one.Fill(ctx, "r", d) }()
	select {
	case <-p.started:
	case err := <-oneErr:
		t.Fatalf("server one's fill ended before its transfer began: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("server one's transfer never began")
	}
	go func() { twoErr <- two.Fill(ctx, "r", d) }()
	deadline := time.Now().Add(30 * time.Second)
	refused := func() bool {
		s := twoLocks.Stat()
		return s.AcquireCount() > 0 && s.AcquiredConns() == 0 && s.ConstructingConns() == 0
	}
	for !refused() {
		select {
		case n := <-p.started:
			t.Fatalf("transfer %d began while server one's was under way: the servers' fills did not exclude each other", n)
		case err := <-twoErr:
			t.Fatalf("server two's fill ended while server one's transfer was under way: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server two was not refused the lock in 30s (its lock pool: %d acquired, %d held)",
				twoLocks.Stat().AcquireCount(), twoLocks.Stat().AcquiredConns())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return oneErr, twoErr
}

func wait(t *testing.T, what string, errs chan error) error {
	t.Helper()
	select {
	case err := <-errs:
		return err
	case <-time.After(time.Minute):
		t.Fatalf("%s never ended", what)
		return nil
	}
}

// checkFilled: IDC b's storage holds the blob's bytes and its placement
// is recorded.
func checkFilled(t *testing.T, pool *pgxpool.Pool, r *Replicator, data []byte, d digest.Digest) {
	t.Helper()
	ctx := context.Background()
	if got, err := r.o.Driver.GetContent(ctx, uploadsession.BlobPath(d)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("filled blob: %d bytes, %v", len(got), err)
	}
	var placed bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM blob_placements WHERE digest = $1 AND idc = 'b')`, d.String()).Scan(&placed); err != nil || !placed {
		t.Fatalf("placement in b recorded: %v, %v", placed, err)
	}
}

// Two servers of one IDC filling the same blob at once make one transfer:
// the second waits on the first's lock, then finds the blob placed.
func TestFillOnceAcrossServers(t *testing.T) {
	url := metadatatest.Database(t)
	pool := metadatatest.Open(t, url)
	data, d := seed(t, pool)
	p := newHeldPeer(t, data)
	root := t.TempDir()
	one, _ := server(t, url, "one", p.srv.URL, root)
	two, twoLocks := server(t, url, "two", p.srv.URL, root)
	defer p.let() // on failure too, before the pools' cleanup waits for the fills' connections

	oneErr, twoErr := twoServers(t, one, two, twoLocks, p, d)
	if n := p.transfers.Load(); n != 1 {
		t.Fatalf("%d transfers while server two waited; want 1", n)
	}
	p.let()
	if err := wait(t, "server one's fill", oneErr); err != nil {
		t.Fatalf("server one's fill: %v", err)
	}
	if err := wait(t, "server two's fill", twoErr); err != nil {
		t.Fatalf("server two's fill: %v", err)
	}
	if n := p.transfers.Load(); n != 1 {
		t.Fatalf("%d transfers for two servers' fills of one blob; want 1", n)
	}
	checkFilled(t, pool, two, data, d)
}

// When the lock's holder dies mid-transfer (its session ends: here its
// lock connection is terminated, its transfer still hanging), a waiting
// server takes the lock over and fills the blob itself, without waiting
// for the dead holder's transfer.
func TestFillTakeoverWhenHolderDies(t *testing.T) {
	url := metadatatest.Database(t)
	pool := metadatatest.Open(t, url)
	data, d := seed(t, pool)
	p := newHeldPeer(t, data)
	root := t.TempDir()
	one, _ := server(t, url, "one", p.srv.URL, root)
	two, twoLocks := server(t, url, "two", p.srv.URL, root)
	defer p.let() // on failure too, before the pools' cleanup waits for the fills' connections

	oneErr, twoErr := twoServers(t, one, two, twoLocks, p, d)
	ctx := context.Background()
	// The lock is held on server one's lock connection: end that session.
	var pid int
	err := pool.QueryRow(ctx, `
		SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'one-locks'`).Scan(&pid)
	if err != nil {
		t.Fatalf("server one's lock connection holding an advisory lock: %v", err)
	}
	var ended bool
	if err := pool.QueryRow(ctx, `SELECT pg_terminate_backend($1, 10000)`, pid).Scan(&ended); err != nil || !ended {
		t.Fatalf("terminating server one's lock connection: %v, %v", ended, err)
	}
	if err := wait(t, "server two's fill, once server one's session ended,", twoErr); err != nil {
		t.Fatalf("server two's fill after the takeover: %v", err)
	}
	if n := p.transfers.Load(); n != 2 {
		t.Fatalf("%d transfers; want server one's (held) and server two's", n)
	}
	checkFilled(t, pool, two, data, d)
	select {
	case err := <-oneErr:
		t.Fatalf("server one's fill ended while its transfer was held: %v", err)
	default:
	}
	// Server one's transfer was held throughout: let it end. (It copied
	// without the lock once its session died; whatever it answers, the
	// blob it found in storage is the one server two verified.)
	p.let()
	wait(t, "server one's fill", oneErr)
	checkFilled(t, pool, two, data, d)
}
