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

func newClientPool(p *DriverParameters) *clientPool {
	cp := &clientPool{maxIdle: int(p.MaxThreads)}
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

// discard closes a client whose connection failed, and every idle client
// with it: a connection error almost always means the NameNode went away
// (restart, failover), and each idle client's socket is then just as dead.
// colinmarc's client would otherwise keep the dead socket, or refuse the
// address for a 5 s back-off, and fail the next call too.
func (cp *clientPool) discard(c *gohdfs.Client) {
	cp.mu.Lock()
	idle := cp.idle
	cp.idle = nil
	cp.mu.Unlock()
	if c != nil {
		c.Close()
	}
	for _, ic := range idle {
		ic.Close()
	}
}

func (cp *clientPool) close() {
	cp.discard(nil)
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
// connection broke, the client (and the idle pool) is dropped and fn runs
// once more on a fresh connection, so the first call after a NameNode
// restart or failover succeeds. fn must be safe to repeat.
func (d *driver) withClient(fn func(c *gohdfs.Client) error) error {
	for attempt := 0; ; attempt++ {
		c, err := d.pool.get()
		if err != nil {
			return err
		}
		err = fn(c)
		if isConnError(err) {
			d.pool.discard(c)
			if attempt == 0 {
				continue
			}
			return err
		}
		d.pool.put(c)
		return err
	}
}
