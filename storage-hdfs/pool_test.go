package hdfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// countedConn counts the NameNode connections open (the resource the cap
// bounds), apart from the pool's own bookkeeping.
type countedConn struct {
	net.Conn
	live *atomic.Int64
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.live.Add(-1) })
	return c.Conn.Close()
}

// waitUntil polls cond until it holds, failing the test at the deadline
// with what describe says then.
func waitUntil(t *testing.T, what string, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not so after 30s: %s", what, describe())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestClientCapWithSlowReaders: 40 slow readers on a driver capped at 4
// clients never open more than 4 NameNode connections; the readers beyond
// the cap wait in line, one whose context ends leaves the line with an
// error, and every other reader reads the whole file.
func TestClientCapWithSlowReaders(t *testing.T) {
	const maxClients, readers = 4, 40
	ctx := context.Background()
	// maxthreads above the readers: the regulator must not be what queues them.
	d := newTestDriver(t, map[string]any{"maxclients": maxClients, "maxthreads": readers + 8})
	content := randomBytes(t, 1<<20+4321) // two 1 MiB blocks
	if err := d.PutContent(ctx, "/blob", content); err != nil {
		t.Fatal(err)
	}

	// From here on, count every NameNode connection the driver opens.
	d.d.pool.closeAll()
	var live, peak atomic.Int64
	dial := d.d.pool.options.NamenodeDialFunc
	d.d.pool.options.NamenodeDialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		n := live.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		return &countedConn{Conn: c, live: &live}, nil
	}
	before := d.PoolStats()
	describe := func() string {
		return fmt.Sprintf("%+v, NameNode connections %d (peak %d)", d.PoolStats(), live.Load(), peak.Load())
	}

	// Each reader opens the blob, reads its first 64 KiB, and goes on only
	// when the test lets it: a client reading slowly.
	opened := make(chan int, readers)
	goOn := make([]chan struct{}, readers)
	errs := make(chan error, readers)
	var wg sync.WaitGroup
	var letGo sync.Once
	release := func() {
		letGo.Do(func() {
			for _, ch := range goOn {
				select {
				case <-ch:
				default:
					close(ch)
				}
			}
		})
	}
	// On failure too: readers must give their clients back before the
	// driver's cleanup borrows one.
	t.Cleanup(func() { release(); wg.Wait() })
	for i := range readers {
		goOn[i] = make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := d.Reader(ctx, "/blob", 0)
			if err != nil {
				errs <- fmt.Errorf("reader %d: open: %w", i, err)
				opened <- i
				return
			}
			defer r.Close()
			head := make([]byte, 64<<10)
			_, err = io.ReadFull(r, head)
			opened <- i
			if err != nil {
				errs <- fmt.Errorf("reader %d: first read: %w", i, err)
				return
			}
			<-goOn[i]
			rest, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(append(head, rest...), content) {
				errs <- fmt.Errorf("reader %d: read %d bytes, err %v, equal %v", i, len(head)+len(rest), err, bytes.Equal(append(head, rest...), content))
			}
		}()
	}

	// maxClients readers hold a client; the others wait in line.
	waitUntil(t, "readers beyond the cap waiting", func() bool {
		if p := peak.Load(); p > maxClients {
			t.Fatalf("%d NameNode connections open at once; the cap is %d", p, maxClients)
		}
		s := d.PoolStats()
		return s.Open == maxClients && s.Waiters == readers-maxClients
	}, describe)

	// A caller whose context ends while in line gets an error and leaves.
	cctx, cancel := context.WithCancel(ctx)
	statErr := make(chan error, 1)
	go func() { _, err := d.Stat(cctx, "/blob"); statErr <- err }()
	waitUntil(t, "a Stat waiting behind the readers", func() bool { return d.PoolStats().Waiters == readers-maxClients+1 }, describe)
	cancel()
	// (distribution's base wraps every untyped driver error, unwrappably.)
	var se storagedriver.Error
	if err := <-statErr; !errors.As(err, &se) || !errors.Is(se.Detail, context.Canceled) {
		t.Fatalf("Stat whose context ended in line: %v; want context.Canceled", err)
	}
	if s := d.PoolStats(); s.Waiters != readers-maxClients {
		t.Fatalf("the cancelled Stat is still in line: %+v", s)
	}

	// Let each reader go on as it gets its client: all of them finish.
	for range readers {
		select {
		case i := <-opened:
			close(goOn[i])
		case <-time.After(30 * time.Second):
			t.Fatalf("no reader got a client for 30s: %s", describe())
		}
		if s := d.PoolStats(); s.Open > maxClients {
			t.Fatalf("pool has %d clients, cap %d", s.Open, maxClients)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	after := d.PoolStats()
	t.Logf("after %d readers: %s", readers, describe())
	if p := peak.Load(); p > maxClients {
		t.Fatalf("%d NameNode connections open at once; the cap is %d", p, maxClients)
	}
	if after.Open > maxClients || after.Waiters != 0 {
		t.Fatalf("after the readers: %+v", after)
	}
	if w := after.Waited - before.Waited; w < readers-maxClients {
		t.Fatalf("%d borrows waited; at least %d had to", w, readers-maxClients)
	}
	// Clients are handed from reader to reader, not closed and redialled.
	if n := after.Created - before.Created; n > maxClients {
		t.Fatalf("%d clients dialled for %d readers; want at most %d", n, readers, maxClients)
	}
}
