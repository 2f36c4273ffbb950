package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/auth"
	"github.com/gaia-registry/gaia/registry/blobsign"
	"github.com/gaia-registry/gaia/registry/grammar"
	"github.com/gaia-registry/gaia/registry/internaltoken"
)

// What the gateway answers itself, after checking the caller's pull right
// with the servers' auth configuration (auth.Wrap):
//
//   - redirect: blobs: a blob GET gets a 307 to a URL on a healthy server
//     of the IDC, signed for that method, repository, digest and caller
//     until signing.expiry (registry/blobsign). The bytes then go from the
//     server to the client. The server checks the signature instead of
//     credentials, and the client's Authorization header is not part of
//     the URL.
//   - cache.maxbytes > 0: manifests by digest (GET and HEAD) and blob
//     HEADs by digest come from the cache (cache.go); concurrent misses of
//     one key share one upstream request (registry/coalesce).
//
// Everything else is proxied as before (proxy).

// frontHandlers are built once: the auth middleware around each.
type frontHandlers struct {
	redirect, manifest, blobHead, upload http.Handler
}

func (g *Gateway) initFront() error {
	var authn *auth.Authenticator
	var opts []auth.Option
	if b := g.cfg.Auth.Builtin; b != nil {
		// The servers' access model, read from their database (the pool
		// connects on first use).
		pool, err := pgxpool.New(context.Background(), g.cfg.Database.URL)
		if err != nil {
			return fmt.Errorf("database.url: %w", err)
		}
		store, err := b.NewStore(pool, g.reg, 0) // LDAP users' groups too, as the servers see them
		if err != nil {
			return err
		}
		opts = append(opts, auth.WithStore(store))
	}
	var err error
	if authn, err = auth.New(g.cfg.Auth.Config, opts...); err != nil {
		return err
	}
	g.front = &frontHandlers{
		redirect: authn.Wrap(http.HandlerFunc(g.redirectBlob)),
		manifest: authn.Wrap(http.HandlerFunc(g.cachedManifest)),
		blobHead: authn.Wrap(http.HandlerFunc(g.cachedBlobHead)),
		upload:   authn.Wrap(http.HandlerFunc(g.redirectUpload)),
	}
	return nil
}

// serve routes a request to the gateway's own answers or to proxy.
func (g *Gateway) serve(w http.ResponseWriter, r *http.Request) {
	if g.front == nil || r.Header.Get(internaltoken.Header) != "" || r.Header.Get(internaltoken.NoFillHeader) != "" {
		// A peer IDC's fill or replication read (the internal token, or
		// a robot's token and NoFillHeader) goes to a server: the servers
		// check the token, and a redirect would point another IDC at a
		// server inside this one.
		g.proxy(w, r)
		return
	}
	rt := grammar.Parse(r.URL.Path)
	byDigest := func() bool { _, err := digest.Parse(rt.Ref); return err == nil }
	switch {
	case g.cfg.Redirect == "blobs+uploads" && rt.Kind == "upload" && rt.Ref == "" && r.Method == http.MethodPost:
		g.front.upload.ServeHTTP(w, r)
	case g.cfg.Redirect != "off" && rt.Kind == "blob" && r.Method == http.MethodGet && byDigest() && !blobsign.Signed(r.URL.Query()):
		g.front.redirect.ServeHTTP(w, r)
	case g.cache != nil && rt.Kind == "manifest" && (r.Method == http.MethodGet || r.Method == http.MethodHead) && byDigest():
		g.front.manifest.ServeHTTP(w, r)
	case g.cache != nil && rt.Kind == "blob" && r.Method == http.MethodHead && byDigest():
		g.front.blobHead.ServeHTTP(w, r)
	case g.cache != nil && r.Method == http.MethodDelete && (rt.Kind == "manifest" || rt.Kind == "blob") && byDigest():
		// Dropped here at once as well as when the notice comes back.
		g.proxy(w, r)
		if rt.Kind == "manifest" {
			g.cache.drop(manifestKey(rt.Name, rt.Ref))
		} else {
			g.cache.drop(blobKey(rt.Name, rt.Ref))
		}
	default:
		g.proxy(w, r)
	}
}

