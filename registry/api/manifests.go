package api

import (
	_ "crypto/sha512" // sha512 digests, end to end
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gaia-registry/gaia/registry/grammar"
	"github.com/gaia-registry/gaia/registry/manifest"
	"github.com/gaia-registry/gaia/registry/metadata"
)

// Page sizes of tags/list and _catalog: the default when the client gives
// no n, and the most one page returns (more are reached through Link).
const (
	defaultTagsPage    = 10000
	defaultCatalogPage = 1000
	maxPage            = 10000
	// A referrers page carries annotations: at most this many descriptors,
	// and no more than about maxReferrersBytes of them (one always fits),
	// well below the 4 MiB clients accept for an index.
	maxReferrersPage  = 1000
	maxReferrersBytes = 1 << 20
)

// SparseIndexHeader, "true" on an index PUT, accepts an index whose
// children are not all in the repository (as distribution's
// validation.manifests.indexes.platforms: none does, but asked for per
// request): mirrors copy the platforms they are told to and keep the
// upstream's index, so its digest, unchanged. A pull of a missing child
// is a MANIFEST_UNKNOWN.
const SparseIndexHeader = "X-Gaia-Sparse-Index"

// reference is a manifest reference from the URL: a tag or a digest.
type reference = grammar.Reference

func (h *Handler) parseReference(w http.ResponseWriter, r *http.Request, ref string) (reference, bool) {
	parsed, err := grammar.ParseReference(ref)
	var ge *grammar.Error
	switch {
	case errors.As(err, &ge) && ge.Kind == grammar.ErrDigestInvalid:
		h.fail(w, r, errcode.ErrorCodeDigestInvalid.WithDetail(ge.Detail))
		return reference{}, false
	case err != nil:
		h.fail(w, r, errcode.ErrorCodeTagInvalid.WithDetail(map[string]string{"tag": ref}))
		return reference{}, false
	}
	return parsed, true
}

// accepts reports whether the request's Accept headers allow mediaType. No
// Accept header, or a wildcard, accepts anything.
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

// The platform of a manifest list's image served to a client that cannot
// read manifest lists, as in distribution.
const defaultOS, defaultArch = "linux", "amd64"

