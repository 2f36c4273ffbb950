// Package gateway is the entry point of one IDC: a stateless reverse proxy
// over the healthy gaia-registry servers of its own IDC, found in Consul.
//
// It balances with the power of two choices on in-flight requests, ejects
// a server after consecutive connection failures (passively, until its
// ejection ends or Consul drops it), and retries a request on another
// server when it failed before any response byte came back and its body
// was never sent. Bodies stream both ways through fixed buffers. Servers of
// other IDCs are used only when the IDC has none and failover is "any";
// otherwise the answer is 503 with the spec's error body. Registry
// servers answer with relative Location headers, so a client's chunked
// upload keeps coming through the gateway whichever server took the last
// chunk.
package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	consul "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gaia-registry/gaia/registry/forwarded"
	"github.com/gaia-registry/gaia/registry/internaltoken"
	"github.com/gaia-registry/gaia/registry/tlsfiles"
)

// Upstream is one registry server.
type Upstream struct {
	ID, Addr, IDC, Scheme string

	inflight     atomic.Int64
	failures     atomic.Int32 // consecutive
	ejectedUntil atomic.Int64 // unix nanoseconds
	tokenWarned  atomic.Bool  // an internal token was held back from it (logged once)
}

func (u *Upstream) ejected(now time.Time) bool { return u.ejectedUntil.Load() > now.UnixNano() }

// Gateway proxies to its IDC's registry servers.
type Gateway struct {
	cfg       *Config
	log       *slog.Logger
	transport *http.Transport
	reg       *prometheus.Registry
	m         *metrics

	mu        sync.RWMutex
	upstreams map[string]*Upstream // by ID
	// departed: servers that left, by ID, and when. Their series keep
	// counting (a killed server's last failures land after it left) and
	// are deleted once metricsGrace has passed, at the next update.
	departed     map[string]departure
	metricsGrace time.Duration
	local        []*Upstream    // this IDC's
	remote       []*Upstream    // other IDCs'
	synced       atomic.Bool    // a first discovery answer arrived
	spliced      sync.WaitGroup // hijacked blob downloads (Shutdown does not see them)

	replayMax  int64        // replay.maxbytes
	replayHeld atomic.Int64 // request body bytes held for replay now

	front *frontHandlers // redirects and cache (fast.go); nil: proxy everything
	cache *cache         // nil without cache.maxbytes
}

// New returns a Gateway; Watch (or SetUpstreams) gives it servers.
func New(cfg *Config, log *slog.Logger) *Gateway {
	g := &Gateway{
		cfg: cfg, log: log, upstreams: map[string]*Upstream{},
		departed: map[string]departure{}, metricsGrace: DefaultMetricsGrace,
		transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:          1024,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: 5 * time.Minute, // a PUT that finishes a large upload answers late
			DisableCompression:    true,
			TLSClientConfig:       cfg.serverTLS, // servers registered with scheme https
		},
		reg:       prometheus.NewRegistry(),
		replayMax: defaultReplayBytes,
	}
	if cfg.Replay.MaxBytes != nil {
		g.replayMax = *cfg.Replay.MaxBytes
	}
	g.m = newMetrics(g.reg, g)
	if cfg.Cache.MaxBytes > 0 {
		g.cache = newCache(cfg.Cache.MaxBytes, g.m, log)
	}
	if cfg.Redirect != "off" || g.cache != nil {
		if err := g.initFront(); err != nil { // LoadConfig checked the auth section
			panic(err)
		}
	}
	return g
}

// Listen follows the registry's deletions (for the cache) until ctx
// ends; without cache.maxbytes it returns at once.
func (g *Gateway) Listen(ctx context.Context) {
	if g.cache != nil {
		g.cache.listen(ctx, g.cfg.Database.URL)
	}
}

// DefaultMetricsGrace is how long a server that left keeps its metric
// series: long enough for a scrape to see its last counts (a killed
// server's failures are counted after Consul drops it), short enough that
// a fleet replacing its servers does not pile up series.
const DefaultMetricsGrace = 10 * time.Minute