// redirectBlob answers a blob GET with a signed URL on a server.
func (g *Gateway) redirectBlob(w http.ResponseWriter, r *http.Request) {
	u, _ := g.pick(nil)
	if u == nil {
		g.m.noUpstream.WithLabelValues(g.cfg.IDC).Inc()
		g.unavailable(w, "no registry server is available in IDC "+g.cfg.IDC)
		return
	}
	rt := grammar.Parse(r.URL.Path)
	user := auth.UserFromContext(r.Context())
	q := blobsign.Sign(g.cfg.Signing.Keys, http.MethodGet, rt.Name, rt.Ref, time.Now().Add(g.cfg.Signing.Expiry), user)
	loc := u.Scheme + "://" + u.Addr + r.URL.EscapedPath() + "?" + q.Encode()
	h := w.Header()
	h.Set("Location", loc)
	h.Set("Docker-Distribution-API-Version", "registry/2.0")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusTemporaryRedirect)
	g.m.redirects.WithLabelValues(u.IDC).Inc()
	if g.log.Enabled(r.Context(), slog.LevelDebug) {
		g.log.Debug("blob redirect", "repository", rt.Name, "digest", rt.Ref, "upstream", u.ID, "user", user)
	}
}

// signUploadKey marks a POST that starts an upload (redirect:
// blobs+uploads): its 202's Location is made a signed URL on the server
// that answered (respond), so the session's PATCHes and PUT go there
// directly. The value is the authorized user.
type signUploadKey struct{}

func (g *Gateway) redirectUpload(w http.ResponseWriter, r *http.Request) {
	g.proxy(w, r.WithContext(context.WithValue(r.Context(), signUploadKey{}, auth.UserFromContext(r.Context()))))
}

// signUploadLocation turns a relative upload Location into a signed one
// on u.
func (g *Gateway) signUploadLocation(hdr http.Header, u *Upstream, user string) {
	loc, err := url.Parse(hdr.Get("Location"))
	if err != nil || loc.Host != "" {
		return
	}
	rt := grammar.Parse(loc.Path)
	if rt.Kind != "upload" || rt.Ref == "" {
		return
	}
	q := loc.Query()
	blobsign.Add(q, blobsign.Sign(g.cfg.Signing.Keys, blobsign.MethodUpload, rt.Name, rt.Ref, time.Now().Add(g.cfg.Signing.Expiry), user))
	loc.Scheme, loc.Host, loc.RawQuery = u.Scheme, u.Addr, q.Encode()
	hdr.Set("Location", loc.String())
	g.m.redirects.WithLabelValues(u.IDC).Inc()
}

// accepts reports whether r's Accept headers allow mediaType (as the
// registry's API handler decides).
func accepts(r *http.Request, mediaType string) bool {
	values := r.Header.Values("Accept")
	if len(values) == 0 {
		return true
	}
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			t, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			if t == mediaType || t == "*/*" || t == "application/*" {
				return true
			}
		}
	}
	return false
}

func (g *Gateway) cachedManifest(w http.ResponseWriter, r *http.Request) {
	rt := grammar.Parse(r.URL.Path)
	g.cached(w, r, "manifest", manifestKey(rt.Name, rt.Ref), http.MethodGet)
}

func (g *Gateway) cachedBlobHead(w http.ResponseWriter, r *http.Request) {
	rt := grammar.Parse(r.URL.Path)
	g.cached(w, r, "blob", blobKey(rt.Name, rt.Ref), http.MethodHead)
}

