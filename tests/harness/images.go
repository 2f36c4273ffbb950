package harness

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gaia-registry/gaia/mirror-sync/upstream"
)

// Layer is a gzipped tar holding one file of pseudo-random bytes: a real
// layer any client can unpack, unique per seed.
func Layer(seed uint64, size int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	content := make([]byte, size)
	for i := 0; i+8 <= size; i += 8 {
		v := rng.Uint64()
		for k := 0; k < 8; k++ {
			content[i+k] = byte(v >> (8 * k))
		}
	}
	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(gz)
	tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data-%d", seed), Mode: 0o644, Size: int64(size), Typeflag: tar.TypeReg})
	tw.Write(content)
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

// TestImage is an OCI image built in memory.
type TestImage struct {
	Manifest []byte
	Digest   digest.Digest
	Platform v1.Platform
	Blobs    []v1.Descriptor // config first, then layers
	Content  map[digest.Digest][]byte
}

// NewTestImage builds an image for platform ("linux/amd64") from layers
// (gzipped tars, see Layer).
func NewTestImage(platform string, layers ...[]byte) TestImage {
	parts := strings.Split(platform, "/")
	p := v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) > 2 {
		p.Variant = parts[2]
	}
	img := TestImage{Platform: p, Content: map[digest.Digest][]byte{}}
	var diffIDs []string
	var layerDescs []v1.Descriptor
	for _, l := range layers {
		zr, _ := gzip.NewReader(bytes.NewReader(l))
		var raw bytes.Buffer
		raw.ReadFrom(zr)
		diffIDs = append(diffIDs, digest.FromBytes(raw.Bytes()).String())
		d := digest.FromBytes(l)
		img.Content[d] = l
		layerDescs = append(layerDescs, v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: d, Size: int64(len(l))})
	}
	config, _ := json.Marshal(map[string]any{
		"architecture": p.Architecture, "os": p.OS, "variant": p.Variant,
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
		"config": map[string]any{"Cmd": []string{"/bin/sh"}},
	})
	cd := digest.FromBytes(config)
	img.Content[cd] = config
	cfgDesc := v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: cd, Size: int64(len(config))}
	img.Blobs = append([]v1.Descriptor{cfgDesc}, layerDescs...)
	img.Manifest, _ = json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": v1.MediaTypeImageManifest, "config": cfgDesc, "layers": layerDescs,
	})
	img.Digest = digest.FromBytes(img.Manifest)
	return img
}

// Push stores the image's blobs (those the repository lacks) and its
// manifest under ref.
func (img TestImage) Push(ctx context.Context, c *upstream.Client, repo, ref string) error {
	for _, b := range img.Blobs {
		ok, err := c.BlobExists(ctx, repo, b.Digest)
		if err != nil {
			return err
		}
		if ok {
			continue
		}
		if err := c.PushBlob(ctx, repo, b.Digest, b.Size, bytes.NewReader(img.Content[b.Digest])); err != nil {
			return err
		}
	}
	return c.PutManifest(ctx, repo, ref, v1.MediaTypeImageManifest, img.Manifest, false)
}

// Index is an OCI index of images (by their platforms).
func Index(images ...TestImage) ([]byte, digest.Digest) {
	var ms []v1.Descriptor
	for _, img := range images {
		p := img.Platform
		ms = append(ms, v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: img.Digest,
			Size: int64(len(img.Manifest)), Platform: &p})
	}
	body, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": v1.MediaTypeImageIndex, "manifests": ms})
	return body, digest.FromBytes(body)
}

// PushIndex pushes the images by digest, then their index under tag.
func PushIndex(ctx context.Context, c *upstream.Client, repo, tag string, images ...TestImage) (digest.Digest, error) {
	for _, img := range images {
		if err := img.Push(ctx, c, repo, img.Digest.String()); err != nil {
			return "", err
		}
	}
	body, d := Index(images...)
	return d, c.PutManifest(ctx, repo, tag, v1.MediaTypeImageIndex, body, false)
}
