package manifest

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// FuzzParse: every body is accepted or refused with an *InvalidError;
// what is accepted is a supported type, names only valid descriptors,
// records what its shape says (an index children, an image its config
// and layers) and parses again to the same result under its own type.
// Seeds: testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		m, err := Parse(contentType, body)
		if err != nil {
			var ie *InvalidError
			if !errors.As(err, &ie) || ie.Reason == "" {
				t.Fatalf("refused with %T %q, not an *InvalidError with a reason", err, err)
			}
			return
		}
		if !Supported(m.MediaType) {
			t.Fatalf("accepted with unsupported media type %q", m.MediaType)
		}
		var declared struct {
			MediaType string `json:"mediaType"`
		}
		if json.Unmarshal(body, &declared) != nil || (declared.MediaType != "" && declared.MediaType != m.MediaType) {
			t.Fatalf("accepted as %q, body declares %q", m.MediaType, declared.MediaType)
		}
		check := func(what string, ds []v1.Descriptor) {
			for _, d := range ds {
				if d.Digest.Validate() != nil || d.Size < 0 || d.MediaType == "" {
					t.Fatalf("accepted an invalid %s descriptor %+v", what, d)
				}
			}
		}
		check("blob", m.BlobDescriptors)
		check("child", m.ChildDescriptors)
		if m.Subject != nil {
			check("subject", []v1.Descriptor{*m.Subject})
		}
		if len(m.Blobs) != len(m.BlobDescriptors) || len(m.Children) != len(m.ChildDescriptors) {
			t.Fatalf("digests and descriptors differ: %d/%d blobs, %d/%d children",
				len(m.Blobs), len(m.BlobDescriptors), len(m.Children), len(m.ChildDescriptors))
		}
		for i, d := range m.ChildDescriptors {
			if m.Children[i] != d.Digest {
				t.Fatalf("child %d: %s vs descriptor %s", i, m.Children[i], d.Digest)
			}
		}
		for i, d := range m.BlobDescriptors {
			if m.Blobs[i] != d.Digest {
				t.Fatalf("blob %d: %s vs descriptor %s", i, m.Blobs[i], d.Digest)
			}
		}
		if IsIndex(m.MediaType) {
			if len(m.Blobs) != 0 {
				t.Fatalf("an index with blobs: %v", m.Blobs)
			}
		} else if len(m.Children) != 0 || len(m.Blobs) == 0 {
			t.Fatalf("an image with children %v or without its config (blobs %v)", m.Children, m.Blobs)
		}
		again, err := Parse(m.MediaType, body)
		if err != nil {
			t.Fatalf("accepted under %q, refused under its own type %q: %v", contentType, m.MediaType, err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("parses differently under its own type:\n%+v\n%+v", m, again)
		}
	})
}