func (h *Handler) getManifest(w http.ResponseWriter, r *http.Request, name string, ref reference) {
	m, ok := h.findManifest(w, r, name, ref)
	if !ok {
		return
	}
	// A Docker manifest list asked for by tag by a client that reads no
	// manifest lists (a schema2-only docker) is answered with its
	// linux/amd64 image, as distribution does: Docker-Content-Digest then
	// names that image. Asked for by digest, only that digest's bytes will do.
	if ref.Tag != "" && m.MediaType == manifest.DockerManifestList && !accepts(r, m.MediaType) {
		child := platformChild(m, defaultOS, defaultArch)
		if child == "" {
			h.fail(w, r, errcode.ErrorCodeManifestUnknown.WithMessage(fmt.Sprintf(
				"the tag is a manifest list, which the request's Accept header does not list, and it has no %s/%s image", defaultOS, defaultArch)))
			return
		}
		if m, ok = h.findManifest(w, r, name, reference{Digest: child}); !ok {
			return
		}
	}
	if !accepts(r, m.MediaType) {
		h.fail(w, r, errcode.ErrorCodeManifestUnknown.WithMessage(
			fmt.Sprintf("the manifest is a %s, which the request's Accept header does not list", m.MediaType)))
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", m.MediaType)
	hdr.Set("Content-Length", strconv.Itoa(len(m.Content)))
	hdr.Set("Docker-Content-Digest", m.Digest.String())
	hdr.Set("ETag", `"`+m.Digest.String()+`"`)
	if r.Method == http.MethodHead {
		return
	}
	w.Write(m.Content)
}

// findManifest looks a manifest up, through pull-through when the
// repository lacks it; false: the error is answered.
func (h *Handler) findManifest(w http.ResponseWriter, r *http.Request, name string, ref reference) (*metadata.Manifest, bool) {
	var m *metadata.Manifest
	var err error
	lookup := func() {
		if ref.Tag != "" {
			m, err = h.Manifests.ByTag(r.Context(), name, ref.Tag)
		} else {
			m, err = h.Manifests.ByDigest(r.Context(), name, ref.Digest)
		}
	}
	lookup()
	if errors.Is(err, metadata.ErrNotFound) && h.PullThrough != nil && r.Header.Get(NoPullThroughHeader) == "" {
		ok, perr := h.PullThrough.Manifest(r.Context(), name, ref.String())
		switch {
		case perr != nil:
			h.pullThroughFailed(w, r, "manifest", name, ref.String(), perr)
			return nil, false
		case ok:
			lookup()
		}
	}
	if errors.Is(err, metadata.ErrNotFound) {
		h.fail(w, r, errcode.ErrorCodeManifestUnknown.WithDetail(map[string]string{"name": name, "reference": ref.String()}))
		return nil, false
	} else if err != nil {
		h.fail(w, r, err)
		return nil, false
	}
	return m, true
}

// platformChild is the digest of the first image of index m for os/arch
// ("" when none is).
func platformChild(m *metadata.Manifest, os, arch string) digest.Digest {
	parsed, err := manifest.Parse(m.MediaType, m.Content)
	if err != nil { // stored only after the same check passed
		return ""
	}
	for _, c := range parsed.ChildDescriptors {
		if c.Platform != nil && c.Platform.OS == os && c.Platform.Architecture == arch {
			return c.Digest
		}
	}
	return ""
}

// tooLarge answers an oversized manifest: 413 with the spec's error body.
func tooLarge(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusRequestEntityTooLarge)
	json.NewEncoder(w).Encode(errcode.Errors{errcode.ErrorCodeSizeInvalid.WithMessage(
		fmt.Sprintf("manifest larger than the %d-byte limit", manifest.MaxSize)).WithDetail(map[string]int{"limit": manifest.MaxSize})})
}

func (h *Handler) putManifest(w http.ResponseWriter, r *http.Request, name string, ref reference) {
	if r.ContentLength > manifest.MaxSize {
		tooLarge(w)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, manifest.MaxSize+1))
	if err != nil {
		h.fail(w, r, errcode.ErrorCodeManifestInvalid.WithDetail("reading the body: "+err.Error()))
		return
	}
	if len(body) > manifest.MaxSize {
		tooLarge(w)
		return
	}
	// A push by digest keeps that digest's algorithm; a push by tag gets
	// the canonical one (sha256).
	var d digest.Digest
	if ref.Digest != "" {
		if !ref.Digest.Algorithm().Available() {
			h.fail(w, r, errcode.ErrorCodeDigestInvalid.WithDetail("unsupported digest algorithm"))
			return
		}
		if d = ref.Digest.Algorithm().FromBytes(body); d != ref.Digest {
			h.fail(w, r, errcode.ErrorCodeDigestInvalid.WithMessage("the manifest's digest does not match the reference").
				WithDetail(map[string]string{"reference": ref.Digest.String(), "content": d.String()}))
			return
		}
	} else {
		d = digest.Canonical.FromBytes(body)
	}
	var tags []string
	if ref.Tag != "" {
		tags = append(tags, ref.Tag)
	}
	for _, t := range r.URL.Query()["tag"] { // OCI 1.1.1: push by digest with tags
		if !grammar.ValidTag(t) {
			h.fail(w, r, errcode.ErrorCodeTagInvalid.WithDetail(map[string]string{"tag": t}))
			return
		}
		tags = append(tags, t)
	}
	parsed, err := manifest.Parse(r.Header.Get("Content-Type"), body)
	if err != nil {
		h.fail(w, r, errcode.ErrorCodeManifestInvalid.WithDetail(err.Error()))
		return
	}
	nm := metadata.NewManifest{
		Manifest: metadata.Manifest{
			Digest: d, MediaType: parsed.MediaType, ArtifactType: parsed.ArtifactType,
			Annotations: parsed.Annotations, Content: body,
		},
		Blobs: parsed.Blobs, Children: parsed.Children, Tags: tags,
		Sparse: r.Header.Get(SparseIndexHeader) == "true",
	}
	if parsed.Subject != nil {
		nm.Subject = parsed.Subject.Digest
	}
	err = h.Manifests.Put(r.Context(), name, nm)
	var missing *metadata.MissingError
	if errors.As(err, &missing) {
		var errs errcode.Errors
		for _, b := range missing.Blobs {
			errs = append(errs, errcode.ErrorCodeManifestBlobUnknown.WithDetail(map[string]string{"digest": b.String()}))
		}
		for _, c := range missing.Manifests {
			errs = append(errs, errcode.ErrorCodeManifestBlobUnknown.WithMessage("manifest references a manifest unknown to the repository").
				WithDetail(map[string]string{"digest": c.String()}))
		}
		errcode.ServeJSON(w, errs)
		return
	} else if err != nil {
		h.fail(w, r, err)
		return
	}
	hdr := w.Header()
	hdr.Set("Location", "/v2/"+name+"/manifests/"+d.String())
	hdr.Set("Docker-Content-Digest", d.String())
	if parsed.Subject != nil {
		hdr.Set("OCI-Subject", parsed.Subject.Digest.String())
	}
	if ref.Digest != "" && len(tags) > 0 {
		hdr.Set("OCI-Tag", strings.Join(tags, ", "))
	}
	hdr.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

