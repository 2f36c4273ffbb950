package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
)

// seedCatalogFS writes n repositories straight into CNCF distribution's
// filesystem storage layout under root (the registry's
// storage.filesystem.rootdirectory), each as if img had been pushed to it
// with tag latest: the two layer links, the manifest revision link and the
// tag's current and index links. The blobs themselves must already be in
// the registry (the caller pushes img to one repository through the API
// first), so every seeded repository is complete and pullable.
//
// This is a fallback for a registry whose API seeding would take too long;
// it is only valid for distribution's own layout, not for Gaia.
func seedCatalogFS(root string, n int, name func(int) string, img *image) error {
	v2 := filepath.Join(root, "docker", "registry", "v2")
	for _, d := range []digest.Digest{img.configDigest, img.layerDigest, img.manifestDigest} {
		data := filepath.Join(v2, "blobs", d.Algorithm().String(), d.Encoded()[:2], d.Encoded(), "data")
		if _, err := os.Stat(data); err != nil {
			return fmt.Errorf("blob %s not in the registry (%w); push the image through the API first", d, err)
		}
	}
	link := func(dir string, d digest.Digest) error {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "link"), []byte(d.String()), 0o644)
	}
	m := img.manifestDigest
	for i := range n {
		repo := filepath.Join(v2, "repositories", filepath.FromSlash(name(i)))
		for _, d := range []digest.Digest{img.configDigest, img.layerDigest} {
			if err := link(filepath.Join(repo, "_layers", d.Algorithm().String(), d.Encoded()), d); err != nil {
				return err
			}
		}
		mf := filepath.Join(repo, "_manifests")
		if err := link(filepath.Join(mf, "revisions", m.Algorithm().String(), m.Encoded()), m); err != nil {
			return err
		}
		if err := link(filepath.Join(mf, "tags", "latest", "current"), m); err != nil {
			return err
		}
		if err := link(filepath.Join(mf, "tags", "latest", "index", m.Algorithm().String(), m.Encoded()), m); err != nil {
			return err
		}
	}
	return nil
}
