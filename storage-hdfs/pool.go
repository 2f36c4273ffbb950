package hdfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gohdfs "github.com/colinmarc/hdfs/v2"
)

// clientPool hands out colinmarc clients. A client holds one NameNode
// connection and serves one RPC at a time, so sharing one client would
// serialise the whole driver; instead every call or open stream borrows a
// client of its own. At most maxOpen clients exist at once (borrowed or
// idle): each renews leases with the NameNode every second, so 2,000 slow
// blob readers must not become 2,000 NameNode connections. A borrower
// beyond the cap waits in line (FIFO) until a client is returned or
// closed, or its context ends. Idle clients are kept up to maxIdle; beyond
// that they are closed on return.
type clientPool struct {
	options gohdfs.ClientOptions
	maxIdle int
	maxOpen int

	mu   sync.Mutex
	idle []*gohdfs.Client
	open int // clients that exist: borrowed, idle or being dialled
	// waiters are the borrowers in line, oldest first. Each is handed an
	// idle client, or nil: a slot to dial a new one in.
	waiters []chan *gohdfs.Client

	// lastGood is the NameNode address that last accepted a connection. New
	// clients try it first, so with an HA pair whose first NameNode is down,
	// each new client does not pay a failed dial before reaching the live one.
	lastGood atomic.Value // string
	created  atomic.Int64 // clients dialled
	replaced atomic.Int64 // broken clients closed and dialled again in their slot
	waited   atomic.Int64 // borrows that had to wait for a client
}

// maxIdleClients bounds the idle clients kept. Each one sends the NameNode
// a lease renewal every second (colinmarc does so for every client), so a
// pool of hundreds would cost the NameNode hundreds of RPCs a second per
// registry server.
const maxIdleClients = 16

func newClientPool(p *DriverParameters) *clientPool {
	maxOpen := int(p.MaxClients)
	if maxOpen <= 0 {
		maxOpen = defaultMaxClients
	}
	cp := &clientPool{maxIdle: min(int(p.MaxThreads), maxIdleClients, maxOpen), maxOpen: maxOpen}
	dialer := &net.Dialer{Timeout: p.DialTimeout, KeepAlive: p.DialTimeout}
	cp.options = gohdfs.ClientOptions{
		Addresses:           p.Namenodes,
		User:                p.User,
		UseDatanodeHostname: p.UseDatanodeHostname,
		NamenodeDialFunc: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err == nil {
				cp.lastGood.Store(addr)
			}
			return c, err
		},
		DatanodeDialFunc:       dialer.DialContext,
		DataTransferProtection: p.DataTransferProtection,
	}
	return cp
}

// maxPoolWait bounds a wait in line for a client: callers whose requests
// have no deadline (a blob GET) must not wait for ever behind clients held
// by stalled readers; they fail (a 503 for the registry's clients) instead.
const maxPoolWait = 30 * time.Second

// get borrows a client: an idle one, a new one while fewer than maxOpen
// exist, or else the next one returned, waiting in line until then, until
// ctx ends or for maxPoolWait at most. The client goes back with put, or
// discard when broken.
func (cp *clientPool) get(ctx context.Context) (*gohdfs.Client, error) {
	cp.mu.Lock()
	if n := len(cp.idle); n > 0 {
		c := cp.idle[n-1]
		cp.idle = cp.idle[:n-1]
		cp.mu.Unlock()
		return c, nil
	}
	if cp.open < cp.maxOpen {
		cp.open++
		cp.mu.Unlock()
		return cp.dial()
	}
	ch := make(chan *gohdfs.Client, 1)
	cp.waiters = append(cp.waiters, ch)
	cp.mu.Unlock()
	cp.waited.Add(1)
	ctx, cancel := context.WithTimeoutCause(ctx, maxPoolWait, fmt.Errorf("no client came back within %s", maxPoolWait))
	defer cancel()
	select {
	case c := <-ch:
		if c == nil {
			return cp.dial()
		}
		return c, nil
	case <-ctx.Done():
	}
	cp.mu.Lock()
	if i := slices.Index(cp.waiters, ch); i >= 0 {
		cp.waiters = slices.Delete(cp.waiters, i, i+1)
		cp.mu.Unlock()
	} else {
		// Handed a client (or a slot) just as ctx ended: pass it on.
		cp.mu.Unlock()
		if c := <-ch; c != nil {
			cp.put(c)
		} else {
			cp.release()
		}
	}
	return nil, fmt.Errorf("waiting for one of %d HDFS clients, all in use: %w", cp.maxOpen, context.Cause(ctx))
}

// dial makes a client in a slot already counted in open, giving the slot
// up when the dial fails.
func (cp *clientPool) dial() (*gohdfs.Client, error) {
	c, err := cp.newClient()
	if err != nil {
		cp.release()
		return nil, err
	}
	return c, nil
}

func (cp *clientPool) newClient() (*gohdfs.Client, error) {
	opts := cp.options
	if good, _ := cp.lastGood.Load().(string); good != "" && len(opts.Addresses) > 1 && opts.Addresses[0] != good {
		addrs := []string{good}
		for _, a := range opts.Addresses {
			if a != good {
				addrs = append(addrs, a)
			}
		}
		opts.Addresses = addrs
	}
	c, err := gohdfs.NewClient(opts)
	if err != nil {
		return nil, err
	}
	cp.created.Add(1)
	return c, nil
}

