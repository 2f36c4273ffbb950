package hdfs

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	gohdfs "github.com/colinmarc/hdfs/v2"
)

// clientPool hands out colinmarc clients. A client holds one NameNode
// connection and serves one RPC at a time, so sharing one client would
// serialise the whole driver; instead every call or open stream borrows a
// client of its own. Idle clients are kept up to maxIdle; beyond that they
// are closed on return. There is no cap on clients in use: streams can stay
// open for as long as a registry upload lasts, and a cap would let open
// streams starve short calls.
type clientPool struct {
	options gohdfs.ClientOptions
	maxIdle int

	mu   sync.Mutex
	idle []*gohdfs.Client

	// lastGood is the NameNode address that last accepted a connection. New
	// clients try it first, so with an HA pair whose first NameNode is down,
	// each new client does not pay a failed dial before reaching the live one.
	lastGood atomic.Value // string
	created  atomic.Int64 // clients created, for tests and metrics
}

// maxIdleClients bounds the idle clients kept. Each one sends the NameNode
// a lease renewal every second (colinmarc does so for every client), so a
// pool of hundreds would cost the NameNode hundreds of RPCs a second per
// registry server.
const maxIdleClients = 16

func newClientPool(p *DriverParameters) *clientPool {
	cp := &clientPool{maxIdle: min(int(p.MaxThreads), maxIdleClients)}
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

func (cp *clientPool) get() (*gohdfs.Client, error) {
	cp.mu.Lock()
	if n := len(cp.idle); n > 0 {
		c := cp.idle[n-1]
		cp.idle = cp.idle[:n-1]
		cp.mu.Unlock()
		return c, nil
	}
	cp.mu.Unlock()
	return cp.newClient()
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

// put returns a healthy client to the pool.
func (cp *clientPool) put(c *gohdfs.Client) {
	cp.mu.Lock()
	if len(cp.idle) < cp.maxIdle {
		cp.idle = append(cp.idle, c)
		c = nil
	}
	cp.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// closeAll closes the idle clients (at driver shutdown).
func (cp *clientPool) closeAll() {
	cp.mu.Lock()
	idle := cp.idle
	cp.idle = nil
	cp.mu.Unlock()
	for _, c := range idle {
		c.Close()
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
// by the next call that borrows it. fn must be safe to repeat.
func (d *driver) withClient(fn func(c *gohdfs.Client) error) error {
	return d.withClientKept(func(c *gohdfs.Client) (bool, error) { return false, fn(c) })
}

// withClientKept is withClient for calls that hand the client on to a
// stream: fn reports whether it kept the client (the stream then returns
// it to the pool when closed).
func (d *driver) withClientKept(fn func(c *gohdfs.Client) (bool, error)) error {
	c, err := d.pool.get()
	if err != nil {
		return err
	}
	kept, err := fn(c)
	if isConnError(err) {
		c.Close()
		if c, err = d.pool.newClient(); err != nil {
			return err
		}
		kept, err = fn(c)
		if isConnError(err) {
			c.Close()
			return err
		}
	}
	if !kept {
		d.pool.put(c)
	}
	return err
}
