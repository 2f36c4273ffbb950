package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Real clients: the push and pull scenarios run the registry clients people
// use, each with its defaults, as separate processes, timed from start to
// exit: curl, crane (go-containerregistry) and containerd's ctr. regbench's
// own large-buffer client is one more row.

const (
	clientRegbench = "regbench"
	clientCurl     = "curl"
	clientCrane    = "crane"
	clientCtr      = "ctr"
)

var allClients = []string{clientCurl, clientCrane, clientCtr, clientRegbench}

// tools are the external clients' commands.
type tools struct {
	curl, crane, ctr string
	ctrAddress       string // containerd's socket
	ctrNamespace     string
	workDir          string // where pushed content is written before a push
}

// run runs a client to completion; its stdout is discarded (or captured
// into out), its stderr kept for the error message.
func run(ctx context.Context, out io.Writer, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stdout = out
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		return fmt.Errorf("%s %s: %w; stderr: %s", name, strings.Join(args, " "), err, msg)
	}
	return nil
}

// hostRef is host:port of a target, as image references spell it.
func (t *target) hostRef() string { return t.base.Host }

// curlPull: curl -L -o /dev/null (following a gateway's redirect to a
// server, as clients do), defaults otherwise; checks status and size.
func (t *target) curlPull(ctx context.Context, tl *tools, repo string, d digest.Digest, size int64) error {
	u := t.url("/v2/" + repo + "/blobs/" + d.String())
	var out bytes.Buffer
	if err := run(ctx, &out, tl.curl, "-sS", "-L", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", u); err != nil {
		return fmt.Errorf("[%s] %w", t.name, err)
	}
	if got, want := strings.TrimSpace(out.String()), fmt.Sprintf("200 %d", size); got != want {
		return fmt.Errorf("[%s] curl GET %s: status and size %q, want %q", t.name, u, got, want)
	}
	return nil
}

// cranePull: crane blob (verifies the digest itself) into /dev/null.
func (t *target) cranePull(ctx context.Context, tl *tools, repo string, d digest.Digest) error {
	if err := run(ctx, nil, tl.crane, "blob", "--insecure", t.hostRef()+"/"+repo+"@"+d.String()); err != nil {
		return fmt.Errorf("[%s] %w", t.name, err)
	}
	return nil
}

// ctr runs containerd's ctr against the benchmark's containerd.
func (tl *tools) ctrRun(ctx context.Context, out io.Writer, args ...string) error {
	return run(ctx, out, tl.ctr, append([]string{"--address", tl.ctrAddress, "--namespace", tl.ctrNamespace}, args...)...)
}

// ctrFetch: ctr content fetch of a whole image (every layer, verified),
// then, untimed by the caller, ctrForget removes it again.
func (t *target) ctrFetch(ctx context.Context, tl *tools, repo, tag string) error {
	if err := tl.ctrRun(ctx, nil, "content", "fetch", "--plain-http", t.hostRef()+"/"+repo+":"+tag); err != nil {
		return fmt.Errorf("[%s] %w", t.name, err)
	}
	return nil
}

// ctrForget removes every image and every blob from the benchmark's
// containerd namespace, so the next fetch transfers everything again.
func (tl *tools) ctrForget(ctx context.Context) error {
	var out bytes.Buffer
	if err := tl.ctrRun(ctx, &out, "images", "ls", "-q"); err != nil {
		return err
	}
	if refs := strings.Fields(out.String()); len(refs) > 0 {
		if err := tl.ctrRun(ctx, nil, append([]string{"images", "rm"}, refs...)...); err != nil {
			return err
		}
	}
	out.Reset()
	if err := tl.ctrRun(ctx, &out, "content", "ls", "-q"); err != nil {
		return err
	}
	if ds := strings.Fields(out.String()); len(ds) > 0 {
		if err := tl.ctrRun(ctx, nil, append([]string{"content", "rm"}, ds...)...); err != nil {
			return err
		}
	}
	out.Reset()
	if err := tl.ctrRun(ctx, &out, "content", "ls", "-q"); err != nil {
		return err
	}
	if left := strings.Fields(out.String()); len(left) > 0 {
		return fmt.Errorf("containerd still holds %d blobs after removing them", len(left))
	}
	return nil
}

// ---------------------------------------------------------------- push content

// pushFile is one blob written to disk for a client to push: the
// generator stream (seed, size), so every push is new content.
type pushFile struct {
	path   string
	digest digest.Digest
	size   int64
}

// writeBlobFile writes the generator stream into dir and returns it with
// its digest (computed while writing; untimed).
func writeBlobFile(dir string, seed uint64, size int64) (*pushFile, error) {
	f, err := os.CreateTemp(dir, "blob-*")
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(io.MultiWriter(f, h), newGen(seed, size), buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != size {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	return &pushFile{path: f.Name(), digest: digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)), size: size}, nil
}

