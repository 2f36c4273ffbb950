package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

const (
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"

	// smallTimeout bounds every request that is not a blob transfer or a
	// listing walk.
	smallTimeout = 2 * time.Minute
)

// target is one registry under test.
type target struct {
	name   string
	base   *url.URL // scheme://host[:port], no path
	client *http.Client
}

func newTarget(name, raw string, maxConns int) (*target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("target %s: want http(s)://host:port, got %q", name, raw)
	}
	u.Path, u.RawQuery, u.Fragment = "", "", ""
	tr := &http.Transport{
		Proxy: nil, // never through a proxy: loopback benchmark
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:        maxConns * 2,
		MaxIdleConnsPerHost: maxConns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ReadBufferSize:      256 << 10,
		WriteBufferSize:     256 << 10,
		ForceAttemptHTTP2:   false,
	}
	return &target{name: name, base: u, client: &http.Client{Transport: tr}}, nil
}

// httpError is a response with an unexpected status.
type httpError struct {
	target, method, url string
	status              int
	want                []int
	body                string
}

func (e *httpError) Error() string {
	return fmt.Sprintf("[%s] %s %s: status %d, want %v; body: %s",
		e.target, e.method, e.url, e.status, e.want, e.body)
}

// url returns the absolute URL of an API path such as "/v2/".
func (t *target) url(path string) string {
	return t.base.String() + path
}

// resolve turns a Location header (absolute or relative) into an absolute URL.
func (t *target) resolve(loc string) (*url.URL, error) {
	if loc == "" {
		return nil, fmt.Errorf("[%s] response without a Location header", t.name)
	}
	l, err := url.Parse(loc)
	if err != nil {
		return nil, fmt.Errorf("[%s] bad Location %q: %w", t.name, loc, err)
	}
	return t.base.ResolveReference(l), nil
}

// do sends one request and checks the status against want. On success the
// caller owns resp.Body; on any error the body is already closed.
func (t *target) do(ctx context.Context, method, rawURL string, hdr http.Header, body io.Reader, size int64, want ...int) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, rawURL, body)
	if err != nil {
		return nil, fmt.Errorf("[%s] %s %s: %w", t.name, method, rawURL, err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.ContentLength = size
		if size == 0 {
			req.Body = http.NoBody
		}
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("[%s] %s %s: %w", t.name, method, rawURL, err)
	}
	if !slices.Contains(want, resp.StatusCode) {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		resp.Body.Close()
		return nil, &httpError{target: t.name, method: method, url: rawURL, status: resp.StatusCode, want: want, body: strings.TrimSpace(string(b))}
	}
	return resp, nil
}

// drain reads and closes a response body so the connection is reused.
func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
}

// checkDigestHeader verifies Docker-Content-Digest when the server sends it.
func (t *target) checkDigestHeader(resp *http.Response, want digest.Digest, what string) error {
	got := resp.Header.Get("Docker-Content-Digest")
	if got != "" && got != want.String() {
		return fmt.Errorf("[%s] %s: Docker-Content-Digest %s, want %s", t.name, what, got, want)
	}
	return nil
}

// ping checks that GET /v2/ answers 200.
func (t *target) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, smallTimeout)
	defer cancel()
	resp, err := t.do(ctx, "GET", t.url("/v2/"), nil, nil, 0, 200)
	if err != nil {
		return err
	}
	drain(resp)
	return nil
}

// startUpload opens an upload session: POST /v2/<repo>/blobs/uploads/ (202).
func (t *target) startUpload(ctx context.Context, repo string) (*url.URL, error) {
	resp, err := t.do(ctx, "POST", t.url("/v2/"+repo+"/blobs/uploads/"), nil, bytes.NewReader(nil), 0, 202)
	if err != nil {
		return nil, err
	}
	drain(resp)
	return t.resolve(resp.Header.Get("Location"))
}

// finishUpload closes an upload session: PUT <location>?digest=... with an
// optional final body (201).
func (t *target) finishUpload(ctx context.Context, loc *url.URL, d digest.Digest, body []byte) error {
	u := *loc
	q := u.Query()
	q.Set("digest", d.String())
	u.RawQuery = q.Encode()
	hdr := http.Header{"Content-Type": {"application/octet-stream"}}
	resp, err := t.do(ctx, "PUT", u.String(), hdr, bytes.NewReader(body), int64(len(body)), 201)
	if err != nil {
		return err
	}
	drain(resp)
	return t.checkDigestHeader(resp, d, "blob PUT")
}