func (h *Handler) deleteManifest(w http.ResponseWriter, r *http.Request, name string, ref reference) {
	var err error
	if ref.Tag != "" {
		err = h.Manifests.DeleteTag(r.Context(), name, ref.Tag)
	} else {
		err = h.Manifests.Delete(r.Context(), name, ref.Digest)
	}
	switch {
	case errors.Is(err, metadata.ErrNotFound):
		h.fail(w, r, errcode.ErrorCodeManifestUnknown.WithDetail(map[string]string{"name": name, "reference": ref.String()}))
	case errors.Is(err, metadata.ErrReferenced):
		h.fail(w, r, errcode.ErrorCodeDenied.WithMessage("an index in this repository lists the manifest; delete the index first"))
	case err != nil:
		h.fail(w, r, err)
	default:
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusAccepted)
	}
}

// pageParams reads n and last. A missing n means def; n above maxPage is
// served as maxPage (the Link header leads to the rest).
func (h *Handler) pageParams(w http.ResponseWriter, r *http.Request, def int) (n int, last string, ok bool) {
	q := r.URL.Query()
	n = def
	if s := q.Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			h.fail(w, r, errcode.ErrorCodePaginationNumberInvalid.WithDetail(map[string]string{"n": s}))
			return 0, "", false
		}
		n = min(v, maxPage)
	}
	return n, q.Get("last"), true
}

// writeList answers a list page as {"<key>":[names]} (after the optional
// name member), with a Link to the next page when there is one. Tag and
// repository names are from grammars without characters JSON escapes, so
// they are written as they are.
func writeList(w http.ResponseWriter, path string, n int, nameField, key string, names []string, next string) {
	if next != "" {
		q := url.Values{"n": {strconv.Itoa(n)}, "last": {next}}
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, path, q.Encode()))
	}
	size := 32 + len(nameField)
	for _, s := range names {
		size += len(s) + 3
	}
	b := make([]byte, 0, size)
	b = append(b, '{')
	if nameField != "" {
		b = append(b, `"name":"`...)
		b = append(b, nameField...)
		b = append(b, `",`...)
	}
	b = append(b, '"')
	b = append(b, key...)
	b = append(b, `":[`...)
	for i, s := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, s...)
		b = append(b, '"')
	}
	b = append(b, "]}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b)
}

