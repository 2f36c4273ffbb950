package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/grammar"
	"github.com/gaia-registry/gaia/registry/httptimeouts"
	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/replication"
	"github.com/gaia-registry/gaia/registry/uploadsession"
)

func uploadLocation(name, id string) string { return "/v2/" + name + "/blobs/uploads/" + id }

// uploadHeaders are the headers of every upload response, errors
// included: where to send the next request and how much the registry has.
func uploadHeaders(w http.ResponseWriter, name, id string, size int64) {
	w.Header().Set("Location", uploadLocation(name, id))
	w.Header().Set("Range", fmt.Sprintf("0-%d", max(size-1, 0)))
	w.Header().Set("Docker-Upload-UUID", id)
}

// uploadAccepted answers a request that moved an upload forward.
func uploadAccepted(w http.ResponseWriter, name, id string, size int64, status int) {
	uploadHeaders(w, name, id, size)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(status)
}

// stored follows a finished upload: eager replication to the other IDCs
// when the repository asks for it. A failure to queue is logged, not the
// client's problem: the first pull elsewhere fills the blob anyway.
func (h *Handler) stored(r *http.Request, name string, d digest.Digest) {
	if h.Replicator == nil {
		return
	}
	if err := h.Replicator.Enqueue(r.Context(), name, d); err != nil {
		h.Log.Warn("queueing replication", "repository", name, "digest", d, "err", err)
	}
}

