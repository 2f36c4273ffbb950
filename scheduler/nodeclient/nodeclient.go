// Package nodeclient is the Go client of gaia-scheduler's node protocol
// (docs/node-protocol.md): register, long-poll the desired set, report.
// It follows the leader: a follower's not_leader answer names the leader
// (Gaia-Leader header), and a scheduler that does not answer is replaced by
// the next one known. Sim is a simulated node agent on top of it.
package nodeclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gaia-registry/gaia/scheduler/api"
)

// Options configure a Client.
type Options struct {
	// Servers are the schedulers' base URLs (http://host:port); any one
	// will do, the client finds the leader.
	Servers []string
	// Resolve, when set, is asked for the servers when none answers
	// (e.g. a Consul lookup of gaia-scheduler with tag cluster=NAME).
	Resolve func(ctx context.Context) ([]string, error)
	Token   string // the node credential
	Node    api.RegisterRequest
	HTTP    *http.Client // default: a client without overall timeout
	// Retry is the pause between attempts when no scheduler answers
	// (default 200ms).
	Retry time.Duration
	// Slack is how long past a poll's wait (and for other requests, in
	// all) the client waits for an answer before it tries another
	// scheduler (default 30s): a leader that hangs is left this fast.
	Slack time.Duration
}

// Client speaks the node protocol for one node.
type Client struct {
	o          Options
	mu         sync.Mutex
	cur        string // the scheduler in use
	next       int
	registered bool
}

// New returns a Client.
func New(o Options) *Client {
	if o.HTTP == nil {
		o.HTTP = &http.Client{}
	}
	if o.Retry == 0 {
		o.Retry = 200 * time.Millisecond
	}
	if o.Slack == 0 {
		o.Slack = 30 * time.Second
	}
	c := &Client{o: o}
	if len(o.Servers) > 0 {
		c.cur = o.Servers[0]
	}
	return c
}

// Error is an error answer of the scheduler.
type Error struct {
	Status int
	API    api.Error
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s", e.Status, e.API.Error()) }

// Server is the scheduler the client talks to now.
func (c *Client) Server() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// failover moves to the leader named (or the next server known).
func (c *Client) failover(ctx context.Context, from, leader string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != from {
		return // another request moved already
	}
	if leader != "" && leader != from {
		c.cur = leader
		return
	}
	if c.o.Resolve != nil {
		if s, err := c.o.Resolve(ctx); err == nil && len(s) > 0 {
			c.o.Servers = s
			// the leader (listed first) unless it is the one that failed
			c.next = 0
			if s[0] == from && len(s) > 1 {
				c.next = 1
			}
			c.cur = s[c.next]
			return
		}
	}
	if len(c.o.Servers) > 0 {
		c.next = (c.next + 1) % len(c.o.Servers)
		c.cur = c.o.Servers[c.next]
	}
}

// do sends a request to the leader, following it; it returns the status
// and body of an answer that is not a not_leader or transport failure.
func (c *Client) do(ctx context.Context, method, path string, body any, timeout time.Duration) (int, []byte, error) {
	var raw []byte
	if body != nil {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return 0, nil, err
		}
	}
	for attempt := 0; ; attempt++ {
		server := c.Server()
		status, resp, leader, err := c.once(ctx, server, method, path, raw, timeout)
		if err == nil && status != http.StatusServiceUnavailable {
			return status, resp, nil
		}
		if ctx.Err() != nil {
			return 0, nil, ctx.Err()
		}
		if attempt >= 50 {
			if err == nil {
				err = decodeError(status, resp)
			}
			return 0, nil, fmt.Errorf("no scheduler leads: %w", err)
		}
		c.failover(ctx, server, leader)
		if leader == "" || attempt > 0 {
			select {
			case <-ctx.Done():
				return 0, nil, ctx.Err()
			case <-time.After(c.o.Retry):
			}
		}
	}
}

func (c *Client) once(ctx context.Context, server, method, path string, raw []byte, timeout time.Duration) (int, []byte, string, error) {
	if server == "" {
		return 0, nil, "", errors.New("no scheduler address")
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if raw != nil {
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(rctx, method, strings.TrimRight(server, "/")+path, rd)
	if err != nil {
		return 0, nil, "", err
	}
	req.Header.Set("Authorization", "Bearer "+c.o.Token)
	if raw != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.o.HTTP.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, "", err
	}
	return resp.StatusCode, b, resp.Header.Get(api.LeaderHeader), nil
}

func decodeError(status int, body []byte) error {
	var e struct {
		Error api.Error `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" {
		return &Error{Status: status, API: api.Error{Code: "http", Message: strings.TrimSpace(string(body))}}
	}
	return &Error{Status: status, API: e.Error}
}

// Register registers the node with the leader.
func (c *Client) Register(ctx context.Context) (*api.RegisterResponse, error) {
	status, body, err := c.do(ctx, http.MethodPost, "/v1/node/register", c.o.Node, c.o.Slack)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, decodeError(status, body)
	}
	var r api.RegisterResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.registered = true
	c.mu.Unlock()
	return &r, nil
}

// retryRegistered sends a request, registering first (and again when the
// leader does not know the node: a new leader, or one that restarted).
func (c *Client) retryRegistered(ctx context.Context, method, path string, body any, timeout time.Duration) (int, []byte, error) {
	c.mu.Lock()
	reg := c.registered
	c.mu.Unlock()
	if !reg {
		if _, err := c.Register(ctx); err != nil {
			return 0, nil, err
		}
	}
	status, b, err := c.do(ctx, method, path, body, timeout)
	if err == nil && status == http.StatusNotFound {
		if _, err := c.Register(ctx); err != nil {
			return 0, nil, err
		}
		status, b, err = c.do(ctx, method, path, body, timeout)
	}
	return status, b, err
}

// Poll long-polls the desired set: it answers at once when the set's
// version is not version, else after wait with changed false. The poll
// is also the node's heartbeat.
func (c *Client) Poll(ctx context.Context, version string, wait time.Duration) (set *api.DesiredSet, changed bool, err error) {
	path := fmt.Sprintf("/v1/node/%s/desired?version=%s&wait=%s", url.PathEscape(c.o.Node.Name), url.QueryEscape(version), wait)
	status, body, err := c.retryRegistered(ctx, http.MethodGet, path, nil, wait+c.o.Slack)
	if err != nil {
		return nil, false, err
	}
	switch status {
	case http.StatusNotModified:
		return nil, false, nil
	case http.StatusOK:
		var s api.DesiredSet
		if err := json.Unmarshal(body, &s); err != nil {
			return nil, false, err
		}
		return &s, true, nil
	}
	return nil, false, decodeError(status, body)
}

// Report sends the state of every instance the node has.
func (c *Client) Report(ctx context.Context, r *api.Report) error {
	if r.Instances == nil {
		r.Instances = []api.InstanceReport{}
	}
	status, body, err := c.retryRegistered(ctx, http.MethodPost, "/v1/node/"+url.PathEscape(c.o.Node.Name)+"/report", r, c.o.Slack)
	if err != nil {
		return err
	}
	if status != http.StatusNoContent {
		return decodeError(status, body)
	}
	return nil
}