// next takes the oldest waiter off the line; the caller holds mu.
func (cp *clientPool) next() chan *gohdfs.Client {
	if len(cp.waiters) == 0 {
		return nil
	}
	ch := cp.waiters[0]
	cp.waiters[0] = nil
	cp.waiters = cp.waiters[1:]
	return ch
}

// put returns a healthy client: to the oldest waiter, else to the idle
// list, else it is closed.
func (cp *clientPool) put(c *gohdfs.Client) {
	cp.mu.Lock()
	if ch := cp.next(); ch != nil {
		cp.mu.Unlock()
		ch <- c
		return
	}
	if len(cp.idle) < cp.maxIdle {
		cp.idle = append(cp.idle, c)
		cp.mu.Unlock()
		return
	}
	cp.open--
	cp.mu.Unlock()
	c.Close()
}

// discard closes a borrowed client that must not be reused (its
// connection broke, or it may still hold a failed write's lease).
func (cp *clientPool) discard(c *gohdfs.Client) {
	c.Close()
	cp.release()
}

// release gives up a slot whose client is gone: the oldest waiter may
// dial in it.
func (cp *clientPool) release() {
	cp.mu.Lock()
	if ch := cp.next(); ch != nil {
		cp.mu.Unlock()
		ch <- nil
		return
	}
	cp.open--
	cp.mu.Unlock()
}

// replace closes a broken borrowed client and dials a new one in its
// slot, so a retry never waits in line behind other borrowers.
func (cp *clientPool) replace(c *gohdfs.Client) (*gohdfs.Client, error) {
	c.Close()
	cp.replaced.Add(1)
	return cp.dial()
}

// closeAll closes the idle clients (at driver shutdown).
func (cp *clientPool) closeAll() {
	cp.mu.Lock()
	idle := cp.idle
	cp.idle = nil
	cp.open -= len(idle)
	cp.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}

// PoolStats is a snapshot of the driver's HDFS client pool (each client is
// one NameNode connection).
type PoolStats struct {
	Open     int   // clients that exist now: in use, idle or being dialled
	Idle     int   // of those, idle
	Max      int   // the cap on Open (maxclients)
	Waiters  int   // calls and streams waiting for a client now
	Created  int64 // clients dialled since start
	Replaced int64 // clients found broken and dialled again since start
	Waited   int64 // borrows that had to wait since start
}

func (cp *clientPool) stats() PoolStats {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return PoolStats{
		Open: cp.open, Idle: len(cp.idle), Max: cp.maxOpen, Waiters: len(cp.waiters),
		Created: cp.created.Load(), Replaced: cp.replaced.Load(), Waited: cp.waited.Load(),
	}
}

// isConnError reports whether err means the client's connection is broken
// (as opposed to an answer from HDFS, such as "file not found").
func isConnError(err error) bool {
	if err == nil {
		return false
	}
	var remote gohdfs.Error
	if errors.As(err, &remote) {
		return false
	}
	// Not net.Error: syscall.Errno implements it too, and ENOTEMPTY is an
	// answer, not a broken connection.
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	for _, e := range []error{io.EOF, io.ErrUnexpectedEOF, io.ErrClosedPipe, net.ErrClosed,
		syscall.ECONNRESET, syscall.ECONNREFUSED, syscall.EPIPE, os.ErrDeadlineExceeded} {
		if errors.Is(err, e) {
			return true
		}
	}
	return strings.Contains(err.Error(), "no available namenodes")
}

// withClient runs fn with a pooled client. When fn fails because the
// client's connection broke (NameNode restart or failover, a socket the
// NameNode dropped, a DataNode that went away mid-read), that client is
// closed and fn runs once more on a brand-new connection: the first call
// after a restart succeeds, and colinmarc's client, which would keep the
// dead socket or refuse the address for a 5 s back-off, is not reused.
// Other idle clients are not touched; a dead one is found, and replaced,
// by the next call that borrows it. fn must be safe to repeat. Waiting
// for a client (all maxclients in use) ends with ctx.
func (d *driver) withClient(ctx context.Context, fn func(c *gohdfs.Client) error) error {
	return d.withClientKept(ctx, func(c *gohdfs.Client) (bool, error) { return false, fn(c) })
}

// withClientKept is withClient for calls that hand the client on to a
// stream: fn reports whether it kept the client (the stream then returns
// it to the pool when closed).
func (d *driver) withClientKept(ctx context.Context, fn func(c *gohdfs.Client) (bool, error)) error {
	c, err := d.pool.get(ctx)
	if err != nil {
		return err
	}
	kept, err := fn(c)
	if isConnError(err) {
		if c, err = d.pool.replace(c); err != nil {
			return err
		}
		kept, err = fn(c)
		if isConnError(err) {
			d.pool.discard(c)
			return err
		}
	}
	if !kept {
		d.pool.put(c)
	}
	return err
}