// same: a and b name the same server the same way.
func (a *Upstream) same(b *Upstream) bool {
	return a.Addr == b.Addr && a.Scheme == b.Scheme && a.IDC == b.IDC
}

type departure struct {
	u  *Upstream
	at time.Time
}

// SetUpstreams replaces the set of healthy servers (Watch calls it with
// what Consul says). Servers keep their counters across updates.
func (g *Gateway) SetUpstreams(list []*Upstream) {
	g.mu.Lock()
	defer g.mu.Unlock()
	next := map[string]*Upstream{}
	var local, remote []*Upstream
	for _, u := range list {
		// The same server (same address, scheme and IDC) keeps its entry,
		// with its counters and ejection state; one that changed any of
		// them (a TLS rollout on the same port) is a new entry. One that
		// left within the grace period comes back as it was.
		if old, ok := g.upstreams[u.ID]; ok && old.same(u) {
			u = old
		} else if d, ok := g.departed[u.ID]; ok && d.u.same(u) {
			u = d.u
		}
		next[u.ID] = u
		if u.IDC == g.cfg.IDC {
			local = append(local, u)
		} else {
			remote = append(remote, u)
		}
	}
	now := time.Now()
	for id, old := range g.upstreams {
		if cur, ok := next[id]; !ok || cur != old {
			g.departed[id] = departure{old, now}
		}
	}
	for id, d := range g.departed {
		if cur, ok := next[id]; ok && (cur == d.u || cur.IDC == d.u.IDC) {
			// Back within the grace period, or replaced by an entry of the
			// same ID and IDC, whose series these are: nothing to delete.
			delete(g.departed, id)
		} else if now.Sub(d.at) >= g.metricsGrace {
			g.m.forget(d.u)
			delete(g.departed, id)
		}
	}
	if len(local) != len(g.local) || len(remote) != len(g.remote) {
		g.log.Info("registry servers", "idc", g.cfg.IDC, "local", len(local), "other_idcs", len(remote))
	}
	g.upstreams, g.local, g.remote = next, local, remote
	g.synced.Store(true)
}

// Watch follows Consul's healthy registry servers with blocking queries
// until ctx ends.
func (g *Gateway) Watch(ctx context.Context, client *consul.Client) {
	var index uint64
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		q := (&consul.QueryOptions{WaitIndex: index, WaitTime: 30 * time.Second}).WithContext(ctx)
		entries, meta, err := client.Health().Service(g.cfg.Consul.Service, "", true, q)
		if err != nil {
			if ctx.Err() == nil {
				g.log.Warn("consul: watching registry servers", "err", err)
				g.m.discoveryErrors.Inc()
				select {
				case <-ctx.Done():
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 5*time.Second)
			}
			continue
		}
		backoff = 100 * time.Millisecond
		if meta.LastIndex < index { // Consul's index went backwards: start over
			index = 0
		} else {
			index = meta.LastIndex
		}
		var list []*Upstream
		for _, e := range entries {
			s := e.Service
			addr := s.Address
			if addr == "" {
				addr = e.Node.Address
			}
			scheme := s.Meta["scheme"]
			if scheme == "" {
				scheme = "http"
			}
			list = append(list, &Upstream{ID: s.ID, Addr: net.JoinHostPort(addr, strconv.Itoa(s.Port)), IDC: s.Meta["idc"], Scheme: scheme})
		}
		g.SetUpstreams(list)
	}
}

// pick chooses a server not in tried: two random candidates, the one with
// fewer requests in flight. Ejected servers are used only when every
// candidate is ejected. The bool says whether the server is of another IDC.
func (g *Gateway) pick(tried map[*Upstream]bool) (*Upstream, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	now := time.Now()
	choose := func(pool []*Upstream) *Upstream {
		var live, ejected []*Upstream
		for _, u := range pool {
			switch {
			case tried[u]:
			case u.ejected(now):
				ejected = append(ejected, u)
			default:
				live = append(live, u)
			}
		}
		if len(live) == 0 {
			live = ejected // all ejected: passive ejection may be wrong, try them anyway
		}
		switch len(live) {
		case 0:
			return nil
		case 1:
			return live[0]
		}
		i := rand.IntN(len(live))
		j := rand.IntN(len(live) - 1)
		if j >= i {
			j++
		}
		a, b := live[i], live[j]
		if b.inflight.Load() < a.inflight.Load() {
			return b
		}
		return a
	}
	if u := choose(g.local); u != nil {
		return u, false
	}
	if g.cfg.Failover == "any" {
		if u := choose(g.remote); u != nil {
			return u, true
		}
	}
	return nil, false
}