// curlPushPut: POST, then one monolithic PUT ?digest= of the file with
// curl -T (what `curl` users and simple scripts do).
func (t *target) curlPushPut(ctx context.Context, tl *tools, repo string, f *pushFile) error {
	loc, err := t.curlStart(ctx, tl, repo)
	if err != nil {
		return err
	}
	return t.curlFinish(ctx, tl, withDigest(loc, f.digest), f)
}

// curlPushPatch: POST, one PATCH streaming the file (curl -T), PUT ?digest=.
func (t *target) curlPushPatch(ctx context.Context, tl *tools, repo string, f *pushFile) error {
	loc, err := t.curlStart(ctx, tl, repo)
	if err != nil {
		return err
	}
	var hdr bytes.Buffer
	if err := run(ctx, &hdr, tl.curl, "-sS", "-o", "/dev/null", "-D", "-", "-X", "PATCH",
		"-H", "Content-Type: application/octet-stream", "-T", f.path, loc.String()); err != nil {
		return fmt.Errorf("[%s] %w", t.name, err)
	}
	status, h := parseCurlHeaders(hdr.String())
	if status != 202 {
		return fmt.Errorf("[%s] curl PATCH %s: status %d, want 202", t.name, loc, status)
	}
	if r := h["range"]; r != fmt.Sprintf("0-%d", f.size-1) {
		return fmt.Errorf("[%s] curl PATCH %s: Range %q after %d bytes", t.name, loc, r, f.size)
	}
	loc2, err := t.resolve(h["location"])
	if err != nil {
		return err
	}
	return t.curlFinish(ctx, tl, withDigest(loc2, f.digest), nil)
}

func withDigest(loc *url.URL, d digest.Digest) *url.URL {
	u := *loc
	q := u.Query()
	q.Set("digest", d.String())
	u.RawQuery = q.Encode()
	return &u
}

func (t *target) curlStart(ctx context.Context, tl *tools, repo string) (*url.URL, error) {
	var hdr bytes.Buffer
	if err := run(ctx, &hdr, tl.curl, "-sS", "-o", "/dev/null", "-D", "-", "-X", "POST", t.url("/v2/"+repo+"/blobs/uploads/")); err != nil {
		return nil, fmt.Errorf("[%s] %w", t.name, err)
	}
	status, h := parseCurlHeaders(hdr.String())
	if status != 202 {
		return nil, fmt.Errorf("[%s] curl POST /v2/%s/blobs/uploads/: status %d, want 202", t.name, repo, status)
	}
	return t.resolve(h["location"])
}

// curlFinish PUTs loc with the file as body (or none) and checks 201 and
// the digest header.
func (t *target) curlFinish(ctx context.Context, tl *tools, loc *url.URL, f *pushFile) error {
	args := []string{"-sS", "-o", "/dev/null", "-D", "-", "-X", "PUT"}
	if f != nil {
		args = append(args, "-H", "Content-Type: application/octet-stream", "-T", f.path)
	}
	var hdr bytes.Buffer
	if err := run(ctx, &hdr, tl.curl, append(args, loc.String())...); err != nil {
		return fmt.Errorf("[%s] %w", t.name, err)
	}
	status, h := parseCurlHeaders(hdr.String())
	want := loc.Query().Get("digest")
	if status != 201 || h["docker-content-digest"] != want {
		return fmt.Errorf("[%s] curl PUT %s: status %d, Docker-Content-Digest %q, want 201 and %s", t.name, loc.Path, status, h["docker-content-digest"], want)
	}
	return nil
}

// parseCurlHeaders reads `curl -D -` output: the last response's status
// and headers (lower-case names; a 100 Continue comes first).
func parseCurlHeaders(s string) (int, map[string]string) {
	status, h := 0, map[string]string{}
	for line := range strings.SplitSeq(strings.ReplaceAll(s, "\r", ""), "\n") {
		if strings.HasPrefix(line, "HTTP/") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				status, _ = strconv.Atoi(f[1])
			}
			h = map[string]string{}
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			h[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
		}
	}
	return status, h
}

// ociLayout is an OCI image layout on disk holding one image whose only
// layer is a pushFile (moved into it), for `crane push DIR REF`.
type ociLayout struct {
	dir   string
	layer *pushFile
}

