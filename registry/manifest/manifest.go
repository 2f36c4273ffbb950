// Package manifest parses and checks the manifests a registry accepts: OCI
// image manifests and indexes, Docker schema2 manifests and manifest lists.
// It says what a manifest refers to (blobs that must be in the repository,
// child manifests, a subject) so the metadata layer can record it; it does
// not touch storage or the database. Docker schema1 is refused.
package manifest

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types of the manifests Gaia stores.
const (
	OCIImage            = v1.MediaTypeImageManifest
	OCIIndex            = v1.MediaTypeImageIndex
	DockerSchema2       = "application/vnd.docker.distribution.manifest.v2+json"
	DockerManifestList  = "application/vnd.docker.distribution.manifest.list.v2+json"
	dockerSchema1       = "application/vnd.docker.distribution.manifest.v1+json"
	dockerSchema1Signed = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	dockerForeignLayer  = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
)

// MaxSize is the largest manifest accepted (the limit distribution and
// containerd use).
const MaxSize = 4 << 20

// Supported reports whether media type t is a manifest type Gaia stores.
func Supported(t string) bool {
	switch t {
	case OCIImage, OCIIndex, DockerSchema2, DockerManifestList:
		return true
	}
	return false
}

// IsIndex reports whether t is an index or manifest list.
func IsIndex(t string) bool { return t == OCIIndex || t == DockerManifestList }

// Manifest is what a registry needs to know about a pushed manifest.
type Manifest struct {
	MediaType    string
	ArtifactType string            // OCI artifactType, or for an image the config's media type (as the referrers API reports it)
	Subject      *v1.Descriptor    // OCI 1.1 subject, if any
	Annotations  map[string]string // top-level annotations
	Blobs        []digest.Digest   // config and layers that must be in the repository
	Children     []digest.Digest   // manifests an index refers to
	// The same, as descriptors (sizes, platforms), for copying.
	BlobDescriptors  []v1.Descriptor
	ChildDescriptors []v1.Descriptor
}

// InvalidError says why a manifest was refused.
type InvalidError struct{ Reason string }

func (e *InvalidError) Error() string { return "manifest invalid: " + e.Reason }

func invalid(format string, a ...any) error { return &InvalidError{Reason: fmt.Sprintf(format, a...)} }

// raw has the fields of all four formats.
type raw struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        *v1.Descriptor    `json:"config"`
	Layers        []v1.Descriptor   `json:"layers"`
	Manifests     []v1.Descriptor   `json:"manifests"`
	Subject       *v1.Descriptor    `json:"subject"`
	Annotations   map[string]string `json:"annotations"`
	FSLayers      json.RawMessage   `json:"fsLayers"` // schema1
}

// Parse checks a manifest body sent with Content-Type contentType (which
// may be empty: the body's mediaType then decides).
func Parse(contentType string, body []byte) (*Manifest, error) {
	if len(body) > MaxSize {
		return nil, invalid("larger than %d bytes", MaxSize)
	}
	contentType, _, _ = strings.Cut(contentType, ";")
	contentType = strings.TrimSpace(contentType)
	var m raw
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, invalid("not valid JSON: %v", err)
	}
	if contentType == dockerSchema1 || contentType == dockerSchema1Signed ||
		m.MediaType == dockerSchema1 || m.MediaType == dockerSchema1Signed ||
		m.SchemaVersion == 1 || m.FSLayers != nil {
		return nil, invalid("Docker schema1 manifests are not supported; push with a client that writes schema2 or OCI manifests")
	}
	if m.SchemaVersion != 2 {
		return nil, invalid("schemaVersion must be 2, got %d", m.SchemaVersion)
	}
	mt := m.MediaType
	switch {
	case mt == "" && contentType == "":
		// OCI lets an image manifest or index leave mediaType out; tell
		// them apart by shape.
		if m.Manifests != nil {
			mt = OCIIndex
		} else {
			mt = OCIImage
		}
	case mt == "":
		mt = contentType
	case contentType != "" && contentType != mt:
		return nil, invalid("Content-Type %q does not match the manifest's mediaType %q", contentType, mt)
	}
	if !Supported(mt) {
		return nil, invalid("unsupported manifest media type %q", mt)
	}
	out := &Manifest{MediaType: mt, ArtifactType: m.ArtifactType, Subject: m.Subject, Annotations: m.Annotations}
	if m.Subject != nil {
		if err := checkDescriptor("subject", *m.Subject); err != nil {
			return nil, err
		}
	}
	if IsIndex(mt) {
		if m.Config != nil || m.Layers != nil {
			return nil, invalid("an index has no config or layers")
		}
		for i, d := range m.Manifests {
			if err := checkDescriptor(fmt.Sprintf("manifests[%d]", i), d); err != nil {
				return nil, err
			}
			out.Children = append(out.Children, d.Digest)
			out.ChildDescriptors = append(out.ChildDescriptors, d)
		}
		return out, nil
	}
	if m.Manifests != nil {
		return nil, invalid("an image manifest has no manifests list")
	}
	if m.Config == nil {
		return nil, invalid("config descriptor missing")
	}
	if err := checkDescriptor("config", *m.Config); err != nil {
		return nil, err
	}
	out.Blobs = append(out.Blobs, m.Config.Digest)
	out.BlobDescriptors = append(out.BlobDescriptors, *m.Config)
	if out.ArtifactType == "" {
		out.ArtifactType = m.Config.MediaType
	}
	for i, d := range m.Layers {
		if err := checkDescriptor(fmt.Sprintf("layers[%d]", i), d); err != nil {
			return nil, err
		}
		// Non-distributable (foreign) layers are fetched from their URLs,
		// never pushed: they need not be in the registry.
		if len(d.URLs) > 0 && (d.MediaType == dockerForeignLayer || strings.Contains(d.MediaType, ".nondistributable.")) {
			continue
		}
		out.Blobs = append(out.Blobs, d.Digest)
		out.BlobDescriptors = append(out.BlobDescriptors, d)
	}
	return out, nil
}

func checkDescriptor(where string, d v1.Descriptor) error {
	if err := d.Digest.Validate(); err != nil {
		return invalid("%s: digest %q: %v", where, d.Digest, err)
	}
	if d.Size < 0 {
		return invalid("%s: negative size", where)
	}
	if d.MediaType == "" {
		return invalid("%s: mediaType missing", where)
	}
	return nil
}