// pushSmallBlob uploads an in-memory blob monolithically (POST + PUT),
// skipping it when HEAD says it exists.
func (t *target) pushSmallBlob(ctx context.Context, repo string, b []byte) (digest.Digest, error) {
	ctx, cancel := context.WithTimeout(ctx, smallTimeout)
	defer cancel()
	d := digest.FromBytes(b)
	resp, err := t.do(ctx, "HEAD", t.url("/v2/"+repo+"/blobs/"+d.String()), nil, nil, 0, 200, 404)
	if err != nil {
		return "", err
	}
	drain(resp)
	if resp.StatusCode == 200 {
		return d, nil
	}
	loc, err := t.startUpload(ctx, repo)
	if err != nil {
		return "", err
	}
	return d, t.finishUpload(ctx, loc, d, b)
}

// mountBlob mounts d from repository from into repo (201). A registry may
// answer 202 instead (mount declined, upload session opened); then the
// blob is uploaded from content and fellBack is true.
func (t *target) mountBlob(ctx context.Context, repo, from string, d digest.Digest, content []byte) (fellBack bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, smallTimeout)
	defer cancel()
	q := url.Values{"mount": {d.String()}, "from": {from}}
	resp, err := t.do(ctx, "POST", t.url("/v2/"+repo+"/blobs/uploads/?"+q.Encode()), nil, bytes.NewReader(nil), 0, 201, 202)
	if err != nil {
		return false, err
	}
	drain(resp)
	if resp.StatusCode == 201 {
		return false, t.checkDigestHeader(resp, d, "blob mount")
	}
	loc, err := t.resolve(resp.Header.Get("Location"))
	if err != nil {
		return true, err
	}
	return true, t.finishUpload(ctx, loc, d, content)
}

// putManifest PUTs an OCI image manifest under ref (201).
func (t *target) putManifest(ctx context.Context, repo, ref string, m []byte) error {
	ctx, cancel := context.WithTimeout(ctx, smallTimeout)
	defer cancel()
	hdr := http.Header{"Content-Type": {mediaTypeManifest}}
	resp, err := t.do(ctx, "PUT", t.url("/v2/"+repo+"/manifests/"+ref), hdr, bytes.NewReader(m), int64(len(m)), 201)
	if err != nil {
		return err
	}
	drain(resp)
	return t.checkDigestHeader(resp, digest.FromBytes(m), "manifest PUT "+repo+":"+ref)
}

// nextLink extracts the URL of a `Link: <...>; rel="next"` header, or "".
func nextLink(h http.Header) string {
	for _, v := range h.Values("Link") {
		for part := range strings.SplitSeq(v, ",") {
			part = strings.TrimSpace(part)
			if !strings.HasPrefix(part, "<") {
				continue
			}
			end := strings.Index(part, ">")
			if end < 0 {
				continue
			}
			if strings.Contains(strings.ReplaceAll(part[end+1:], " ", ""), `rel="next"`) ||
				strings.Contains(part[end+1:], "rel=next") {
				return part[1:end]
			}
		}
	}
	return ""
}

// getJSON GETs rawURL (200), decodes the body into v and returns the
// next-page link.
func (t *target) getJSON(ctx context.Context, rawURL string, v any) (next string, err error) {
	resp, err := t.do(ctx, "GET", rawURL, nil, nil, 0, 200)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return "", fmt.Errorf("[%s] GET %s: decoding body: %w", t.name, rawURL, err)
	}
	io.Copy(io.Discard, resp.Body)
	return nextLink(resp.Header), nil
}

// walkList follows a paginated listing (tags/list or _catalog) from first
// to the end, calling page for each page's entries; it returns the number
// of pages.
func (t *target) walkList(ctx context.Context, first string, field string, page func([]string) error) (int, error) {
	rawURL := t.url(first)
	pages := 0
	for rawURL != "" {
		var body map[string]json.RawMessage
		next, err := t.getJSON(ctx, rawURL, &body)
		if err != nil {
			return pages, err
		}
		pages++
		var entries []string
		if raw, ok := body[field]; ok && string(raw) != "null" {
			if err := json.Unmarshal(raw, &entries); err != nil {
				return pages, fmt.Errorf("[%s] GET %s: field %q: %w", t.name, rawURL, field, err)
			}
		}
		if err := page(entries); err != nil {
			return pages, err
		}
		if next == "" {
			break
		}
		u, err := t.resolve(next)
		if err != nil {
			return pages, err
		}
		rawURL = u.String()
		if pages > 10_000_000 {
			return pages, fmt.Errorf("[%s] pagination does not end", t.name)
		}
	}
	return pages, nil
}

func itoa(n int) string { return strconv.Itoa(n) }
