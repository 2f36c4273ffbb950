package harness

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// RelayMode is what a Relay does with connections.
type RelayMode int

const (
	// RelayOpen forwards new connections to the target.
	RelayOpen RelayMode = iota
	// RelayCut closes every connection at once, new and open ones: the
	// target is down (a client sees EOF or a reset).
	RelayCut
	// RelayHang accepts connections and never answers, and nothing moves
	// on open ones any more: the target is behind a black hole (a client
	// waits for its own timeout).
	RelayHang
)

// Relay is a TCP relay to a target that a test can cut or hang and open
// again, to show what a client does while the target is unreachable.
type Relay struct {
	Addr   string // where clients connect
	target string
	ln     net.Listener

	mu    sync.Mutex
	mode  RelayMode
	conns map[*relayConn]bool // open client connections
	wg    sync.WaitGroup
}

// relayConn is a client's connection; once hung it stays so (bytes were
// dropped: it cannot be resumed), until the client closes it.
type relayConn struct {
	net.Conn
	hung atomic.Bool
}

// StartRelay listens on a free loopback address and relays to target
// until the test ends.
func StartRelay(t testing.TB, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[*relayConn]bool{}}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(r.close)
	return r
}

// Set switches the relay's mode. Cut and hang apply to the connections
// already open as well as to new ones; open applies to new ones.
func (r *Relay) Set(mode RelayMode) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mode = mode
	for c := range r.conns {
		switch mode {
		case RelayCut:
			c.Close()
		case RelayHang:
			c.hung.Store(true)
		}
	}
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		nc, err := r.ln.Accept()
		if err != nil {
			return
		}
		c := &relayConn{Conn: nc}
		r.mu.Lock()
		if r.mode == RelayCut {
			r.mu.Unlock()
			c.Close()
			continue
		}
		c.hung.Store(r.mode == RelayHang)
		r.conns[c] = true
		r.wg.Add(1)
		r.mu.Unlock()
		go func() {
			defer r.wg.Done()
			r.serve(c)
			c.Close()
			r.mu.Lock()
			delete(r.conns, c)
			r.mu.Unlock()
		}()
	}
}

// serve relays c to a new connection to the target, until either side
// closes; a hung c's bytes are dropped both ways.
func (r *Relay) serve(c *relayConn) {
	if c.hung.Load() {
		io.Copy(io.Discard, c) // until the client gives up
		return
	}
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		pipe(c, up, c)
		if !c.hung.Load() {
			c.Close() // the target closed: so does the client's side
		}
		close(done)
	}()
	pipe(up, c, c)
	up.Close()
	<-done
}

// pipe copies src to dst until src ends, dropping what it reads once c
// is hung.
func pipe(dst io.Writer, src io.Reader, c *relayConn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !c.hung.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (r *Relay) close() {
	r.ln.Close()
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