func blobCreated(w http.ResponseWriter, name string, d digest.Digest) {
	w.Header().Set("Location", "/v2/"+name+"/blobs/"+d.String())
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

// uploadErr maps upload errors to the spec's codes.
func (h *Handler) uploadErr(w http.ResponseWriter, r *http.Request, name, id string, err error) {
	var re *uploadsession.RangeError
	switch {
	case errors.As(err, &re):
		// An out-of-order chunk, or one racing another request on the same
		// session: either way the spec's 416 with where the upload stands.
		uploadHeaders(w, name, id, re.Size)
		h.fail(w, r, errcode.ErrorCodeRangeInvalid.WithMessage(re.Error()).WithDetail(map[string]int64{"size": re.Size}))
	case errors.Is(err, uploadsession.ErrUnknown):
		h.fail(w, r, errcode.ErrorCodeBlobUploadUnknown)
	case errors.Is(err, uploadsession.ErrBodyBroken):
		// The client's fault, not the server's: where the upload stands
		// goes with it, so the client may resume from there.
		if sess, gerr := h.Uploads.Get(context.WithoutCancel(r.Context()), name, id); gerr == nil {
			uploadHeaders(w, name, id, sess.Size)
		}
		h.fail(w, r, errcode.ErrorCodeBlobUploadInvalid.WithMessage("the request body broke off; the upload keeps what arrived (see Range)"))
	case errors.Is(err, uploadsession.ErrInvalid):
		h.fail(w, r, errcode.ErrorCodeBlobUploadInvalid.WithMessage("the upload's data does not match its state; start the upload again"))
	case errors.Is(err, uploadsession.ErrDigestMismatch):
		h.fail(w, r, errcode.ErrorCodeDigestInvalid.WithMessage("provided digest did not match uploaded content"))
	default:
		h.fail(w, r, err)
	}
}

func (h *Handler) startUpload(w http.ResponseWriter, r *http.Request, name string) {
	ctx := r.Context()
	q := r.URL.Query()
	// Cross-repository mount: link a blob without moving bytes, from
	// `from` (auth checked pull there) or, without it, from a repository
	// the caller may pull: mounting by digest alone from anywhere would
	// let a pusher read any blob and learn which digests exist. When it
	// cannot, the spec says to fall back to a new upload session.
	if m := q.Get("mount"); m != "" {
		if d, err := digest.Parse(m); err == nil {
			if _, err := h.mount(ctx, name, q.Get("from"), d); err == nil {
				blobCreated(w, name, d)
				return
			} else if !errors.Is(err, metadata.ErrNotFound) {
				h.fail(w, r, err)
				return
			}
		}
	}
	var want digest.Digest
	if dg := q.Get("digest"); dg != "" {
		d, err := digest.Parse(dg)
		if err != nil {
			h.fail(w, r, errcode.ErrorCodeDigestInvalid.WithDetail(err.Error()))
			return
		}
		want = d
	}
	sess, err := h.Uploads.Start(ctx, name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if want != "" { // monolithic: the whole blob in this request
		if _, err := h.Uploads.Finish(ctx, name, sess.ID, 0, r.Body, want); err != nil {
			h.uploadErr(w, r, name, sess.ID, err)
			return
		}
		h.stored(r, name, want)
		blobCreated(w, name, want)
		return
	}
	uploadAccepted(w, name, sess.ID, 0, http.StatusAccepted)
}

// maxMountHolders bounds the repositories a mount without `from` looks
// at for one the caller may pull (a blob in more is rarely private).
const maxMountHolders = 1000

// mount links blob d into name from repository from or, with from
// empty, from any repository the request may pull.
func (h *Handler) mount(ctx context.Context, name, from string, d digest.Digest) (int64, error) {
	if from != "" {
		return h.Blobs.Mount(ctx, name, []string{from}, d)
	}
	may := MayPull(ctx)
	if may == nil {
		return h.Blobs.MountAny(ctx, name, d)
	}
	holders, err := h.Blobs.Holders(ctx, d, maxMountHolders)
	if err != nil {
		return 0, err
	}
	holders = slices.DeleteFunc(holders, func(repo string) bool { return !may(repo) })
	return h.Blobs.Mount(ctx, name, holders, d)
}

// chunkOffset reads Content-Range and checks it against Content-Length.
// Without the header (a streamed chunk) the chunk goes wherever the
// upload stands: uploadsession.AtEnd.
func chunkOffset(r *http.Request) (int64, error) {
	cr := r.Header.Get("Content-Range")
	if cr == "" {
		return uploadsession.AtEnd, nil
	}
	start, _, err := grammar.ContentRange(cr, r.ContentLength)
	if ge := (*grammar.Error)(nil); errors.As(err, &ge) {
		return 0, errcode.ErrorCodeRangeInvalid.WithDetail(ge.Detail)
	}
	return start, err
}

func (h *Handler) patchUpload(w http.ResponseWriter, r *http.Request, name, id string) {
	offset, err := chunkOffset(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	sess, err := h.Uploads.Append(r.Context(), name, id, offset, r.Body)
	if err != nil {
		h.uploadErr(w, r, name, id, err)
		return
	}
	uploadAccepted(w, name, id, sess.Size, http.StatusAccepted)
}

func (h *Handler) putUpload(w http.ResponseWriter, r *http.Request, name, id string) {
	ctx := r.Context()
	d, err := digest.Parse(r.URL.Query().Get("digest"))
	if err != nil {
		h.fail(w, r, errcode.ErrorCodeDigestInvalid.WithDetail("the digest query parameter is missing or invalid"))
		return
	}
	offset, err := chunkOffset(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var last io.Reader
	if r.ContentLength != 0 { // a final chunk (or a chunked-encoding body)
		last = r.Body
	}
	if _, err := h.Uploads.Finish(ctx, name, id, offset, last, d); err != nil {
		h.uploadErr(w, r, name, id, err)
		return
	}
	h.stored(r, name, d)
	blobCreated(w, name, d)
}

func (h *Handler) uploadStatus(w http.ResponseWriter, r *http.Request, name, id string) {
	sess, err := h.Uploads.Get(r.Context(), name, id)
	if err != nil {
		h.uploadErr(w, r, name, id, err)
		return
	}
	uploadAccepted(w, name, id, sess.Size, http.StatusNoContent)
}

func (h *Handler) cancelUpload(w http.ResponseWriter, r *http.Request, name, id string) {
	if err := h.Uploads.Cancel(r.Context(), name, id); err != nil {
		h.uploadErr(w, r, name, id, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) getBlob(w http.ResponseWriter, r *http.Request, name string, d digest.Digest) {
	ctx := r.Context()
	idc := uploadsession.DefaultIDC
	if h.Replicator != nil {
		idc = h.Replicator.IDC()
	}
	info, err := h.Blobs.Lookup(ctx, name, d, idc)
	// Pull-through on GET only: a HEAD is how pushers ask what to upload.
	if errors.Is(err, metadata.ErrNotFound) && h.PullThrough != nil && r.Method == http.MethodGet &&
		r.Header.Get(replication.NoFillHeader) == "" && r.Header.Get(NoPullThroughHeader) == "" {
		ok, perr := h.PullThrough.Blob(ctx, name, d)
		switch {
		case perr != nil:
			h.pullThroughFailed(w, r, "blob", name, d.String(), perr)
			return
		case ok:
			info, err = h.Blobs.Lookup(ctx, name, d, idc)
		}
	}
	if errors.Is(err, metadata.ErrNotFound) {
		h.fail(w, r, errcode.ErrorCodeBlobUnknown.WithDetail(d))
		return
	} else if err != nil {
		h.fail(w, r, err)
		return
	}
	size := info.Size
	// A blob this IDC's storage lacks is copied from an IDC that has it,
	// once, before the first byte goes out. A peer's own fill request
	// (NoFillHeader) never chains.
	if !info.Local && h.Replicator != nil && r.Method == http.MethodGet {
		if r.Header.Get(replication.NoFillHeader) != "" {
			h.fail(w, r, errcode.ErrorCodeBlobUnknown.WithMessage("blob not held in this IDC").WithDetail(d))
			return
		}
		if err := h.Replicator.Fill(ctx, name, d); err != nil {
			h.Log.Error("cross-IDC fill failed", "repository", name, "digest", d, "err", err)
			h.fail(w, r, errcode.ErrorCodeUnavailable.WithMessage("the blob is held in another IDC and could not be copied here; retry later"))
			return
		}
	}
	hdr := w.Header()
	hdr.Set("Docker-Content-Digest", d.String())
	hdr.Set("ETag", `"`+d.String()+`"`)
	hdr.Set("Accept-Ranges", "bytes")
	hdr.Set("Content-Type", "application/octet-stream")
	start, end, status := int64(0), size-1, http.StatusOK
	if rh := r.Header.Get("Range"); rh != "" {
		switch s, e, answer := grammar.ByteRange(rh, size); answer {
		case grammar.RangeUnsatisfiable:
			hdr.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			h.fail(w, r, errcode.ErrorCodeRangeInvalid.WithDetail("unsatisfiable Range"))
			return
		case grammar.RangePartial:
			start, end, status = s, e, http.StatusPartialContent
			hdr.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size))
		}
	}
	hdr.Set("Content-Length", strconv.FormatInt(end-start+1, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	if size == 0 {
		w.WriteHeader(status)
		return
	}
	rc, err := h.Driver.Reader(ctx, uploadsession.BlobPath(d), start)
	if errors.As(err, new(storagedriver.PathNotFoundError)) && h.Replicator != nil && r.Method == http.MethodGet &&
		r.Header.Get(replication.NoFillHeader) == "" {
		// Recorded as held here, yet gone (storage lost or replaced):
		// forget the placement and copy it back from another IDC.
		h.Log.Warn("blob recorded in this IDC is missing from its storage; refilling", "repository", name, "digest", d)
		if ferr := h.Replicator.Refill(ctx, name, d); ferr == nil {
			rc, err = h.Driver.Reader(ctx, uploadsession.BlobPath(d), start)
		} else {
			h.Log.Error("refill failed", "digest", d, "err", ferr)
		}
	}
	if err != nil {
		hdr.Del("Content-Range")
		hdr.Del("Content-Length")
		if !errors.As(err, new(storagedriver.PathNotFoundError)) {
			h.fail(w, r, err) // storage failing (down, say): 503, not "unknown blob"
			return
		}
		// Linked in the database but missing in storage: say so, loudly.
		h.Log.Error("blob bytes missing from storage", "repository", name, "digest", d, "err", err)
		h.fail(w, r, errcode.ErrorCodeBlobUnknown.WithDetail(d))
		return
	}
	defer rc.Close()
	w.WriteHeader(status)
	if _, err := sendBlob(w, r, rc, end-start+1, h.WriteIdle); err != nil {
		h.Log.Warn("blob download cut short", "repository", name, "digest", d, "err", err)
	}
}

// blobBuffers carry blob bytes from storage to a client on this host: 256
// KiB, small enough to stay in the CPU cache between the read from storage
// and the write to the socket, large enough to keep system calls few.
var blobBuffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// sendBlob writes n bytes of rc to the client. A remote client gets them
// the cheapest way for the server: through the ResponseWriter's ReadFrom,
// which is sendfile(2) when the storage driver hands out a file. A client
// on this host gets them through a buffer instead: sendfile queues
// page-cache pages on the socket, so over loopback the client's own
// receive copy reads them from memory no cache holds, on the client's CPU.
// Measured with curl and a 1 GiB blob in the page cache, that copy cost
// the client about 0.5 s of CPU per GiB against 0.3 s when the server
// copies, which made single-threaded clients slower here than on a
// registry that copies through buffers (docs/benchmarks.md).
//
// Either way the client must keep taking bytes: a download that makes no
// progress for idle fails, and its storage reader is closed (idle ≤ 0: no
// bound).
func sendBlob(w http.ResponseWriter, r *http.Request, rc io.Reader, n int64, idle time.Duration) (int64, error) {
	iw := httptimeouts.NewIdleWriter(w, idle)
	defer iw.Close()
	src := io.LimitReader(rc, n)
	if !sameHost(r) {
		return iw.ReadFrom(src)
	}
	buf := blobBuffers.Get().(*[]byte)
	defer blobBuffers.Put(buf)
	// Wrapped so that neither side's ReadFrom/WriteTo (sendfile) is used.
	return io.CopyBuffer(struct{ io.Writer }{iw}, struct{ io.Reader }{src}, *buf)
}

// sameHost reports whether the request's connection comes from this host:
// a loopback peer, or a peer at the address it connected to.
func sameHost(r *http.Request) bool {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := peer.Addr().Unmap()
	if ip.IsLoopback() {
		return true
	}
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	la, err := netip.ParseAddrPort(local.String())
	return err == nil && la.Addr().Unmap() == ip
}

func (h *Handler) deleteBlob(w http.ResponseWriter, r *http.Request, name string, d digest.Digest) {
	switch err := h.Blobs.Unlink(r.Context(), name, d); {
	case errors.Is(err, metadata.ErrNotFound):
		h.fail(w, r, errcode.ErrorCodeBlobUnknown.WithDetail(d))
	case errors.Is(err, metadata.ErrReferenced):
		h.fail(w, r, errcode.ErrorCodeDenied.WithMessage("the blob is referenced by a manifest in this repository"))
	case err != nil:
		h.fail(w, r, err)
	default:
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusAccepted)
	}
}
