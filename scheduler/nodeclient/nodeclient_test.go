package nodeclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/api"
)

// sched answers the node protocol with desired sets of one term.
func sched(t *testing.T, term int, registered *atomic.Int32) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v1/node/register":
			registered.Add(1)
			fmt.Fprint(w, `{"nodeID":"n1","pollInterval":"1s"}`)
		default:
			fmt.Fprintf(w, `{"version":"%d.1","instances":[]}`, term)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// A follower's not_leader answer sends the client to the leader it names;
// a set from an older term than one applied is refused.
func TestFollowsLeaderAndRefusesOlderTerms(t *testing.T) {
	var regs atomic.Int32
	newer := sched(t, 5, &regs)
	older := sched(t, 4, &regs)
	follower := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(api.LeaderHeader, newer.URL)
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"error":{"code":"not_leader","message":"see header"}}`)
	}))
	defer follower.Close()
	c := New(Options{Servers: []string{follower.URL, older.URL}, Token: "t", Node: api.RegisterRequest{Name: "n1"}, Retry: time.Millisecond})
	ctx := context.Background()
	set, changed, err := c.Poll(ctx, "", time.Second)
	if err != nil || !changed || set.Version != "5.1" || c.Server() != newer.URL {
		t.Fatalf("poll via the follower: %v %v %+v on %s", err, changed, set, c.Server())
	}
	// The client is sent to the deposed leader (term 4).
	c.mu.Lock()
	c.cur = older.URL
	c.mu.Unlock()
	if _, _, err := c.Poll(ctx, "5.1", time.Second); !errors.Is(err, ErrStaleTerm) {
		t.Fatalf("set of term 4 after one of term 5: %v, want ErrStaleTerm", err)
	}
	if c.Server() == older.URL {
		t.Fatal("still on the deposed leader")
	}
}
