package ldap_test

import (
	"io"
	"net"
	"sync"
	"testing"
)

// proxy forwards TCP connections to a server, counting them, and can cut
// every open one, as a server restart does, or leave new ones unanswered,
// as a hung server does.
type proxy struct {
	addr string
	mu   sync.Mutex
	n    int
	open []net.Conn
	hang bool
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: ln.Addr().String()}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			hang := p.hang
			if hang {
				p.open = append(p.open, c)
			}
			p.mu.Unlock()
			if hang {
				go io.Copy(io.Discard, c)
				continue
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.n++
			p.open = append(p.open, c, s)
			p.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
	return p
}

// dials is the number of connections accepted so far.
func (p *proxy) dials() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// hangNew leaves the connections accepted from now on unanswered.
func (p *proxy) hangNew() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hang = true
}

// cut closes every connection open now.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.open {
		c.Close()
	}
	p.open = nil
}
