package upstream

import (
	"sync"

	"github.com/gaia-registry/gaia/mirror-sync/rule"
)

// Clients keeps one Client per rule upstream (URL, credentials,
// concurrency), so an upstream's limit holds across all the runs or
// requests of a process that use it. The zero value is ready.
type Clients struct {
	// Added, when set, is told of each new client (metrics).
	Added func(*Client)

	mu sync.Mutex
	m  map[rule.Upstream]*Client
}

// For returns the client of upstream u.
func (cs *Clients) For(u rule.Upstream) *Client {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if c, ok := cs.m[u]; ok {
		return c
	}
	c := New(Options{URL: u.URL, Username: u.Username, Password: u.Password, Concurrency: u.Concurrency})
	if cs.m == nil {
		cs.m = map[rule.Upstream]*Client{}
	}
	cs.m[u] = c
	if cs.Added != nil {
		cs.Added(c)
	}
	return c
}
