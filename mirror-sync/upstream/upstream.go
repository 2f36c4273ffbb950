// Package upstream is the mirror worker's client for the registries it
// mirrors from: Docker Hub, a vendor's registry, another Gaia. It speaks
// their auth (anonymous, Basic, and the Docker token flow: a 401 with
// `WWW-Authenticate: Bearer realm=...,service=...,scope=...` sends it to
// the realm for a token, cached per scope), stays polite (a per-upstream
// limit on requests in flight; 429 and 503 answers are retried after
// their Retry-After, or with exponential back-off), bounds every request
// with timeouts, and verifies every digest it receives.
package upstream

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/watchdog"
)

// ManifestTypes are the manifest media types asked for.
var ManifestTypes = []string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

// Options configure a Client.
type Options struct {
	URL                string        // https://registry-1.docker.io
	Username, Password string        // empty: anonymous
	Concurrency        int           // requests in flight (default 4)
	MaxRetries         int           // retries of 429/503/transport errors (default 5)
	MaxWait            time.Duration // longest single wait (default 60s; a longer Retry-After fails the request)
	Timeout            time.Duration // to response headers (default 30s)
	// IdleTimeout ends a transfer that makes no progress for this long:
	// a response body that stops arriving, or a streamed request body
	// the server stops taking (default 60s).
	IdleTimeout time.Duration
	HTTP        *http.Client
	TLS         *tls.Config // the default client's (e.g. a private CA of the Gaia gateway); nil: the system's roots
	Header      http.Header // sent with every request
}

// Client talks to one upstream registry.
type Client struct {
	o   Options
	sem chan struct{}

	mu     sync.Mutex
	tokens map[string]string // scope → bearer token
	basic  bool              // the upstream asked for Basic auth

	// Requests counts requests sent (retries included); Throttled counts
	// 429/503 answers waited out.
	Requests, Throttled atomic.Int64
}

// New returns a Client.
func New(o Options) *Client {
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = 5
	}
	if o.MaxWait == 0 {
		o.MaxWait = time.Minute
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = time.Minute
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ResponseHeaderTimeout: o.Timeout,
			TLSHandshakeTimeout:   10 * time.Second,
			TLSClientConfig:       o.TLS,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   o.Concurrency,
			// Blobs stream through: large buffers save system calls.
			WriteBufferSize: 256 << 10,
			ReadBufferSize:  256 << 10,
		}}
	}
	o.URL = strings.TrimRight(o.URL, "/")
	return &Client{o: o, sem: make(chan struct{}, o.Concurrency), tokens: map[string]string{}}
}

// StatusError is an unexpected answer.
type StatusError struct {
	Method, URL string
	Status      int
	Body        string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: %d %s", e.Method, e.URL, e.Status, strings.TrimSpace(e.Body))
}

// IsNotFound reports a 404 from the upstream.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Status == http.StatusNotFound
}

// do sends a body-less request for path, authenticating for scope
// ("repository:library/nginx:pull"), and returns a 2xx response (the
// caller closes its body) or an error. The concurrency slot is held until
// the body is closed.
func (c *Client) do(ctx context.Context, method, path, scope string, header http.Header) (*http.Response, error) {
	return c.send(ctx, method, path, scope, header, nil)
}

// body is a request body: bytes, which a retry sends again, or a stream
// of a known length, sent once (a request that would need a retry fails;
// the caller starts over).
type body struct {
	bytes  []byte
	stream io.Reader
	size   int64
}

func (b *body) reader() (io.ReadCloser, int64) {
	if b.stream != nil {
		return io.NopCloser(b.stream), b.size
	}
	return io.NopCloser(strings.NewReader(string(b.bytes))), int64(len(b.bytes))
}

