// Package httptimeouts bounds how long a client can hold one of Gaia's HTTP
// listeners while sending nothing: the request headers must arrive within
// ReadHeaderTimeout, a request body may pause for at most BodyIdleTimeout
// between reads (a slow but moving upload is fine; a stalled one is cut and
// releases whatever its request held), and a keep-alive connection is
// closed after IdleTimeout without a request. Every daemon embeds Config in
// its `http` section.
//
// It does not bound the total time of a request: a 50 GiB layer at
// 10 MiB/s is a legitimate request.
package httptimeouts

import (
	"fmt"
	"io"
	"net/http"
	"time"
)

// Defaults.
const (
	DefaultReadHeaderTimeout = 30 * time.Second
	DefaultBodyIdleTimeout   = time.Minute
	DefaultIdleTimeout       = 5 * time.Minute
)

// Config is the timeouts of one listener (inlined into an http section).
type Config struct {
	ReadHeaderTimeout time.Duration `yaml:"readheadertimeout"` // default 30s
	BodyIdleTimeout   time.Duration `yaml:"bodyidletimeout"`   // default 1m
	IdleTimeout       time.Duration `yaml:"idletimeout"`       // default 5m
}

// ApplyDefaults fills unset timeouts.
func (c *Config) ApplyDefaults() {
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if c.BodyIdleTimeout == 0 {
		c.BodyIdleTimeout = DefaultBodyIdleTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
}

// Validate refuses negative timeouts; section names the config section
// ("http") in the message.
func (c Config) Validate(section string) error {
	for key, d := range map[string]time.Duration{
		"readheadertimeout": c.ReadHeaderTimeout, "bodyidletimeout": c.BodyIdleTimeout, "idletimeout": c.IdleTimeout,
	} {
		if d < 0 {
			return fmt.Errorf("%s.%s: must not be negative, got %s", section, key, d)
		}
	}
	return nil
}

// Server returns an http.Server serving h with these timeouts (defaults for
// unset ones).
func (c Config) Server(h http.Handler) *http.Server {
	c.ApplyDefaults()
	return &http.Server{
		Handler:           BodyIdle(h, c.BodyIdleTimeout),
		ReadHeaderTimeout: c.ReadHeaderTimeout,
		IdleTimeout:       c.IdleTimeout,
	}
}

// BodyIdle makes every read of a request body fail (with a timeout error)
// once the client has sent nothing for d.
func BodyIdle(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			h.ServeHTTP(w, r)
			return
		}
		b := &idleBody{ReadCloser: r.Body, rc: http.NewResponseController(w), idle: d}
		// Armed before the handler runs: one that answers without reading
		// (401, 404, 416) leaves net/http to discard the body, and a client
		// that sent headers and no body must not hold the connection then.
		b.arm(time.Now())
		r.Body = b
		h.ServeHTTP(w, r)
	})
}

// idleBody moves the connection's read deadline forward as the body
// arrives. Moving it costs a timer update, so it is moved at most every
// quarter of d: a read may then wait between 3/4·d and d.
type idleBody struct {
	io.ReadCloser
	rc    *http.ResponseController
	idle  time.Duration
	armed time.Time // when the deadline was last moved; zero: not set
	done  bool
}

func (b *idleBody) arm(now time.Time) {
	if b.rc.SetReadDeadline(now.Add(b.idle)) == nil {
		b.armed = now
	}
}

func (b *idleBody) Read(p []byte) (int, error) {
	if !b.done {
		if now := time.Now(); now.Sub(b.armed) > b.idle/4 {
			b.arm(now)
		}
	}
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		// The body is over (or failed): lift the deadline, or the server's
		// own background read of the connection would hit it while the
		// handler is still answering, and cancel the request.
		b.clear()
	}
	return n, err
}

// clear lifts the deadline once the body is over. A body the handler left
// unread keeps its deadline: net/http discards it after the handler, and
// sets the connection's next deadline itself.
func (b *idleBody) clear() {
	if !b.done && !b.armed.IsZero() {
		b.rc.SetReadDeadline(time.Time{})
	}
	b.done = true
}
