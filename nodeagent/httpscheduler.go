package nodeagent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// HTTPScheduler speaks the node protocol over HTTP (scheduler/DESIGN.md):
// a thin client, used until scheduler/nodeclient exists. A follower's
// answer naming the leader (the Gaia-Leader header) moves the client to
// the leader for the following requests.
type HTTPScheduler struct {
	Node   string       // this node's name
	Token  string       // the node credential
	Client *http.Client // default: http.DefaultClient (long polls need no client timeout)

	mu   sync.Mutex
	urls []string // configured base URLs, tried in turn
	cur  string   // the one in use (a leader named by a follower, or one of urls)
	next int
}

// NewHTTPScheduler talks to the schedulers at urls (http(s)://host:port).
func NewHTTPScheduler(urls []string, node, token string) *HTTPScheduler {
	s := &HTTPScheduler{Node: node, Token: token, urls: urls}
	if len(urls) > 0 {
		s.cur = urls[0]
	}
	return s
}

// ProtocolError is an error answer of the scheduler.
type ProtocolError struct {
	Status  int
	Code    string
	Field   string
	Message string
}

func (e *ProtocolError) Error() string {
	s := fmt.Sprintf("scheduler: %d", e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Field != "" {
		s += " (" + e.Field + ")"
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

func (s *HTTPScheduler) base() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// failover moves to the leader named in h, or to the next configured URL.
func (s *HTTPScheduler) failover(h http.Header) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := h.Get("Gaia-Leader"); l != "" {
		s.cur = strings.TrimRight(l, "/")
		return
	}
	if len(s.urls) > 0 {
		s.next = (s.next + 1) % len(s.urls)
		s.cur = s.urls[s.next]
	}
}

func (s *HTTPScheduler) do(ctx context.Context, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.base()+path, body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+s.Token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c := s.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		s.failover(nil)
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		var e struct {
			Error struct {
				Code, Field, Message string
			} `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		pe := &ProtocolError{Status: resp.StatusCode}
		if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
			pe.Code, pe.Field, pe.Message = e.Error.Code, e.Error.Field, e.Error.Message
		} else {
			pe.Message = strings.TrimSpace(string(b))
		}
		if resp.StatusCode == http.StatusServiceUnavailable {
			s.failover(resp.Header)
		}
		return resp.StatusCode, pe
	}
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.StatusCode, fmt.Errorf("scheduler: decoding %s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// Register implements Scheduler.
func (s *HTTPScheduler) Register(ctx context.Context, req RegisterRequest) (RegisterResponse, error) {
	var out RegisterResponse
	_, err := s.do(ctx, http.MethodPost, "/v1/node/register", req, &out)
	return out, err
}

// PollDesired implements Scheduler.
func (s *HTTPScheduler) PollDesired(ctx context.Context, version string, wait time.Duration) (*DesiredSet, bool, error) {
	q := url.Values{}
	q.Set("version", version)
	q.Set("wait", wait.String())
	var set DesiredSet
	status, err := s.do(ctx, http.MethodGet, "/v1/node/"+url.PathEscape(s.Node)+"/desired?"+q.Encode(), nil, &set)
	if err != nil {
		return nil, false, err
	}
	if status == http.StatusNotModified {
		return nil, false, nil
	}
	return &set, true, nil
}

// Report implements Scheduler.
func (s *HTTPScheduler) Report(ctx context.Context, r Report) error {
	_, err := s.do(ctx, http.MethodPost, "/v1/node/"+url.PathEscape(s.Node)+"/report", r, nil)
	return err
}