// Handler serves the gateway: /healthz, /readyz and /metrics of its own,
// everything else proxied.
func (g *Gateway) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		g.mu.RLock()
		n := len(g.local)
		g.mu.RUnlock()
		if !g.synced.Load() || (n == 0 && g.cfg.Failover == "local") {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %d registry servers in IDC %s\n", n, g.cfg.IDC)
			return
		}
		fmt.Fprintf(w, "ok: %d registry servers in IDC %s\n", n, g.cfg.IDC)
	})
	mux.Handle("/metrics", promhttp.HandlerFor(g.reg, promhttp.HandlerOpts{}))
	mux.Handle("/", http.HandlerFunc(g.serve))
	return mux
}

// body tracks whether the client's request body was touched: a request
// whose body was never read can go to another server.
type body struct {
	io.ReadCloser
	read atomic.Int64
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.read.Add(int64(n))
	return n, err
}

// attemptBody is the client's body as one attempt sees it. The transport
// closes it when the attempt fails (which must not close the client's
// body, a retry needs it) and may still be reading from a goroutine: once
// revoked, it reads nothing more, so the retry owns the body alone.
type attemptBody struct {
	mu      sync.Mutex
	in      *body
	revoked bool
}

func (a *attemptBody) Read(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.revoked {
		return 0, errors.New("gateway: attempt abandoned")
	}
	return a.in.Read(p)
}

func (a *attemptBody) Close() error { return nil }

func (a *attemptBody) revoke() {
	a.mu.Lock()
	a.revoked = true
	a.mu.Unlock()
}

// readErr remembers a read failure, to tell a broken server from a
// client that went away during a copy.
type readErr struct {
	r   io.Reader
	err error
}

