package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"
)

// The calls below serve both ends of a mirror: reading an upstream's
// catalog and manifest digests, and writing into the destination registry
// (Gaia itself, through its API, with a robot credential).

func pushScope(repo string) string { return "repository:" + repo + ":pull,push" }

// Catalog lists the registry's repositories, following Link pages (not
// every registry serves it: Docker Hub does not, which is why rules there
// name their repositories).
func (c *Client) Catalog(ctx context.Context) ([]string, error) {
	var all []string
	path := "/v2/_catalog?n=1000"
	for path != "" {
		resp, err := c.do(ctx, http.MethodGet, path, "registry:catalog:*", nil)
		if err != nil {
			return nil, err
		}
		var page struct{ Repositories []string }
		err = json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&page)
		link := resp.Header.Get("Link")
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("catalog: %w", err)
		}
		all = append(all, page.Repositories...)
		path = nextLink(link)
	}
	return all, nil
}

// ManifestDigest asks for the digest a tag (or digest) resolves to with a
// HEAD, without the manifest's bytes (a HEAD does not count against
// Docker Hub's pull limit). A registry that sends no Docker-Content-Digest
// is asked with a GET instead.
func (c *Client) ManifestDigest(ctx context.Context, repo, ref string) (digest.Digest, error) {
	hdr := http.Header{"Accept": {strings.Join(ManifestTypes, ", ")}}
	resp, err := c.do(ctx, http.MethodHead, "/v2/"+repo+"/manifests/"+ref, pullScope(repo), hdr)
	if err != nil {
		return "", err
	}
	drain(resp)
	if d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil {
		return d, nil
	}
	_, _, d, err := c.Manifest(ctx, repo, ref)
	return d, err
}

// BlobExists reports whether repo has blob d (a HEAD, with pull rights).
func (c *Client) BlobExists(ctx context.Context, repo string, d digest.Digest) (bool, error) {
	resp, err := c.do(ctx, http.MethodHead, "/v2/"+repo+"/blobs/"+d.String(), pullScope(repo), nil)
	if IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	drain(resp)
	return true, nil
}

// MountBlob links blob d into repo from repository from (which needs pull
// there) without moving bytes; with from empty, Gaia mounts from any
// repository the credential may pull (every one for an htpasswd user,
// those in its scopes for a token). When the registry cannot, it opens an
// upload session instead: its URL comes back for PushBlobTo (the caller
// must use it or Cancel it).
func (c *Client) MountBlob(ctx context.Context, repo, from string, d digest.Digest) (mounted bool, session string, err error) {
	q := url.Values{"mount": {d.String()}}
	scope := pushScope(repo)
	if from != "" {
		q.Set("from", from)
		scope += " " + pullScope(from)
	}
	resp, err := c.send(ctx, http.MethodPost, "/v2/"+repo+"/blobs/uploads/?"+q.Encode(), scope, nil, &body{})
	if err != nil {
		return false, "", err
	}
	drain(resp)
	if resp.StatusCode == http.StatusCreated {
		return true, "", nil
	}
	loc := resp.Header.Get("Location")
	if loc == "" {
		return false, "", fmt.Errorf("POST /v2/%s/blobs/uploads/: %s without a Location", repo, resp.Status)
	}
	return false, c.resolve(resp, loc), nil
}

// Cancel ends an upload session PushBlobTo will not use.
func (c *Client) Cancel(ctx context.Context, repo, session string) {
	if r, err := c.do(ctx, http.MethodDelete, session, pushScope(repo), nil); err == nil {
		drain(r)
	}
}

// resolve makes a Location absolute against the request that returned it.
func (c *Client) resolve(resp *http.Response, loc string) string {
	u, err := resp.Request.URL.Parse(loc)
	if err != nil {
		return loc
	}
	return u.String()
}

// PushBlob uploads size bytes from r as blob d of repo: a POST for the
// session, then PushBlobTo.
func (c *Client) PushBlob(ctx context.Context, repo string, d digest.Digest, size int64, r io.Reader) error {
	resp, err := c.send(ctx, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", pushScope(repo), nil, &body{})
	if err != nil {
		return err
	}
	drain(resp)
	loc := resp.Header.Get("Location")
	if loc == "" {
		return fmt.Errorf("POST /v2/%s/blobs/uploads/: no Location in the answer", repo)
	}
	return c.PushBlobTo(ctx, repo, c.resolve(resp, loc), d, size, r)
}

// PushBlobTo sends the whole blob to an open upload session in one PUT.
// The body streams: when r fails (a torn upstream transfer), the request
// fails and the registry stores nothing under d.
func (c *Client) PushBlobTo(ctx context.Context, repo, session string, d digest.Digest, size int64, r io.Reader) error {
	u, err := url.Parse(session)
	if err != nil {
		return err
	}
	q := u.Query()
	q.Set("digest", d.String())
	u.RawQuery = q.Encode()
	hdr := http.Header{"Content-Type": {"application/octet-stream"}}
	resp, err := c.send(ctx, http.MethodPut, u.String(), pushScope(repo), hdr, &body{stream: r, size: size})
	if err != nil {
		return fmt.Errorf("pushing blob %s to %s: %w", d, repo, err)
	}
	drain(resp)
	return nil
}

// PutManifest stores a manifest under ref (a tag or its digest). sparse
// asks Gaia to accept an index whose children are not all present.
func (c *Client) PutManifest(ctx context.Context, repo, ref, mediaType string, content []byte, sparse bool) error {
	hdr := http.Header{"Content-Type": {mediaType}}
	if sparse {
		hdr.Set("X-Gaia-Sparse-Index", "true")
	}
	resp, err := c.send(ctx, http.MethodPut, "/v2/"+repo+"/manifests/"+ref, pushScope(repo), hdr, &body{bytes: content})
	if err != nil {
		return err
	}
	drain(resp)
	return nil
}

// HasManifest reports whether repo has the manifest ref and its digest.
func (c *Client) HasManifest(ctx context.Context, repo, ref string) (digest.Digest, bool, error) {
	d, _, ok, err := c.ManifestInfo(ctx, repo, ref)
	return d, ok, err
}

// ManifestInfo is HasManifest with the manifest's media type.
func (c *Client) ManifestInfo(ctx context.Context, repo, ref string) (digest.Digest, string, bool, error) {
	hdr := http.Header{"Accept": {strings.Join(ManifestTypes, ", ")}}
	resp, err := c.do(ctx, http.MethodHead, "/v2/"+repo+"/manifests/"+ref, pushScope(repo), hdr)
	if IsNotFound(err) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, err
	}
	drain(resp)
	d, _ := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	mt, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
	return d, strings.TrimSpace(mt), true, nil
}

// URL is the registry's base URL.
func (c *Client) URL() string { return c.o.URL }

// Username is the credential's user ("" anonymous), for error messages.
func (c *Client) Username() string { return c.o.Username }
