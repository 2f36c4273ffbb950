package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

var (
	cfg     = digest.FromString("config")
	layer1  = digest.FromString("layer1")
	layer2  = digest.FromString("layer2")
	child1  = digest.FromString("child1")
	child2  = digest.FromString("child2")
	subject = digest.FromString("subject")
)

const (
	ociConfig    = "application/vnd.oci.image.config.v1+json"
	ociLayer     = "application/vnd.oci.image.layer.v1.tar+gzip"
	ociNonDist   = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
	dockerConfig = "application/vnd.docker.container.image.v1+json"
	dockerLayer  = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

// desc is a descriptor as JSON.
func desc(mediaType string, d digest.Digest, size int64, urls ...string) map[string]any {
	m := map[string]any{"mediaType": mediaType, "digest": d.String(), "size": size}
	if len(urls) > 0 {
		m["urls"] = urls
	}
	return m
}

// doc marshals a manifest body built from fields.
func doc(t *testing.T, fields map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// image is an OCI image manifest without mediaType, to which the caller adds fields.
func image(extra map[string]any) map[string]any {
	m := map[string]any{
		"schemaVersion": 2,
		"config":        desc(ociConfig, cfg, 10),
		"layers":        []any{desc(ociLayer, layer1, 100), desc(ociLayer, layer2, 200)},
	}
	for k, v := range extra {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	return m
}

func index(extra map[string]any) map[string]any {
	m := map[string]any{
		"schemaVersion": 2,
		"manifests":     []any{desc(OCIImage, child1, 500), desc(OCIImage, child2, 600)},
	}
	for k, v := range extra {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	return m
}

func TestParseAccepted(t *testing.T) {
	cases := []struct {
		name        string
		contentType string
		body        map[string]any
		want        Manifest
	}{
		{
			name:        "OCI image",
			contentType: OCIImage,
			body:        image(map[string]any{"mediaType": OCIImage, "annotations": map[string]string{"k": "v"}}),
			want: Manifest{MediaType: OCIImage, ArtifactType: ociConfig, Annotations: map[string]string{"k": "v"},
				Blobs: []digest.Digest{cfg, layer1, layer2}},
		},
		{
			name:        "OCI image with a subject",
			contentType: OCIImage,
			body:        image(map[string]any{"mediaType": OCIImage, "subject": desc(OCIImage, subject, 1234)}),
			want: Manifest{MediaType: OCIImage, ArtifactType: ociConfig,
				Subject: &v1.Descriptor{MediaType: OCIImage, Digest: subject, Size: 1234},
				Blobs:   []digest.Digest{cfg, layer1, layer2}},
		},
		{
			name:        "OCI image without layers",
			contentType: OCIImage,
			body:        image(map[string]any{"mediaType": OCIImage, "layers": []any{}}),
			want:        Manifest{MediaType: OCIImage, ArtifactType: ociConfig, Blobs: []digest.Digest{cfg}},
		},
		{
			name:        "OCI index",
			contentType: OCIIndex,
			body:        index(map[string]any{"mediaType": OCIIndex}),
			want:        Manifest{MediaType: OCIIndex, Children: []digest.Digest{child1, child2}},
		},
		{
			name:        "OCI index with artifactType and subject",
			contentType: OCIIndex,
			body: index(map[string]any{"mediaType": OCIIndex, "artifactType": "application/vnd.example.bundle",
				"subject": desc(OCIIndex, subject, 99), "annotations": map[string]string{"a": "b"}}),
			want: Manifest{MediaType: OCIIndex, ArtifactType: "application/vnd.example.bundle",
				Subject:     &v1.Descriptor{MediaType: OCIIndex, Digest: subject, Size: 99},
				Annotations: map[string]string{"a": "b"}, Children: []digest.Digest{child1, child2}},
		},
		{
			name:        "empty OCI index",
			contentType: OCIIndex,
			body:        index(map[string]any{"mediaType": OCIIndex, "manifests": []any{}}),
			want:        Manifest{MediaType: OCIIndex},
		},
		{
			name:        "Docker schema2",
			contentType: DockerSchema2,
			body: map[string]any{"schemaVersion": 2, "mediaType": DockerSchema2,
				"config": desc(dockerConfig, cfg, 10),
				"layers": []any{desc(dockerLayer, layer1, 100), desc(dockerLayer, layer2, 200)}},
			want: Manifest{MediaType: DockerSchema2, ArtifactType: dockerConfig, Blobs: []digest.Digest{cfg, layer1, layer2}},
		},
		{
			name:        "Docker manifest list",
			contentType: DockerManifestList,
			body: map[string]any{"schemaVersion": 2, "mediaType": DockerManifestList,
				"manifests": []any{desc(DockerSchema2, child1, 500), desc(DockerSchema2, child2, 600)}},
			want: Manifest{MediaType: DockerManifestList, Children: []digest.Digest{child1, child2}},
		},
		{
			name:        "no Content-Type: the body's mediaType decides",
			contentType: "",
			body: map[string]any{"schemaVersion": 2, "mediaType": DockerManifestList,
				"manifests": []any{desc(DockerSchema2, child1, 500)}},
			want: Manifest{MediaType: DockerManifestList, Children: []digest.Digest{child1}},
		},
		{
			name:        "mediaType missing: taken from Content-Type (Docker schema2)",
			contentType: DockerSchema2,
			body:        image(nil),
			want:        Manifest{MediaType: DockerSchema2, ArtifactType: ociConfig, Blobs: []digest.Digest{cfg, layer1, layer2}},
		},
		{
			name:        "mediaType missing: taken from Content-Type (OCI index)",
			contentType: OCIIndex,
			body:        index(nil),
			want:        Manifest{MediaType: OCIIndex, Children: []digest.Digest{child1, child2}},
		},
		{
			name:        "mediaType and Content-Type missing: an image by shape",
			contentType: "",
			body:        image(nil),
			want:        Manifest{MediaType: OCIImage, ArtifactType: ociConfig, Blobs: []digest.Digest{cfg, layer1, layer2}},
		},
		{
			name:        "mediaType and Content-Type missing: an index by shape",
			contentType: "",
			body:        index(nil),
			want:        Manifest{MediaType: OCIIndex, Children: []digest.Digest{child1, child2}},
		},
		{
			name:        "mediaType and Content-Type missing: an empty manifests list is still an index",
			contentType: "",
			body:        index(map[string]any{"manifests": []any{}}),
			want:        Manifest{MediaType: OCIIndex},
		},
		{
			name:        "Content-Type with parameters",
			contentType: OCIImage + "; charset=utf-8",
			body:        image(map[string]any{"mediaType": OCIImage}),
			want:        Manifest{MediaType: OCIImage, ArtifactType: ociConfig, Blobs: []digest.Digest{cfg, layer1, layer2}},
		},
		{
			name:        "Content-Type with parameters and spaces, mediaType missing",
			contentType: " " + OCIIndex + " ;charset=utf-8",
			body:        index(nil),
			want:        Manifest{MediaType: OCIIndex, Children: []digest.Digest{child1, child2}},
		},
		{
			name:        "artifactType wins over the config media type",
			contentType: OCIImage,
			body: image(map[string]any{"mediaType": OCIImage, "artifactType": "application/vnd.example.sbom.v1",
				"config": desc("application/vnd.oci.empty.v1+json", cfg, 2)}),
			want: Manifest{MediaType: OCIImage, ArtifactType: "application/vnd.example.sbom.v1", Blobs: []digest.Digest{cfg, layer1, layer2}},
		},
		{
			name:        "nondistributable OCI layer with URLs is not required",
			contentType: OCIImage,
			body: image(map[string]any{"mediaType": OCIImage, "layers": []any{
				desc(ociNonDist, layer1, 100, "https://example.com/layer1"), desc(ociLayer, layer2, 200)}}),
			want: Manifest{MediaType: OCIImage, ArtifactType: ociConfig, Blobs: []digest.Digest{cfg, layer2}},
		},
		{
			name:        "nondistributable OCI layer without URLs is required",
			contentType: OCIImage,
			body: image(map[string]any{"mediaType": OCIImage, "layers": []any{
				desc(ociNonDist, layer1, 100), desc(ociLayer, layer2, 200)}}),
			want: Manifest{MediaType: OCIImage, ArtifactType: ociConfig, Blobs: []digest.Digest{cfg, layer1, layer2}},
		},
		{
			name:        "an ordinary layer with URLs is still required",
			contentType: OCIImage,
			body: image(map[string]any{"mediaType": OCIImage, "layers": []any{
				desc(ociLayer, layer1, 100, "https://example.com/layer1")}}),
			want: Manifest{MediaType: OCIImage, ArtifactType: ociConfig, Blobs: []digest.Digest{cfg, layer1}},
		},
		{
			name:        "Docker foreign layer with URLs is not required",
			contentType: DockerSchema2,
			body: map[string]any{"schemaVersion": 2, "mediaType": DockerSchema2,
				"config": desc(dockerConfig, cfg, 10),
				"layers": []any{desc(dockerForeignLayer, layer1, 100, "https://example.com/foreign"), desc(dockerLayer, layer2, 200)}},
			want: Manifest{MediaType: DockerSchema2, ArtifactType: dockerConfig, Blobs: []digest.Digest{cfg, layer2}},
		},
		{
			name:        "Docker foreign layer without URLs is required",
			contentType: DockerSchema2,
			body: map[string]any{"schemaVersion": 2, "mediaType": DockerSchema2,
				"config": desc(dockerConfig, cfg, 10),
				"layers": []any{desc(dockerForeignLayer, layer1, 100)}},
			want: Manifest{MediaType: DockerSchema2, ArtifactType: dockerConfig, Blobs: []digest.Digest{cfg, layer1}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse(c.contentType, doc(t, c.body))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			// The descriptors are the digests' own, with sizes (and
			// platforms): the mirror copies from them.
			var blobs, children []digest.Digest
			for _, d := range got.BlobDescriptors {
				blobs = append(blobs, d.Digest)
				if d.Size <= 0 {
					t.Errorf("blob descriptor %s without its size", d.Digest)
				}
			}
			for _, d := range got.ChildDescriptors {
				children = append(children, d.Digest)
			}
			if !reflect.DeepEqual(blobs, got.Blobs) || !reflect.DeepEqual(children, got.Children) {
				t.Errorf("descriptors %v %v do not match digests %v %v", blobs, children, got.Blobs, got.Children)
			}
			got.BlobDescriptors, got.ChildDescriptors = nil, nil
			if !reflect.DeepEqual(*got, c.want) {
				t.Fatalf("Parse:\n got %+v\nwant %+v", *got, c.want)
			}
		})
	}
}

func TestParseRefused(t *testing.T) {
	cases := []struct {
		name        string
		contentType string
		body        []byte
		want        string // in the reason
	}{
		{"schema1 by Content-Type", "application/vnd.docker.distribution.manifest.v1+json",
			doc(t, image(nil)), "schema1"},
		{"signed schema1 by Content-Type (with parameters)", "application/vnd.docker.distribution.manifest.v1+prettyjws; charset=utf-8",
			doc(t, image(nil)), "schema1"},
		{"schema1 by mediaType", "",
			doc(t, image(map[string]any{"mediaType": "application/vnd.docker.distribution.manifest.v1+json"})), "schema1"},
		{"signed schema1 by mediaType", "",
			doc(t, image(map[string]any{"mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws"})), "schema1"},
		{"schema1 by schemaVersion 1", "application/json",
			doc(t, map[string]any{"schemaVersion": 1, "name": "team/app", "tag": "latest", "architecture": "amd64"}), "schema1"},
		{"schema1 by fsLayers", "",
			doc(t, image(map[string]any{"fsLayers": []any{map[string]string{"blobSum": layer1.String()}}})), "schema1"},
		{"Content-Type differs from mediaType", DockerSchema2,
			doc(t, image(map[string]any{"mediaType": OCIImage})), "does not match"},
		{"index Content-Type for an image mediaType", OCIIndex,
			doc(t, image(map[string]any{"mediaType": OCIImage})), "does not match"},
		{"unsupported mediaType", "",
			doc(t, image(map[string]any{"mediaType": "application/vnd.example.thing+json"})), "unsupported manifest media type"},
		{"unsupported Content-Type, mediaType missing", "application/json",
			doc(t, image(nil)), "unsupported manifest media type"},
		{"malformed JSON", OCIImage, []byte(`{"schemaVersion": 2, "config": `), "not valid JSON"},
		{"not an object", OCIImage, []byte(`[1, 2, 3]`), "not valid JSON"},
		{"empty body", OCIImage, []byte{}, "not valid JSON"},
		{"schemaVersion 3", OCIImage, doc(t, image(map[string]any{"mediaType": OCIImage, "schemaVersion": 3})), "schemaVersion must be 2, got 3"},
		{"schemaVersion missing", OCIImage, doc(t, image(map[string]any{"mediaType": OCIImage, "schemaVersion": nil})), "schemaVersion must be 2, got 0"},
		{"bad config digest", OCIImage,
			doc(t, image(map[string]any{"mediaType": OCIImage, "config": desc(ociConfig, "sha256:nothex", 10)})), "config: digest"},
		{"bad layer digest", OCIImage,
			doc(t, image(map[string]any{"mediaType": OCIImage, "layers": []any{desc(ociLayer, layer1, 1), desc(ociLayer, "md5:abc", 1)}})), "layers[1]: digest"},
		{"bad child digest", OCIIndex,
			doc(t, index(map[string]any{"mediaType": OCIIndex, "manifests": []any{desc(OCIImage, digest.Digest("sha256:"+strings.Repeat("a", 63)), 1)}})), "manifests[0]: digest"},
		{"bad subject digest", OCIImage,
			doc(t, image(map[string]any{"mediaType": OCIImage, "subject": desc(OCIImage, "", 1)})), "subject: digest"},
		{"negative layer size", OCIImage,
			doc(t, image(map[string]any{"mediaType": OCIImage, "layers": []any{desc(ociLayer, layer1, 1), desc(ociLayer, layer2, -1)}})), "layers[1]: negative size"},
		{"negative config size", OCIImage,
			doc(t, image(map[string]any{"mediaType": OCIImage, "config": desc(ociConfig, cfg, -5)})), "config: negative size"},
		{"negative child size", OCIIndex,
			doc(t, index(map[string]any{"mediaType": OCIIndex, "manifests": []any{desc(OCIImage, child1, -1)}})), "manifests[0]: negative size"},
		{"layer mediaType missing", OCIImage,
			doc(t, image(map[string]any{"mediaType": OCIImage, "layers": []any{desc("", layer1, 1)}})), "layers[0]: mediaType missing"},
		{"config missing", OCIImage, doc(t, image(map[string]any{"mediaType": OCIImage, "config": nil})), "config descriptor missing"},
		{"config missing in Docker schema2", DockerSchema2,
			doc(t, map[string]any{"schemaVersion": 2, "mediaType": DockerSchema2, "layers": []any{desc(dockerLayer, layer1, 1)}}), "config descriptor missing"},
		{"index with layers", OCIIndex,
			doc(t, index(map[string]any{"mediaType": OCIIndex, "layers": []any{desc(ociLayer, layer1, 1)}})), "an index has no config or layers"},
		{"index with config", DockerManifestList,
			doc(t, index(map[string]any{"mediaType": DockerManifestList, "config": desc(ociConfig, cfg, 1)})), "an index has no config or layers"},
		{"image with manifests", OCIImage,
			doc(t, image(map[string]any{"mediaType": OCIImage, "manifests": []any{desc(OCIImage, child1, 1)}})), "an image manifest has no manifests list"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := Parse(c.contentType, c.body)
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", m)
			}
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("error %T %v; want *InvalidError", err, err)
			}
			if !strings.Contains(ie.Reason, c.want) {
				t.Fatalf("reason %q; want it to mention %q", ie.Reason, c.want)
			}
			if !strings.HasPrefix(err.Error(), "manifest invalid: ") {
				t.Fatalf("Error() = %q", err.Error())
			}
		})
	}
}

// TestParseSizeLimit: MaxSize bytes are accepted, one more is refused.
func TestParseSizeLimit(t *testing.T) {
	body := doc(t, image(map[string]any{"mediaType": OCIImage}))
	atLimit := append(body, bytes.Repeat([]byte(" "), MaxSize-len(body))...) // JSON allows trailing space
	if len(atLimit) != MaxSize {
		t.Fatalf("test body is %d bytes", len(atLimit))
	}
	if _, err := Parse(OCIImage, atLimit); err != nil {
		t.Fatalf("a %d-byte manifest: %v", MaxSize, err)
	}
	over := append(atLimit, ' ')
	_, err := Parse(OCIImage, over)
	var ie *InvalidError
	if !errors.As(err, &ie) || !strings.Contains(ie.Reason, "larger than") {
		t.Fatalf("a %d-byte manifest: %v; want refused as too large", len(over), err)
	}
	if MaxSize != 4<<20 {
		t.Fatalf("MaxSize = %d; want 4 MiB", MaxSize)
	}
}

func TestSupportedAndIsIndex(t *testing.T) {
	for _, c := range []struct {
		t                string
		supported, index bool
	}{
		{OCIImage, true, false},
		{OCIIndex, true, true},
		{DockerSchema2, true, false},
		{DockerManifestList, true, true},
		{dockerSchema1, false, false},
		{dockerSchema1Signed, false, false},
		{"application/json", false, false},
		{"", false, false},
	} {
		if Supported(c.t) != c.supported || IsIndex(c.t) != c.index {
			t.Errorf("%q: Supported %v IsIndex %v; want %v %v", c.t, Supported(c.t), IsIndex(c.t), c.supported, c.index)
		}
	}
}