// newOCILayout builds the layout around f (f's file moves into it).
func newOCILayout(workDir string, f *pushFile) (*ociLayout, error) {
	dir, err := os.MkdirTemp(workDir, "layout-*")
	if err != nil {
		return nil, err
	}
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return nil, err
	}
	put := func(b []byte) (v1.Descriptor, error) {
		d := digest.FromBytes(b)
		return v1.Descriptor{Digest: d, Size: int64(len(b))}, os.WriteFile(filepath.Join(blobs, d.Encoded()), b, 0o644)
	}
	if err := os.Rename(f.path, filepath.Join(blobs, f.digest.Encoded())); err != nil {
		return nil, err
	}
	f.path = filepath.Join(blobs, f.digest.Encoded())
	cfg, _ := json.Marshal(v1.Image{
		Platform: v1.Platform{Architecture: "amd64", OS: "linux"},
		RootFS:   v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{f.digest}},
	})
	cd, err := put(cfg)
	if err != nil {
		return nil, err
	}
	cd.MediaType = v1.MediaTypeImageConfig
	m, _ := json.Marshal(v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    cd,
		Layers:    []v1.Descriptor{{MediaType: v1.MediaTypeImageLayer, Digest: f.digest, Size: f.size}},
	})
	md, err := put(m)
	if err != nil {
		return nil, err
	}
	md.MediaType = v1.MediaTypeImageManifest
	idx, _ := json.Marshal(v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{md}})
	if err := os.WriteFile(filepath.Join(dir, "index.json"), idx, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return nil, err
	}
	return &ociLayout{dir: dir, layer: f}, nil
}

// cranePush: crane push DIR host/repo:tag (HEAD, POST, streamed PATCH and
// PUT per blob, then the manifest).
func (t *target) cranePush(ctx context.Context, tl *tools, repo, tag string, l *ociLayout) error {
	if err := run(ctx, nil, tl.crane, "push", "--insecure", l.dir, t.hostRef()+"/"+repo+":"+tag); err != nil {
		return fmt.Errorf("[%s] %w", t.name, err)
	}
	return nil
}

// checkBlob HEADs a pushed blob (untimed): it must be there with its size.
func (t *target) checkBlob(ctx context.Context, repo string, d digest.Digest, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, smallTimeout)
	defer cancel()
	resp, err := t.do(ctx, "HEAD", t.url("/v2/"+repo+"/blobs/"+d.String()), nil, nil, 0, 200)
	if err != nil {
		return fmt.Errorf("after the push: %w", err)
	}
	drain(resp)
	if resp.ContentLength != size {
		return fmt.Errorf("[%s] after the push, HEAD %s: Content-Length %d, want %d", t.name, d, resp.ContentLength, size)
	}
	return nil
}

// timed runs fn and returns how long it took.
func timed(fn func() error) (time.Duration, error) {
	start := time.Now()
	err := fn()
	return time.Since(start), err
}

// multiImage is an image of several generator layers (for ctr content
// fetch), pushed by regbench's own client.
type multiImage struct {
	layers    []pushFile // seed-generated; path unused
	seeds     []uint64
	layerSize int64
	config    []byte
	manifest  []byte
}

// newMultiImage splits total bytes into n layers of new content.
func newMultiImage(n int, total int64) (*multiImage, error) {
	m := &multiImage{layerSize: total / int64(n)}
	var descs []v1.Descriptor
	var diffIDs []digest.Digest
	for range n {
		seed := rand.Uint64()
		d, err := genDigest(seed, m.layerSize)
		if err != nil {
			return nil, err
		}
		m.seeds = append(m.seeds, seed)
		m.layers = append(m.layers, pushFile{digest: d, size: m.layerSize})
		descs = append(descs, v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: d, Size: m.layerSize})
		diffIDs = append(diffIDs, d)
	}
	m.config, _ = json.Marshal(v1.Image{
		Platform: v1.Platform{Architecture: "amd64", OS: "linux"},
		RootFS:   v1.RootFS{Type: "layers", DiffIDs: diffIDs},
	})
	m.manifest, _ = json.Marshal(v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromBytes(m.config), Size: int64(len(m.config))},
		Layers:    descs,
	})
	return m, nil
}

// push uploads the image's blobs and manifest to t (untimed set-up).
func (m *multiImage) push(ctx context.Context, t *target, repo, tag string) error {
	for i, l := range m.layers {
		if _, err := t.pushBlob(ctx, repo, m.seeds[i], l.size, l.digest); err != nil {
			return err
		}
	}
	if _, err := t.pushSmallBlob(ctx, repo, m.config); err != nil {
		return err
	}
	return t.putManifest(ctx, repo, tag, m.manifest)
}

// ctrVersion is ctr's version line, for the notes.
func ctrVersion(ctx context.Context, tl *tools) string {
	var out bytes.Buffer
	if run(ctx, &out, tl.ctr, "--version") != nil {
		return "(unknown version)"
	}
	f := strings.Fields(out.String())
	return f[len(f)-1]
}