func (c *Client) send(ctx context.Context, method, path, scope string, header http.Header, b *body) (*http.Response, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	release := sync.OnceFunc(func() { <-c.sem })
	authRetried := false
	backoff := 500 * time.Millisecond
	var lastErr error
	for attempt := 0; ; attempt++ {
		target := path
		if !strings.HasPrefix(target, "http://") && !strings.HasPrefix(target, "https://") {
			target = c.o.URL + path
		}
		// The watchdog cancels a transfer that stalls: armed while a
		// streamed request body is sent and while the response body is
		// read (waiting for headers is Timeout's).
		wd, rctx := watchdog.New(ctx, c.o.IdleTimeout, fmt.Errorf("%s %s: no progress for %s", method, path, c.o.IdleTimeout))
		done := wd.Done
		req, err := http.NewRequestWithContext(rctx, method, target, nil)
		if err != nil {
			done()
			release()
			return nil, err
		}
		if b != nil {
			if b.stream != nil && attempt > 0 {
				done()
				release()
				return nil, fmt.Errorf("%s %s: a streamed body cannot be sent twice (last answer: %w)", method, path, lastErr)
			}
			req.Body, req.ContentLength = b.reader()
			if b.stream != nil {
				req.Body = wd.RequestBody(req.Body)
				wd.Arm()
			}
		}
		for k, vs := range c.o.Header {
			req.Header[k] = vs
		}
		for k, vs := range header {
			req.Header[k] = vs
		}
		c.authorize(req, scope)
		c.Requests.Add(1)
		resp, err := c.o.HTTP.Do(req)
		wd.Stop()
		err = wd.Err(err)
		lastErr = err
		if err == nil {
			lastErr = fmt.Errorf("%s", resp.Status)
			if resp.StatusCode < 200 || resp.StatusCode >= 300 {
				wd.Arm() // reading an error body is bounded too
			}
		}
		var wait time.Duration
		switch {
		case err != nil:
			done()
			if ctx.Err() != nil || attempt >= c.o.MaxRetries {
				release()
				return nil, err
			}
			wait = backoff
		case resp.StatusCode == http.StatusUnauthorized && !authRetried:
			challenge := resp.Header.Get("WWW-Authenticate")
			drain(resp)
			done()
			authRetried = true
			if err := c.login(ctx, challenge, scope); err != nil {
				release()
				return nil, fmt.Errorf("%s %s: authenticating: %w", method, path, err)
			}
			continue
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable:
			wait = retryAfter(resp.Header.Get("Retry-After"), backoff)
			drain(resp)
			c.Throttled.Add(1)
			if attempt >= c.o.MaxRetries || wait > c.o.MaxWait {
				done()
				release()
				return nil, &StatusError{method, c.o.URL + path, resp.StatusCode, fmt.Sprintf("throttled; Retry-After %s", wait)}
			}
		case resp.StatusCode >= 300:
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			done()
			release()
			return nil, &StatusError{method, c.o.URL + path, resp.StatusCode, string(b)}
		default:
			resp.Body = &releasingBody{ReadCloser: wd.Body(resp.Body), release: func() { done(); release() }}
			return resp, nil
		}
		done()
		backoff = min(2*backoff, 30*time.Second)
		select {
		case <-ctx.Done():
			release()
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

type releasingBody struct {
	io.ReadCloser
	release func()
}

func (b *releasingBody) Close() error {
	err := b.ReadCloser.Close()
	b.release()
	return err
}

func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// retryAfter reads seconds or an HTTP date; def when absent.
func retryAfter(h string, def time.Duration) time.Duration {
	if h == "" {
		return def
	}
	if n, err := strconv.Atoi(strings.TrimSpace(h)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(time.Until(t), 0)
	}
	return def
}

func (c *Client) authorize(req *http.Request, scope string) {
	c.mu.Lock()
	tok, basic := c.tokens[scope], c.basic
	c.mu.Unlock()
	switch {
	case tok != "":
		req.Header.Set("Authorization", "Bearer "+tok)
	case basic && c.o.Username != "":
		req.SetBasicAuth(c.o.Username, c.o.Password)
	}
}

// login answers a challenge: Basic (remember to send credentials) or
// Bearer (fetch a token for scope from the realm).
func (c *Client) login(ctx context.Context, challenge, scope string) error {
	scheme, params := parseChallenge(challenge)
	switch strings.ToLower(scheme) {
	case "basic":
		if c.o.Username == "" {
			return errors.New("the upstream wants Basic credentials and the rule has none")
		}
		c.mu.Lock()
		c.basic = true
		c.mu.Unlock()
		return nil
	case "bearer":
	default:
		return fmt.Errorf("unsupported challenge %q", challenge)
	}
	realm := params["realm"]
	u, err := url.Parse(realm)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("token realm %q", realm)
	}
	if u.Scheme == "http" && strings.HasPrefix(strings.ToLower(c.o.URL), "https:") && c.o.Username != "" {
		return fmt.Errorf("token realm %q is plain http for an https upstream: the credentials are not sent there", realm)
	}
	q := u.Query()
	if s := params["service"]; s != "" {
		q.Set("service", s)
	}
	if scope != "" {
		for _, s := range strings.Fields(scope) { // "a b": one token for both, as a scope parameter each
			q.Add("scope", s)
		}
	} else if s := params["scope"]; s != "" {
		q.Set("scope", s)
	}
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	if c.o.Username != "" {
		req.SetBasicAuth(c.o.Username, c.o.Password)
	}
	c.Requests.Add(1)
	resp, err := c.o.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("token endpoint: %s %s", resp.Status, strings.TrimSpace(string(b)))
	}
	var t struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&t); err != nil {
		return fmt.Errorf("token endpoint: %w", err)
	}
	if t.Token == "" {
		t.Token = t.AccessToken
	}
	if t.Token == "" {
		return errors.New("token endpoint returned no token")
	}
	c.mu.Lock()
	if len(c.tokens) >= maxTokens {
		clear(c.tokens) // a long-lived client of many repositories (a server's fills): start over
	}
	c.tokens[scope] = t.Token
	c.mu.Unlock()
	return nil
}