func (h *Handler) listTags(w http.ResponseWriter, r *http.Request, name string) {
	n, last, ok := h.pageParams(w, r, defaultTagsPage)
	if !ok {
		return
	}
	tags, more, err := h.Manifests.Tags(r.Context(), name, last, n)
	if errors.Is(err, metadata.ErrNotFound) {
		h.fail(w, r, errcode.ErrorCodeNameUnknown.WithDetail(map[string]string{"name": name}))
		return
	} else if err != nil {
		h.fail(w, r, err)
		return
	}
	writeList(w, "/v2/"+name+"/tags/list", n, name, "tags", tags, nextAfter(tags, more))
}

func (h *Handler) catalog(w http.ResponseWriter, r *http.Request) {
	n, last, ok := h.pageParams(w, r, defaultCatalogPage)
	if !ok {
		return
	}
	may := MayPull(r.Context())
	if may == nil {
		repos, more, err := h.Manifests.Repositories(r.Context(), last, n)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		writeList(w, "/v2/_catalog", n, "", "repositories", repos, nextAfter(repos, more))
		return
	}
	// Only what the caller may pull: pages of every name, filtered, until
	// n are found or maxCatalogScan names were looked at (then the Link
	// continues after the last name looked at, so paging stays bounded
	// and complete).
	repos := []string{}
	next := ""
	for scanned := 0; ; {
		page, more, err := h.Manifests.Repositories(r.Context(), last, catalogScanPage)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		for i, name := range page {
			last = name
			scanned++
			if may(name) {
				repos = append(repos, name)
			}
			if len(repos) == n || scanned >= maxCatalogScan {
				if more || i < len(page)-1 {
					next = last
				}
				writeList(w, "/v2/_catalog", n, "", "repositories", repos, next)
				return
			}
		}
		if !more {
			writeList(w, "/v2/_catalog", n, "", "repositories", repos, "")
			return
		}
	}
}

// A filtered catalog reads names in pages of catalogScanPage and looks at
// no more than maxCatalogScan per request.
var (
	catalogScanPage = 1000
	maxCatalogScan  = 20000 // a variable for tests
)

// nextAfter is a list page's next cursor: its last name when there is more.
func nextAfter(names []string, more bool) string {
	if !more || len(names) == 0 {
		return ""
	}
	return names[len(names)-1]
}

func (h *Handler) referrers(w http.ResponseWriter, r *http.Request, name string, d digest.Digest) {
	n, last, ok := h.pageParams(w, r, maxReferrersPage)
	if !ok {
		return
	}
	n = min(n, maxReferrersPage)
	var after digest.Digest
	if last != "" {
		var err error
		if after, err = digest.Parse(last); err != nil {
			h.fail(w, r, errcode.ErrorCodeDigestInvalid.WithMessage("last is not a digest").WithDetail(map[string]string{"last": last}))
			return
		}
	}
	artifactType := r.URL.Query().Get("artifactType")
	refs, more, err := h.Manifests.Referrers(r.Context(), name, d, artifactType, after, n, maxReferrersBytes)
	if errors.Is(err, metadata.ErrNotFound) {
		// Not a 404: the spec reserves that for a registry without the API.
		h.fail(w, r, errcode.ErrorCodeDigestInvalid.WithMessage("last names no manifest of the repository (deleted since?): list again without it").
			WithDetail(map[string]string{"last": last}))
		return
	} else if err != nil {
		h.fail(w, r, err)
		return
	}
	index := v1.Index{MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{}}
	index.SchemaVersion = 2
	for _, ref := range refs {
		index.Manifests = append(index.Manifests, v1.Descriptor{
			MediaType: ref.MediaType, Digest: ref.Digest, Size: ref.Size,
			ArtifactType: ref.ArtifactType, Annotations: ref.Annotations,
		})
	}
	if artifactType != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	if more && len(refs) > 0 {
		q := url.Values{"n": {strconv.Itoa(n)}, "last": {refs[len(refs)-1].Digest.String()}}
		if artifactType != "" {
			q.Set("artifactType", artifactType)
		}
		w.Header().Set("Link", fmt.Sprintf(`</v2/%s/referrers/%s?%s>; rel="next"`, name, d, q.Encode()))
	}
	w.Header().Set("Content-Type", v1.MediaTypeImageIndex)
	json.NewEncoder(w).Encode(index)
}