func (e *readErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// hopHeaders are not forwarded (RFC 9110 §7.6.1).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// idempotent methods may be replayed; maxReplay bounds the bodies kept
// for it (the registry's manifest limit).
var idempotent = map[string]bool{http.MethodGet: true, http.MethodHead: true, http.MethodPut: true, http.MethodDelete: true}

const maxReplay = 4 << 20

// holdReplay reserves n bytes of replay.maxbytes for a request's body.
// When others hold it, the request goes through without a replay copy,
// as a non-idempotent one does (retried elsewhere only if its body was
// never sent), rather than being refused: under a flood of slow bodies
// sent before auth, legitimate pushes keep working, and memory stays
// bounded either way.
func (g *Gateway) holdReplay(n int64) bool {
	for {
		held := g.replayHeld.Load()
		if held+n > g.replayMax {
			g.m.replaySkipped.Inc()
			return false
		}
		if g.replayHeld.CompareAndSwap(held, held+n) {
			return true
		}
	}
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func (g *Gateway) unavailable(w http.ResponseWriter, msg string) {
	errcode.ServeJSON(w, errcode.ErrorCodeUnavailable.WithMessage(msg).WithDetail(map[string]string{"idc": g.cfg.IDC}))
}

func (g *Gateway) proxy(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	in := &body{ReadCloser: r.Body}
	hasBody := r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	// A small body of an idempotent request (a manifest PUT) is read first,
	// so a failed attempt can be replayed on another server even after its
	// body was sent.
	var replay []byte
	if hasBody && idempotent[r.Method] && r.ContentLength > 0 && r.ContentLength <= maxReplay && g.holdReplay(r.ContentLength) {
		defer g.replayHeld.Add(-r.ContentLength)
		b, err := io.ReadAll(io.LimitReader(in, r.ContentLength))
		if err != nil || int64(len(b)) != r.ContentLength {
			errcode.ServeJSON(w, errcode.ErrorCodeUnknown.WithMessage("reading the request body"))
			return
		}
		replay = b
	}
	tried := map[*Upstream]bool{}
	var lastErr error
	for try := 0; try <= *g.cfg.Retries; try++ {
		u, remote := g.pick(tried)
		if u == nil {
			break
		}
		tried[u] = true
		if try > 0 {
			g.m.retries.WithLabelValues(g.cfg.IDC).Inc()
		}
		if remote {
			g.m.failovers.WithLabelValues(u.IDC).Inc()
		}
		out := r.Clone(r.Context())
		out.RequestURI = ""
		out.URL.Scheme, out.URL.Host = u.Scheme, u.Addr
		out.Host = r.Host // the client's view: servers build nothing absolute from it, but logs and auth realms may
		var attempt *attemptBody
		switch {
		case replay != nil:
			out.Body = io.NopCloser(bytes.NewReader(replay))
		case hasBody:
			attempt = &attemptBody{in: in}
			out.Body = attempt
		default:
			out.Body = nil
		}
		for _, h := range hopHeaders {
			out.Header.Del(h)
		}
		out.Header.Set(forwarded.Header, g.cfg.trusted.Chain(r))
		if out.Header.Get(internaltoken.Header) != "" && !internaltoken.Safe(u.Scheme, u.Addr) {
			// The cluster's credential never crosses a network in clear
			// text: a plain-http server elsewhere does not get it.
			out.Header.Del(internaltoken.Header)
			if !u.tokenWarned.Swap(true) {
				g.log.Warn("not forwarding the internal token to a plain-http server off loopback: give the servers http.tls",
					"upstream", u.ID, "addr", u.Addr)
			}
		}
		out.Header.Set("X-Forwarded-Host", r.Host)
		if r.TLS != nil {
			out.Header.Set("X-Forwarded-Proto", "https")
		} else {
			out.Header.Set("X-Forwarded-Proto", "http")
		}
		if replay == nil && (spliceable(r, u) || uploadSpliceable(r, u)) {
			u.inflight.Add(1)
			var err error
			if r.Method == http.MethodGet {
				err = g.splice(w, r, out, u, start)
			} else {
				err = g.spliceUpload(w, r, out, u, start)
			}
			u.inflight.Add(-1)
			if err == nil {
				return
			}
			lastErr = err
			if r.Context().Err() != nil {
				return
			}
			g.failed(u, err)
			continue // nothing of the request was consumed: safe anywhere
		}
		u.inflight.Add(1)
		resp, err := g.transport.RoundTrip(out)
		if err != nil {
			if attempt != nil {
				attempt.revoke()
			}
			u.inflight.Add(-1)
			lastErr = err
			if r.Context().Err() != nil {
				return // the client went away: not the server's failure
			}
			g.failed(u, err)
			if replay != nil || in.read.Load() == 0 { // replayable, or nothing of the body left the gateway
				continue
			}
			g.countRequest(u, "502")
			errcode.ServeJSON(w, errcode.ErrorCodeUnavailable.WithMessage(
				"the registry server failed after the request body was sent; retry the request"))
			return
		}
		g.succeeded(u)
		g.respond(w, r, u, resp, in, start)
		u.inflight.Add(-1)
		return
	}
	if lastErr != nil {
		g.m.noUpstream.WithLabelValues(g.cfg.IDC).Inc()
		g.unavailable(w, fmt.Sprintf("no registry server in IDC %s answered: %v", g.cfg.IDC, lastErr))
		return
	}
	g.m.noUpstream.WithLabelValues(g.cfg.IDC).Inc()
	g.unavailable(w, "no registry server is available in IDC "+g.cfg.IDC)
}

// clientHeader is a server's response header as the client gets it:
// without hop-by-hop headers, and with an absolute Location naming the
// server made relative (it would take the client off the gateway).
func clientHeader(h http.Header, u *Upstream) http.Header {
	out := h.Clone()
	for _, k := range hopHeaders {
		out.Del(k)
	}
	if loc := out.Get("Location"); loc != "" {
		if lu, err := url.Parse(loc); err == nil && lu.Host == u.Addr {
			out.Set("Location", lu.RequestURI())
		}
	}
	return out
}

// respond streams the server's answer to the client.
func (g *Gateway) respond(w http.ResponseWriter, r *http.Request, u *Upstream, resp *http.Response, in *body, start time.Time) {
	defer resp.Body.Close()
	hdr := w.Header()
	for k, vs := range clientHeader(resp.Header, u) {
		hdr[k] = vs
	}
	if user, ok := r.Context().Value(signUploadKey{}).(string); ok && resp.StatusCode == http.StatusAccepted {
		g.signUploadLocation(hdr, u, user)
	}
	w.WriteHeader(resp.StatusCode)
	buf := copyBuffers.Get().(*[]byte)
	src := &readErr{r: resp.Body}
	n, err := io.CopyBuffer(w, src, *buf)
	copyBuffers.Put(buf)
	code := strconv.Itoa(resp.StatusCode)
	if err != nil && r.Context().Err() == nil {
		g.log.Warn("response cut short", "upstream", u.ID, "path", r.URL.Path, "after_bytes", n, "err", err)
		if src.err != nil { // the server's side broke, not the client's
			g.failed(u, err)
		}
		code = "cut"
	}
	g.countRequest(u, code)
	g.countBytes(u, "in", in.read.Load())
	g.countBytes(u, "out", n)
	if r.Method == http.MethodGet && isBlobGet(r) {
		g.m.blobBytes.Add(float64(n))
	}
	g.m.duration.WithLabelValues(u.IDC).Observe(time.Since(start).Seconds())
	if g.log.Enabled(r.Context(), slog.LevelDebug) {
		g.log.Debug("request", "method", r.Method, "path", r.URL.Path, "upstream", u.ID, "status", resp.StatusCode,
			"bytes_in", in.read.Load(), "bytes_out", n, "duration", time.Since(start))
	}
}

func (g *Gateway) failed(u *Upstream, err error) {
	ejected := false
	if n := u.failures.Add(1); g.cfg.Eject.Failures > 0 && int(n) >= g.cfg.Eject.Failures {
		if u.ejectedUntil.Swap(time.Now().Add(g.cfg.Eject.Duration).UnixNano()) < time.Now().UnixNano() {
			g.log.Warn("ejecting registry server", "upstream", u.ID, "addr", u.Addr, "for", g.cfg.Eject.Duration, "err", err)
			ejected = true
		}
	}
	g.countError(u, ejected)
}

func (g *Gateway) succeeded(u *Upstream) {
	u.failures.Store(0)
}

// Upstreams lists the servers known now (for status output and tests).
func (g *Gateway) Upstreams() []*Upstream {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return append(append([]*Upstream(nil), g.local...), g.remote...)
}

// Serve listens on http.addr (HTTPS with http.tls) until ctx ends, then
// drains in-flight requests for up to http.draintimeout.
func (g *Gateway) Serve(ctx context.Context) error {
	var certs *tlsfiles.Reloader
	if g.cfg.HTTP.TLS.Enabled() {
		var err error
		if certs, err = tlsfiles.Load(g.cfg.HTTP.TLS, "http.tls", "gaia_gateway", g.log); err != nil {
			return err
		}
		g.reg.MustRegister(certs)
	}
	ln, err := net.Listen("tcp", g.cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("http.addr: %w", err)
	}
	srv := g.cfg.HTTP.Timeouts.Server(g.Handler())
	srv.ErrorLog = slog.NewLogLogger(g.log.Handler(), slog.LevelWarn)
	scheme, errc := tlsfiles.Serve(srv, ln, certs)
	g.log.Info("gateway serving", "addr", ln.Addr().String(), "scheme", scheme, "idc", g.cfg.IDC, "failover", g.cfg.Failover)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), g.cfg.HTTP.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	} else if err != nil {
		srv.Close()
		return fmt.Errorf("shutdown: requests still running after %s", g.cfg.HTTP.DrainTimeout)
	}
	done := make(chan struct{})
	go func() { g.spliced.Wait(); close(done) }()
	select {
	case <-done:
	case <-sctx.Done():
		return fmt.Errorf("shutdown: blob downloads still running after %s", g.cfg.HTTP.DrainTimeout)
	}
	g.log.Info("gateway stopped")
	return nil
}