// maxTokens bounds the tokens a Client keeps (one per scope).
const maxTokens = 4096

// parseChallenge splits `Bearer realm="...",service="...",scope="..."`.
func parseChallenge(h string) (string, map[string]string) {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	params := map[string]string{}
	for rest != "" {
		rest = strings.TrimLeft(rest, ", ")
		k, v, ok := strings.Cut(rest, "=")
		if !ok {
			break
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if strings.HasPrefix(v, `"`) {
			end := strings.Index(v[1:], `"`)
			if end < 0 {
				params[k] = v[1:]
				break
			}
			params[k], rest = v[1:1+end], v[2+end:]
		} else {
			val, after, _ := strings.Cut(v, ",")
			params[k], rest = strings.TrimSpace(val), after
		}
	}
	return scheme, params
}

func pullScope(repo string) string { return "repository:" + repo + ":pull" }

// Get sends a GET of path (under the upstream's URL) with header added,
// authenticated for pull on repo, and returns its 2xx response (anything
// else is a *StatusError). The caller closes the body, which is cut if it
// stalls for IdleTimeout.
func (c *Client) Get(ctx context.Context, repo, path string, header http.Header) (*http.Response, error) {
	return c.do(ctx, http.MethodGet, path, pullScope(repo), header)
}

// Tags lists a repository's tags, following Link pages.
func (c *Client) Tags(ctx context.Context, repo string) ([]string, error) {
	var all []string
	path := "/v2/" + repo + "/tags/list?n=1000"
	for path != "" {
		resp, err := c.do(ctx, http.MethodGet, path, pullScope(repo), nil)
		if err != nil {
			return nil, err
		}
		var page struct{ Tags []string }
		err = json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&page)
		link := resp.Header.Get("Link")
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("tags of %s: %w", repo, err)
		}
		all = append(all, page.Tags...)
		path = nextLink(link)
	}
	return all, nil
}

// nextLink reads `</v2/...?last=x&n=1000>; rel="next"`.
func nextLink(h string) string {
	if h == "" || !strings.Contains(h, `rel="next"`) {
		return ""
	}
	start, end := strings.Index(h, "<"), strings.Index(h, ">")
	if start < 0 || end < start {
		return ""
	}
	u, err := url.Parse(h[start+1 : end])
	if err != nil {
		return ""
	}
	return u.RequestURI()
}

// Manifest fetches a manifest by tag or digest and returns its exact
// bytes, media type and digest. By digest, the bytes must hash to it; by
// tag, they must match the Docker-Content-Digest the upstream sent, if
// any.
func (c *Client) Manifest(ctx context.Context, repo, ref string) ([]byte, string, digest.Digest, error) {
	hdr := http.Header{"Accept": {strings.Join(ManifestTypes, ", ")}}
	resp, err := c.do(ctx, http.MethodGet, "/v2/"+repo+"/manifests/"+ref, pullScope(repo), hdr)
	if err != nil {
		return nil, "", "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20+1))
	if err != nil {
		return nil, "", "", err
	}
	if len(body) > 4<<20 {
		return nil, "", "", fmt.Errorf("manifest %s:%s is larger than 4 MiB", repo, ref)
	}
	var d digest.Digest
	if want, err := digest.Parse(ref); err == nil {
		if d = want.Algorithm().FromBytes(body); d != want {
			return nil, "", "", fmt.Errorf("manifest %s@%s: the upstream sent content hashing to %s", repo, want, d)
		}
	} else {
		d = digest.FromBytes(body)
		if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
			if hd, err := digest.Parse(h); err == nil && hd.Algorithm() == digest.SHA256 && hd != d {
				return nil, "", "", fmt.Errorf("manifest %s:%s: content hashes to %s, the upstream says %s", repo, ref, d, hd)
			}
		}
	}
	mt, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
	return body, strings.TrimSpace(mt), d, nil
}

// Blob opens a blob. The reader fails at its end (instead of io.EOF) if
// the bytes do not match d or size, so a torn or corrupt transfer can
// never be stored as the blob.
func (c *Client) Blob(ctx context.Context, repo string, d digest.Digest, size int64) (io.ReadCloser, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v2/"+repo+"/blobs/"+d.String(), pullScope(repo), nil)
	if err != nil {
		return nil, err
	}
	return &verifying{rc: resp.Body, v: d.Verifier(), d: d, want: size}, nil
}

type verifying struct {
	rc   io.ReadCloser
	v    digest.Verifier
	d    digest.Digest
	want int64
	n    int64
}

func (r *verifying) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.v.Write(p[:n])
	r.n += int64(n)
	if err == io.EOF {
		switch {
		case r.want >= 0 && r.n != r.want:
			return n, fmt.Errorf("blob %s: got %d bytes, want %d", r.d, r.n, r.want)
		case !r.v.Verified():
			return n, fmt.Errorf("blob %s: content does not match its digest", r.d)
		}
	}
	return n, err
}

func (r *verifying) Close() error { return r.rc.Close() }