// cached answers r from the cache, or fills it with one upstream request
// (with fetchMethod) shared by every request for key that arrives
// meanwhile. Answers the cache cannot give (another status, a media type
// r's Accept does not list, a failed fetch) go through proxy.
func (g *Gateway) cached(w http.ResponseWriter, r *http.Request, kind, key, fetchMethod string) {
	// Accept matters for manifests only (servers ignore it for blobs).
	acceptable := func(e *entry) bool { return kind == "blob" || accepts(r, e.mediaType) }
	if e := g.cache.get(key); e != nil && acceptable(e) {
		g.m.cacheRequests.WithLabelValues(kind, "hit").Inc()
		g.write(w, r, e, "hit")
		return
	}
	g.m.cacheRequests.WithLabelValues(kind, "miss").Inc()
	e, err := g.cache.group.Do(r.Context(), key, func(ctx context.Context) (*entry, error) {
		if e := g.cache.get(key); e != nil {
			return e, nil
		}
		epoch, live := g.cache.begin()
		e, err := g.fetch(ctx, r, fetchMethod)
		if err == nil && e.status == http.StatusOK && live {
			e.key = key
			g.cache.put(e, epoch)
		}
		return e, err
	})
	if err != nil || (e.status != http.StatusOK && e.status != http.StatusNotFound) || (e.status == http.StatusOK && !acceptable(e)) {
		if r.Context().Err() == nil {
			g.proxy(w, r)
		}
		return
	}
	g.write(w, r, e, "miss")
}

func (g *Gateway) write(w http.ResponseWriter, r *http.Request, e *entry, how string) {
	h := w.Header()
	for k, vs := range e.header {
		h[k] = vs
	}
	h.Set("X-Gaia-Cache", how)
	w.WriteHeader(e.status)
	if r.Method != http.MethodHead && e.body != nil {
		w.Write(e.body)
	}
}

// errTooLarge: an answer the cache does not take (proxied instead).
var errTooLarge = errors.New("answer too large for the cache")

// fetch makes r's request (as method, with r's credentials and Accept
// "*/*" so the answer serves any caller) on a server, retrying others on
// connection failures, and reads the whole answer.
func (g *Gateway) fetch(ctx context.Context, r *http.Request, method string) (*entry, error) {
	tried := map[*Upstream]bool{}
	var lastErr error = errors.New("no registry server available")
	for try := 0; try <= *g.cfg.Retries; try++ {
		u, _ := g.pick(tried)
		if u == nil {
			break
		}
		tried[u] = true
		out, err := http.NewRequestWithContext(ctx, method, u.Scheme+"://"+u.Addr+r.URL.EscapedPath(), nil)
		if err != nil {
			return nil, err
		}
		out.Host = r.Host
		if a := r.Header.Get("Authorization"); a != "" {
			out.Header.Set("Authorization", a)
		}
		out.Header.Set("Accept", "*/*")
		out.Header.Set("X-Forwarded-For", g.cfg.trusted.Chain(r))
		out.Header.Set("X-Forwarded-Host", r.Host)
		u.inflight.Add(1)
		resp, err := g.transport.RoundTrip(out)
		if err != nil {
			u.inflight.Add(-1)
			lastErr = err
			if ctx.Err() != nil {
				return nil, err
			}
			g.failed(u, err)
			continue
		}
		g.succeeded(u)
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxReplay+1))
		resp.Body.Close()
		u.inflight.Add(-1)
		g.countRequest(u, strconv.Itoa(resp.StatusCode))
		g.countBytes(u, "out", int64(len(body)))
		if err != nil {
			g.failed(u, err)
			return nil, err
		}
		if len(body) > maxReplay {
			return nil, errTooLarge
		}
		e := &entry{status: resp.StatusCode, header: clientHeader(resp.Header, u), mediaType: resp.Header.Get("Content-Type")}
		e.header.Del("Date")
		if method == http.MethodGet {
			e.body = body
		}
		return e, nil
	}
	return nil, fmt.Errorf("fetching for the cache: %w", lastErr)
}
