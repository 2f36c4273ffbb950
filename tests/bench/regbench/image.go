package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// image is a small OCI image: a config blob, one gzipped tar layer and
// the manifest referencing both. Its bytes are the same on every run.
type image struct {
	config, layer, manifest []byte
	configDigest            digest.Digest
	layerDigest             digest.Digest
	manifestDigest          digest.Digest
}

func newImage() (*image, error) {
	// One 4 KiB file of generator bytes in a tar, gzipped.
	content, err := io.ReadAll(newGen(42, 4096))
	if err != nil {
		return nil, err
	}
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	mtime := time.Unix(1700000000, 0).UTC()
	if err := tw.WriteHeader(&tar.Header{Name: "regbench/data", Mode: 0o644, Size: int64(len(content)), ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(content); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	var gzBuf bytes.Buffer
	zw := gzip.NewWriter(&gzBuf)
	if _, err := zw.Write(tarBuf.Bytes()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	img := &image{layer: gzBuf.Bytes()}
	img.layerDigest = digest.FromBytes(img.layer)

	created := mtime
	cfg := v1.Image{
		Created:  &created,
		Platform: v1.Platform{Architecture: "amd64", OS: "linux"},
		Config:   v1.ImageConfig{Cmd: []string{"/bin/true"}},
		RootFS:   v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(tarBuf.Bytes())}},
	}
	if img.config, err = json.Marshal(cfg); err != nil {
		return nil, err
	}
	img.configDigest = digest.FromBytes(img.config)

	m := v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: img.configDigest, Size: int64(len(img.config))},
		Layers:    []v1.Descriptor{{MediaType: v1.MediaTypeImageLayerGzip, Digest: img.layerDigest, Size: int64(len(img.layer))}},
	}
	if img.manifest, err = json.Marshal(m); err != nil {
		return nil, err
	}
	img.manifestDigest = digest.FromBytes(img.manifest)
	return img, nil
}

// push uploads the image's blobs to repo (if missing) and PUTs its manifest
// under tag.
func (img *image) push(ctx context.Context, t *target, repo, tag string) error {
	if _, err := t.pushSmallBlob(ctx, repo, img.config); err != nil {
		return err
	}
	if _, err := t.pushSmallBlob(ctx, repo, img.layer); err != nil {
		return err
	}
	return t.putManifest(ctx, repo, tag, img.manifest)
}
