package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gaia-registry/gaia/registry/manifest"
	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
	"github.com/gaia-registry/gaia/registry/uploadsession"
)

const (
	ociImage     = "application/vnd.oci.image.manifest.v1+json"
	ociIndex     = "application/vnd.oci.image.index.v1+json"
	ociConfig    = "application/vnd.oci.image.config.v1+json"
	ociLayer     = "application/vnd.oci.image.layer.v1.tar+gzip"
	ociEmpty     = "application/vnd.oci.empty.v1+json"
	sbomArtifact = "application/vnd.example.sbom.v1"
	sigArtifact  = "application/vnd.example.signature.v1"
)

// pushBlob pushes data to repo in one monolithic POST and returns its digest.
func pushBlob(t *testing.T, base, repo string, data []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(data)
	expect(t, "push blob", do(t, "POST", base+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), data), 201, "")
	return d
}

func descriptor(mediaType string, d digest.Digest, size int) map[string]any {
	return map[string]any{"mediaType": mediaType, "digest": d.String(), "size": size}
}

// body marshals a manifest indented, so that a registry re-encoding it
// instead of keeping the pushed bytes would change its digest.
func body(t *testing.T, fields map[string]any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(fields, "", "   ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// pushImage pushes a fresh config and layer to repo and returns an OCI
// image manifest over them (not pushed), with extra fields added.
func pushImage(t *testing.T, base, repo string, extra map[string]any) []byte {
	t.Helper()
	config := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","nonce":%q}`, rand16()))
	layer, _ := randomBlob(1500)
	cd, ld := pushBlob(t, base, repo, config), pushBlob(t, base, repo, layer)
	fields := map[string]any{
		"schemaVersion": 2,
		"mediaType":     ociImage,
		"config":        descriptor(ociConfig, cd, len(config)),
		"layers":        []any{descriptor(ociLayer, ld, len(layer))},
	}
	for k, v := range extra {
		fields[k] = v
	}
	return body(t, fields)
}

func rand16() string {
	b, _ := randomBlob(8)
	return fmt.Sprintf("%x", b)
}

// putManifest pushes a manifest by tag or digest and checks the 201.
func putManifest(t *testing.T, base, repo, ref, contentType string, b []byte) resp {
	t.Helper()
	r := do(t, "PUT", base+"/v2/"+repo+"/manifests/"+ref, b, "Content-Type", contentType)
	expect(t, "PUT manifest "+repo+":"+ref, r, 201, "")
	d := digest.FromBytes(b)
	if strings.HasPrefix(ref, "sha512:") {
		d = digest.SHA512.FromBytes(b)
	}
	if r.header.Get("Docker-Content-Digest") != d.String() || r.header.Get("Location") != "/v2/"+repo+"/manifests/"+d.String() {
		t.Fatalf("PUT manifest headers: %v; want digest %s", r.header, d)
	}
	return r
}

// ociError is one entry of the spec's error body.
type ociError struct {
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Detail  json.RawMessage `json:"detail"`
}

func ociErrors(t *testing.T, r resp) []ociError {
	t.Helper()
	var b struct {
		Errors []ociError `json:"errors"`
	}
	if err := json.Unmarshal(r.body, &b); err != nil {
		t.Fatalf("error body %s: %v", r.body, err)
	}
	return b.Errors
}

// fetched checks a GET or HEAD of a manifest.
func fetched(t *testing.T, what string, r resp, method, contentType string, d digest.Digest, content []byte) {
	t.Helper()
	if r.status != 200 {
		t.Fatalf("%s: status %d; body %s", what, r.status, r.body)
	}
	if got := r.header.Get("Content-Type"); got != contentType {
		t.Fatalf("%s: Content-Type %q; want %q", what, got, contentType)
	}
	if got := r.header.Get("Docker-Content-Digest"); got != d.String() {
		t.Fatalf("%s: Docker-Content-Digest %q; want %s", what, got, d)
	}
	if got := r.header.Get("Content-Length"); got != strconv.Itoa(len(content)) {
		t.Fatalf("%s: Content-Length %q; want %d", what, got, len(content))
	}
	if method == "HEAD" {
		if len(r.body) != 0 {
			t.Fatalf("%s: HEAD returned %d body bytes", what, len(r.body))
		}
		return
	}
	if !bytes.Equal(r.body, content) {
		t.Fatalf("%s: body differs from the pushed bytes:\n got %s\nwant %s", what, r.body, content)
	}
}

func TestManifestPushPull(t *testing.T) {
	a, b := twoServers(t)
	m := pushImage(t, a, "team/app", nil)
	d := digest.FromBytes(m)
	putManifest(t, a, "team/app", "v1", ociImage, m)

	for _, ref := range []string{"v1", d.String()} {
		u := b + "/v2/team/app/manifests/" + ref
		fetched(t, "GET "+ref+" from the other server", do(t, "GET", u, nil), "GET", ociImage, d, m)
		fetched(t, "HEAD "+ref+" from the other server", do(t, "HEAD", u, nil), "HEAD", ociImage, d, m)
	}
	// Pushing it again, by tag from the other server, is fine and changes nothing.
	putManifest(t, b, "team/app", "v1", ociImage, m)
	fetched(t, "GET after a repeated push", do(t, "GET", a+"/v2/team/app/manifests/v1", nil), "GET", ociImage, d, m)

	expect(t, "unknown tag", do(t, "GET", b+"/v2/team/app/manifests/v2", nil), 404, "MANIFEST_UNKNOWN")
	r := do(t, "HEAD", b+"/v2/team/app/manifests/v2", nil)
	if r.status != 404 || len(r.body) != 0 {
		t.Fatalf("HEAD of an unknown tag: %d, %d body bytes", r.status, len(r.body))
	}
	expect(t, "unknown digest", do(t, "GET", b+"/v2/team/app/manifests/"+digest.FromString("x").String(), nil), 404, "MANIFEST_UNKNOWN")
	expect(t, "another repository", do(t, "GET", b+"/v2/team/other/manifests/v1", nil), 404, "MANIFEST_UNKNOWN")
	expect(t, "bad digest", do(t, "GET", b+"/v2/team/app/manifests/sha256:zz", nil), 400, "DIGEST_INVALID")
}

func TestManifestPushRefused(t *testing.T) {
	a, b := twoServers(t)
	config := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := pushBlob(t, a, "team/app", config)
	_, missing1 := randomBlob(100)
	_, missing2 := randomBlob(100)
	m := body(t, map[string]any{
		"schemaVersion": 2, "mediaType": ociImage,
		"config": descriptor(ociConfig, cd, len(config)),
		"layers": []any{descriptor(ociLayer, missing1, 100), descriptor(ociLayer, missing2, 100)},
	})
	r := do(t, "PUT", a+"/v2/team/app/manifests/broken", m, "Content-Type", ociImage)
	expect(t, "unknown layers", r, 400, "MANIFEST_BLOB_UNKNOWN")
	var named []string
	for _, e := range ociErrors(t, r) {
		var detail struct{ Digest string }
		if err := json.Unmarshal(e.Detail, &detail); err != nil || e.Code != "MANIFEST_BLOB_UNKNOWN" {
			t.Fatalf("error %+v: %v", e, err)
		}
		named = append(named, detail.Digest)
	}
	slices.Sort(named)
	want := []string{missing1.String(), missing2.String()}
	slices.Sort(want)
	if !slices.Equal(named, want) {
		t.Fatalf("errors name %v; want exactly the missing layers %v", named, want)
	}
	// Nothing half-written.
	expect(t, "tag of the refused manifest", do(t, "GET", b+"/v2/team/app/manifests/broken", nil), 404, "MANIFEST_UNKNOWN")
	expect(t, "digest of the refused manifest", do(t, "GET", b+"/v2/team/app/manifests/"+digest.FromBytes(m).String(), nil), 404, "MANIFEST_UNKNOWN")
	r = do(t, "GET", b+"/v2/team/app/tags/list", nil)
	if r.status != 200 || !bytes.Contains(r.body, []byte(`"tags":[]`)) {
		t.Fatalf("tags after a refused push: %d %s", r.status, r.body)
	}
	r = do(t, "GET", b+"/v2/_catalog", nil)
	if r.status != 200 || !bytes.Contains(r.body, []byte(`"repositories":[]`)) {
		t.Fatalf("catalog after a refused push: %d %s", r.status, r.body)
	}

	expect(t, "malformed JSON", do(t, "PUT", a+"/v2/team/app/manifests/bad", []byte(`{"schemaVersion":2,`), "Content-Type", ociImage), 400, "MANIFEST_INVALID")
	expect(t, "Content-Type differs from mediaType",
		do(t, "PUT", a+"/v2/team/app/manifests/bad", pushImage(t, a, "team/app", nil), "Content-Type", ociIndex), 400, "MANIFEST_INVALID")
	schema1 := []byte(`{"schemaVersion":1,"name":"team/app","tag":"old","architecture":"amd64","fsLayers":[{"blobSum":"` + cd.String() + `"}],"history":[]}`)
	r = do(t, "PUT", a+"/v2/team/app/manifests/old", schema1, "Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
	expect(t, "schema1", r, 400, "MANIFEST_INVALID")
	if !bytes.Contains(r.body, []byte("schema1")) {
		t.Fatalf("schema1 refusal does not say why: %s", r.body)
	}
	expect(t, "schema1 tag", do(t, "GET", b+"/v2/team/app/manifests/old", nil), 404, "MANIFEST_UNKNOWN")

	// Digest in the URL differs from the body's.
	good := pushImage(t, a, "team/app", nil)
	other := digest.FromString("something else")
	r = do(t, "PUT", a+"/v2/team/app/manifests/"+other.String(), good, "Content-Type", ociImage)
	expect(t, "digest mismatch", r, 400, "DIGEST_INVALID")
	expect(t, "nothing under the URL's digest", do(t, "GET", b+"/v2/team/app/manifests/"+other.String(), nil), 404, "MANIFEST_UNKNOWN")
	expect(t, "nothing under the body's digest", do(t, "GET", b+"/v2/team/app/manifests/"+digest.FromBytes(good).String(), nil), 404, "MANIFEST_UNKNOWN")
}

// TestManifestSizeLimit: 4 MiB is accepted; a byte more is 413, whether
// the length is announced or the body streamed.
func TestManifestSizeLimit(t *testing.T) {
	a, b := twoServers(t)
	m := pushImage(t, a, "team/app", nil)
	atLimit := append(slices.Clone(m), bytes.Repeat([]byte(" "), manifest.MaxSize-len(m))...)
	over := append(slices.Clone(atLimit), ' ')

	r := do(t, "PUT", a+"/v2/team/app/manifests/big", over, "Content-Type", ociImage)
	expect(t, "oversized manifest", r, 413, "SIZE_INVALID")

	req, _ := http.NewRequest("PUT", a+"/v2/team/app/manifests/big", bytes.NewReader(over))
	req.ContentLength = -1 // length unknown: sent chunked
	req.Header.Set("Content-Type", ociImage)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := io.ReadAll(res.Body)
	res.Body.Close()
	expect(t, "oversized streamed manifest", resp{res.StatusCode, res.Header, rb}, 413, "SIZE_INVALID")
	expect(t, "oversized manifest not stored", do(t, "GET", b+"/v2/team/app/manifests/big", nil), 404, "MANIFEST_UNKNOWN")

	putManifest(t, a, "team/app", "big", ociImage, atLimit)
	fetched(t, "4 MiB manifest", do(t, "GET", b+"/v2/team/app/manifests/big", nil), "GET", ociImage, digest.FromBytes(atLimit), atLimit)
}

func TestManifestSHA512(t *testing.T) {
	a, b := twoServers(t)
	m := pushImage(t, a, "team/app", nil)
	d := digest.SHA512.FromBytes(m)
	putManifest(t, a, "team/app", d.String(), ociImage, m)
	fetched(t, "GET by sha512", do(t, "GET", b+"/v2/team/app/manifests/"+d.String(), nil), "GET", ociImage, d, m)
	fetched(t, "HEAD by sha512", do(t, "HEAD", b+"/v2/team/app/manifests/"+d.String(), nil), "HEAD", ociImage, d, m)
	expect(t, "not stored under its sha256", do(t, "GET", b+"/v2/team/app/manifests/"+digest.FromBytes(m).String(), nil), 404, "MANIFEST_UNKNOWN")
	// A sha512 reference whose content differs.
	r := do(t, "PUT", a+"/v2/team/app/manifests/"+digest.SHA512.FromString("other").String(), m, "Content-Type", ociImage)
	expect(t, "sha512 mismatch", r, 400, "DIGEST_INVALID")
}

func TestNameAndTagValidation(t *testing.T) {
	a, _ := twoServers(t)
	m := pushImage(t, a, "team/app", nil)
	for _, name := range []string{"UPPER/case", "a/../b", "a//b", "-a", "a/", strings.Repeat("a", 256)} {
		expect(t, "GET name "+name, do(t, "GET", a+"/v2/"+name+"/manifests/latest", nil), 400, "NAME_INVALID")
		expect(t, "PUT name "+name, do(t, "PUT", a+"/v2/"+name+"/manifests/latest", m, "Content-Type", ociImage), 400, "NAME_INVALID")
		expect(t, "tags/list name "+name, do(t, "GET", a+"/v2/"+name+"/tags/list", nil), 400, "NAME_INVALID")
	}
	// At the limit: valid, just unknown.
	expect(t, "255-character name", do(t, "GET", a+"/v2/"+strings.Repeat("a", 255)+"/manifests/latest", nil), 404, "MANIFEST_UNKNOWN")
	for _, tag := range []string{"-bad", ".bad", strings.Repeat("t", 129)} {
		expect(t, "GET tag "+tag, do(t, "GET", a+"/v2/team/app/manifests/"+tag, nil), 400, "TAG_INVALID")
		expect(t, "PUT tag "+tag, do(t, "PUT", a+"/v2/team/app/manifests/"+tag, m, "Content-Type", ociImage), 400, "TAG_INVALID")
	}
	expect(t, "128-character tag", do(t, "GET", a+"/v2/team/app/manifests/"+strings.Repeat("t", 128), nil), 404, "MANIFEST_UNKNOWN")
	// The refused pushes stored nothing; a 128-character tag is pushed.
	putManifest(t, a, "team/app", strings.Repeat("t", 128), ociImage, m)
	r := do(t, "GET", a+"/v2/team/app/tags/list", nil)
	if want := `{"name":"team/app","tags":["` + strings.Repeat("t", 128) + `"]}`; r.status != 200 || strings.TrimSpace(string(r.body)) != want {
		t.Fatalf("tags after refused pushes: %d %s", r.status, r.body)
	}
	r = do(t, "GET", a+"/v2/_catalog", nil)
	if r.status != 200 || strings.TrimSpace(string(r.body)) != `{"repositories":["team/app"]}` {
		t.Fatalf("catalog after refused pushes: %d %s", r.status, r.body)
	}
}

func TestManifestAccept(t *testing.T) {
	a, b := twoServers(t)
	m := pushImage(t, a, "team/app", nil)
	d := digest.FromBytes(m)
	putManifest(t, a, "team/app", "img", ociImage, m)
	idx := body(t, map[string]any{"schemaVersion": 2, "mediaType": ociIndex,
		"manifests": []any{descriptor(ociImage, d, len(m))}})
	putManifest(t, a, "team/app", "idx", ociIndex, idx)

	for _, c := range []struct {
		ref, accept string
		ok          bool
	}{
		{"img", ociIndex, false},
		{"img", "application/vnd.docker.distribution.manifest.v2+json", false},
		{"img", "*/*", true},
		{"img", "application/*", true},
		{"img", ociImage, true},
		{"img", ociIndex + ", " + ociImage + ";q=0.9", true},
		{"img", "application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.oci.image.manifest.v1+json", true},
		{"idx", ociImage, false},
		{"idx", ociImage + ", " + ociIndex, true},
		{d.String(), ociIndex, false},
		{d.String(), ociImage, true},
	} {
		for _, method := range []string{"GET", "HEAD"} {
			r := do(t, method, b+"/v2/team/app/manifests/"+c.ref, nil, "Accept", c.accept)
			switch {
			case c.ok && c.ref == "idx":
				fetched(t, method+" "+c.ref+" Accept "+c.accept, r, method, ociIndex, digest.FromBytes(idx), idx)
			case c.ok:
				fetched(t, method+" "+c.ref+" Accept "+c.accept, r, method, ociImage, d, m)
			case method == "GET":
				expect(t, method+" "+c.ref+" Accept "+c.accept, r, 404, "MANIFEST_UNKNOWN")
			default:
				expect(t, method+" "+c.ref+" Accept "+c.accept, r, 404, "")
			}
		}
	}
}

// TestManifestListForSchema2Client: a client that reads Docker schema2
// manifests but no manifest lists, asking for a tag that is a manifest
// list, gets the list's linux/amd64 image, as from distribution.
func TestManifestListForSchema2Client(t *testing.T) {
	a, b := twoServers(t)
	const (
		schema2      = manifest.DockerSchema2
		list         = manifest.DockerManifestList
		dockerConfig = "application/vnd.docker.container.image.v1+json"
		dockerLayer  = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	)
	image := func(arch string) ([]byte, digest.Digest) {
		config := []byte(fmt.Sprintf(`{"architecture":%q,"os":"linux","nonce":%q}`, arch, rand16()))
		layer, _ := randomBlob(700)
		cd, ld := pushBlob(t, a, "team/app", config), pushBlob(t, a, "team/app", layer)
		m := body(t, map[string]any{"schemaVersion": 2, "mediaType": schema2,
			"config": descriptor(dockerConfig, cd, len(config)), "layers": []any{descriptor(dockerLayer, ld, len(layer))}})
		putManifest(t, a, "team/app", digest.FromBytes(m).String(), schema2, m)
		return m, digest.FromBytes(m)
	}
	child := func(m []byte, os, arch, variant string) map[string]any {
		d := descriptor(schema2, digest.FromBytes(m), len(m))
		d["platform"] = map[string]any{"os": os, "architecture": arch, "variant": variant}
		return d
	}
	arm, _ := image("arm64")
	amd, amdDigest := image("amd64")
	armv7, _ := image("arm")
	multi := body(t, map[string]any{"schemaVersion": 2, "mediaType": list, "manifests": []any{
		child(arm, "linux", "arm64", "v8"), child(amd, "windows", "amd64", ""), child(amd, "linux", "amd64", ""), child(armv7, "linux", "arm", "v7")}})
	putManifest(t, a, "team/app", "multi", list, multi)
	armOnly := body(t, map[string]any{"schemaVersion": 2, "mediaType": list, "manifests": []any{child(arm, "linux", "arm64", "v8")}})
	putManifest(t, a, "team/app", "arm-only", list, armOnly)

	for _, method := range []string{"GET", "HEAD"} {
		what := method + " multi, schema2 only"
		fetched(t, what, do(t, method, b+"/v2/team/app/manifests/multi", nil, "Accept", schema2), method, schema2, amdDigest, amd)
		// Old docker clients send these too; none of them is a list.
		fetched(t, what+" and schema1", do(t, method, b+"/v2/team/app/manifests/multi", nil,
			"Accept", schema2+", application/vnd.docker.distribution.manifest.v1+prettyjws, application/json"), method, schema2, amdDigest, amd)
		// A client that reads lists, or says nothing, gets the list.
		fetched(t, method+" multi, lists too", do(t, method, b+"/v2/team/app/manifests/multi", nil, "Accept", schema2+", "+list),
			method, list, digest.FromBytes(multi), multi)
		fetched(t, method+" multi, no Accept", do(t, method, b+"/v2/team/app/manifests/multi", nil), method, list, digest.FromBytes(multi), multi)
		// By digest the list's bytes or nothing.
		r := do(t, method, b+"/v2/team/app/manifests/"+digest.FromBytes(multi).String(), nil, "Accept", schema2)
		// No linux/amd64 image: nothing to give.
		r2 := do(t, method, b+"/v2/team/app/manifests/arm-only", nil, "Accept", schema2)
		// The image is there, but the client reads neither it nor lists.
		r3 := do(t, method, b+"/v2/team/app/manifests/multi", nil, "Accept", ociImage)
		for i, r := range []resp{r, r2, r3} {
			if method == "GET" {
				expect(t, fmt.Sprintf("%s case %d", method, i), r, 404, "MANIFEST_UNKNOWN")
			} else {
				expect(t, fmt.Sprintf("%s case %d", method, i), r, 404, "")
			}
		}
	}
}

// listPages follows Link headers from first, alternating servers, and
// returns each page's names. It checks every Link against the spec's form.
func listPages(t *testing.T, servers []string, first, path, field string, n int) [][]string {
	t.Helper()
	var pages [][]string
	next := first
	for i := 0; next != ""; i++ {
		if i > 100 {
			t.Fatalf("more than 100 pages")
		}
		r := do(t, "GET", servers[i%len(servers)]+next, nil)
		if r.status != 200 || r.header.Get("Content-Type") != "application/json" {
			t.Fatalf("GET %s: %d %q %s", next, r.status, r.header.Get("Content-Type"), r.body)
		}
		var page map[string]json.RawMessage
		var names []string
		if err := json.Unmarshal(r.body, &page); err != nil || json.Unmarshal(page[field], &names) != nil || names == nil {
			t.Fatalf("GET %s: body %s", next, r.body)
		}
		if len(names) > n {
			t.Fatalf("GET %s: %d names, more than n=%d", next, len(names), n)
		}
		pages = append(pages, names)
		link := r.header.Get("Link")
		if link == "" {
			break
		}
		if len(names) == 0 {
			t.Fatalf("GET %s: an empty page with a Link %q", next, link)
		}
		want := fmt.Sprintf(`<%s?last=%s&n=%d>; rel="next"`, path, url.QueryEscape(names[len(names)-1]), n)
		if link != want {
			t.Fatalf("GET %s: Link %q; want %q", next, link, want)
		}
		next = strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
	}
	return pages
}

func TestTagsList(t *testing.T) {
	a, b := twoServers(t)
	m := pushImage(t, a, "team/app", nil)
	// Byte order: upper case, '_', lower case; "a" < "a-1" < "a1"; "v10" < "v9".
	want := []string{"V1", "_x", "a", "a-1", "a1", "latest", "v10", "v9", "v9.1"}
	for _, tag := range []string{"v9", "latest", "a1", "V1", "v10", "a-1", "_x", "v9.1", "a"} {
		putManifest(t, a, "team/app", tag, ociImage, m)
	}
	pages := listPages(t, []string{a, b}, "/v2/team/app/tags/list?n=2", "/v2/team/app/tags/list", "tags", 2)
	if len(pages) != 5 || len(pages[4]) != 1 {
		t.Fatalf("pages of 2: %q", pages)
	}
	if got := slices.Concat(pages...); !slices.Equal(got, want) {
		t.Fatalf("tags by pages:\n got %q\nwant %q", got, want)
	}
	// Pages that end exactly at the last tag have no Link.
	if pages := listPages(t, []string{b}, "/v2/team/app/tags/list?n=3", "/v2/team/app/tags/list", "tags", 3); len(pages) != 3 || !slices.Equal(slices.Concat(pages...), want) {
		t.Fatalf("pages of 3: %q", pages)
	}
	r := do(t, "GET", b+"/v2/team/app/tags/list", nil)
	if r.status != 200 || r.header.Get("Link") != "" {
		t.Fatalf("tags/list without n: %d Link %q", r.status, r.header.Get("Link"))
	}
	var all struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(r.body, &all); err != nil || all.Name != "team/app" || !slices.Equal(all.Tags, want) {
		t.Fatalf("tags/list without n: %s", r.body)
	}
	r = do(t, "GET", b+"/v2/team/app/tags/list?last=a", nil)
	if err := json.Unmarshal(r.body, &all); err != nil || !slices.Equal(all.Tags, want[3:]) || r.header.Get("Link") != "" {
		t.Fatalf("tags/list?last=a: %s", r.body)
	}
	for _, n := range []string{"-1", "abc", "1.5"} {
		expect(t, "n="+n, do(t, "GET", a+"/v2/team/app/tags/list?n="+n, nil), 400, "PAGINATION_NUMBER_INVALID")
	}
	expect(t, "unknown repository", do(t, "GET", a+"/v2/team/nothing/tags/list", nil), 404, "NAME_UNKNOWN")
}

func TestCatalog(t *testing.T) {
	a, b := twoServers(t)
	// Byte order: '.' < '/', a name before its extensions.
	want := []string{"alpha", "team.a", "team/app", "team/app-b", "zeta/x/y"}
	for _, repo := range []string{"zeta/x/y", "team/app", "alpha", "team/app-b", "team.a"} {
		putManifest(t, a, repo, "latest", ociImage, pushImage(t, a, repo, nil))
	}
	pushBlob(t, a, "blobs/only", []byte("no manifest here"))
	pages := listPages(t, []string{b, a}, "/v2/_catalog?n=2", "/v2/_catalog", "repositories", 2)
	if len(pages) != 3 || !slices.Equal(slices.Concat(pages...), want) {
		t.Fatalf("catalog pages of 2: %q; want %q", pages, want)
	}
	if pages := listPages(t, []string{a}, "/v2/_catalog?n=5", "/v2/_catalog", "repositories", 5); len(pages) != 1 || !slices.Equal(pages[0], want) {
		t.Fatalf("catalog page of 5: %q", pages)
	}
	r := do(t, "GET", b+"/v2/_catalog", nil)
	if r.status != 200 || r.header.Get("Link") != "" || strings.TrimSpace(string(r.body)) != `{"repositories":["alpha","team.a","team/app","team/app-b","zeta/x/y"]}` {
		t.Fatalf("catalog without n: %d %q %s", r.status, r.header.Get("Link"), r.body)
	}
	for _, n := range []string{"-1", "abc"} {
		expect(t, "catalog n="+n, do(t, "GET", a+"/v2/_catalog?n="+n, nil), 400, "PAGINATION_NUMBER_INVALID")
	}
}

// With scoped credentials (WithPullable) the catalog lists only what they
// may pull, paged the same way, also when a page's scan budget runs out
// before n names were found.
func TestCatalogOnlyPullable(t *testing.T) {
	h := newHandler(t)
	open := httptest.NewServer(h)
	t.Cleanup(open.Close)
	scoped := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		may := func(repo string) bool { return strings.HasPrefix(repo, "team/") }
		h.ServeHTTP(w, r.WithContext(WithPullable(r.Context(), may)))
	}))
	t.Cleanup(scoped.Close)
	for _, repo := range []string{"alpha", "team.a", "team/app", "team/app-b", "team/z", "zeta/x/y"} {
		putManifest(t, open.URL, repo, "latest", ociImage, pushImage(t, open.URL, repo, nil))
	}
	want := []string{"team/app", "team/app-b", "team/z"}
	pages := listPages(t, []string{scoped.URL}, "/v2/_catalog?n=2", "/v2/_catalog", "repositories", 2)
	if !slices.Equal(slices.Concat(pages...), want) {
		t.Fatalf("scoped catalog pages of 2: %q; want %q", pages, want)
	}
	// A scan budget of 2 names per request: pages may come back short or
	// empty, with a Link after the last name looked at, and still end
	// with every pullable name once.
	defer func(page, max int) { catalogScanPage, maxCatalogScan = page, max }(catalogScanPage, maxCatalogScan)
	catalogScanPage, maxCatalogScan = 2, 2
	var got []string
	next := "/v2/_catalog?n=5"
	for i := 0; next != ""; i++ {
		if i > 10 {
			t.Fatal("more than 10 pages")
		}
		r := do(t, "GET", scoped.URL+next, nil)
		var page struct{ Repositories []string }
		if r.status != 200 || json.Unmarshal(r.body, &page) != nil {
			t.Fatalf("GET %s: %d %s", next, r.status, r.body)
		}
		got = append(got, page.Repositories...)
		next = ""
		if link := r.header.Get("Link"); link != "" {
			next = strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("scoped catalog under a scan budget: %q; want %q", got, want)
	}
}

func TestReferrersAPI(t *testing.T) {
	a, b := twoServers(t)
	subject := pushImage(t, a, "team/app", nil)
	sd := digest.FromBytes(subject)
	r := putManifest(t, a, "team/app", "v1", ociImage, subject)
	if r.header.Get("OCI-Subject") != "" {
		t.Fatalf("OCI-Subject on a manifest without a subject: %q", r.header.Get("OCI-Subject"))
	}

	empty := pushBlob(t, a, "team/app", []byte("{}"))
	artifact := func(artifactType, content string, annotations map[string]string) []byte {
		ld := pushBlob(t, a, "team/app", []byte(content))
		return body(t, map[string]any{
			"schemaVersion": 2, "mediaType": ociImage, "artifactType": artifactType,
			"config":      descriptor(ociEmpty, empty, 2),
			"layers":      []any{descriptor("application/spdx+json", ld, len(content))},
			"subject":     descriptor(ociImage, sd, len(subject)),
			"annotations": annotations,
		})
	}
	sbomAnn := map[string]string{"org.opencontainers.image.created": "2024-05-01T00:00:00Z", "org.example.kind": "sbom"}
	sbom := artifact(sbomArtifact, `{"spdxVersion":"SPDX-2.3"}`, sbomAnn)
	sig := artifact(sigArtifact, "signature bytes", map[string]string{"org.example.kind": "signature"})
	for _, m := range [][]byte{sbom, sig} {
		r := putManifest(t, a, "team/app", digest.FromBytes(m).String(), ociImage, m)
		if r.header.Get("OCI-Subject") != sd.String() {
			t.Fatalf("OCI-Subject %q; want %s", r.header.Get("OCI-Subject"), sd)
		}
	}

	referrers := func(query string) (v1.Index, resp) {
		t.Helper()
		r := do(t, "GET", b+"/v2/team/app/referrers/"+sd.String()+query, nil)
		if r.status != 200 || r.header.Get("Content-Type") != ociIndex {
			t.Fatalf("referrers%s: %d %q %s", query, r.status, r.header.Get("Content-Type"), r.body)
		}
		var idx v1.Index
		if err := json.Unmarshal(r.body, &idx); err != nil || idx.SchemaVersion != 2 || idx.MediaType != ociIndex {
			t.Fatalf("referrers%s: not an OCI index: %s", query, r.body)
		}
		return idx, r
	}
	desc := func(m []byte, artifactType string, ann map[string]string) v1.Descriptor {
		return v1.Descriptor{MediaType: ociImage, Digest: digest.FromBytes(m), Size: int64(len(m)), ArtifactType: artifactType, Annotations: ann}
	}
	idx, r := referrers("")
	wantAll := []v1.Descriptor{desc(sbom, sbomArtifact, sbomAnn), desc(sig, sigArtifact, map[string]string{"org.example.kind": "signature"})}
	if !equalJSON(t, idx.Manifests, wantAll) || r.header.Get("OCI-Filters-Applied") != "" {
		t.Fatalf("referrers:\n got %s (filters %q)\nwant %+v", r.body, r.header.Get("OCI-Filters-Applied"), wantAll)
	}
	idx, r = referrers("?artifactType=" + url.QueryEscape(sbomArtifact))
	if !equalJSON(t, idx.Manifests, wantAll[:1]) || r.header.Get("OCI-Filters-Applied") != "artifactType" {
		t.Fatalf("referrers of the sbom type: %s (filters %q)", r.body, r.header.Get("OCI-Filters-Applied"))
	}
	_, r = referrers("?artifactType=other")
	if !bytes.Contains(r.body, []byte(`"manifests":[]`)) || r.header.Get("OCI-Filters-Applied") != "artifactType" {
		t.Fatalf("referrers of another type: %s (filters %q)", r.body, r.header.Get("OCI-Filters-Applied"))
	}

	// Unknown digest: an empty index, not an error.
	r = do(t, "GET", a+"/v2/team/app/referrers/"+digest.FromString("nobody").String(), nil)
	if r.status != 200 || r.header.Get("Content-Type") != ociIndex || !bytes.Contains(r.body, []byte(`"manifests":[]`)) {
		t.Fatalf("referrers of an unknown digest: %d %q %s", r.status, r.header.Get("Content-Type"), r.body)
	}
	expect(t, "referrers of a bad digest", do(t, "GET", a+"/v2/team/app/referrers/sha256:zz", nil), 400, "DIGEST_INVALID")

	// A referrer may arrive before its subject.
	absent := digest.FromString("subject not pushed yet")
	early := body(t, map[string]any{
		"schemaVersion": 2, "mediaType": ociImage, "artifactType": sigArtifact,
		"config":  descriptor(ociEmpty, empty, 2),
		"layers":  []any{},
		"subject": descriptor(ociImage, absent, 123),
	})
	putManifest(t, a, "team/app", digest.FromBytes(early).String(), ociImage, early)
	r = do(t, "GET", b+"/v2/team/app/referrers/"+absent.String(), nil)
	var got v1.Index
	if err := json.Unmarshal(r.body, &got); err != nil || len(got.Manifests) != 1 || got.Manifests[0].Digest != digest.FromBytes(early) {
		t.Fatalf("referrers of a subject not pushed: %s", r.body)
	}
}

// referrerPages follows the referrers API's Link headers from first,
// alternating servers, and returns each page's digests; every page must be
// an OCI index of at most about maxReferrersBytes with a Link of n/last
// naming its last referrer (and the artifactType filter, when given).
func referrerPages(t *testing.T, servers []string, first string, n int, artifactType string) [][]digest.Digest {
	t.Helper()
	var pages [][]digest.Digest
	for next := first; next != ""; {
		r := do(t, "GET", servers[len(pages)%len(servers)]+next, nil)
		var idx v1.Index
		if r.status != 200 || r.header.Get("Content-Type") != ociIndex || json.Unmarshal(r.body, &idx) != nil {
			t.Fatalf("GET %s: %d %q %.300s", next, r.status, r.header.Get("Content-Type"), r.body)
		}
		if len(r.body) > maxReferrersBytes+64<<10 {
			t.Fatalf("GET %s: a page of %d bytes", next, len(r.body))
		}
		var page []digest.Digest
		for _, m := range idx.Manifests {
			page = append(page, m.Digest)
		}
		pages = append(pages, page)
		if len(pages) > 50 {
			t.Fatalf("more than 50 pages: %v", pages)
		}
		link := r.header.Get("Link")
		if link == "" {
			break
		}
		if len(page) == 0 {
			t.Fatalf("GET %s: an empty page with a Link %q", next, link)
		}
		q := url.Values{"n": {fmt.Sprint(n)}, "last": {page[len(page)-1].String()}}
		if artifactType != "" {
			q.Set("artifactType", artifactType)
		}
		path, _, _ := strings.Cut(first, "?")
		if want := fmt.Sprintf(`<%s?%s>; rel="next"`, path, q.Encode()); link != want {
			t.Fatalf("GET %s: Link %q; want %q", next, link, want)
		}
		next = strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
	}
	return pages
}

// The referrers API answers in pages: at most n descriptors, and no more
// than about 1 MiB of them (annotations can be large), each page with a
// Link to the next (n and last, as tags/list; the artifactType filter
// kept). Every referrer comes once, oldest first.
func TestReferrersPages(t *testing.T) {
	a, b := twoServers(t)
	subject := pushImage(t, a, "team/app", nil)
	sd := digest.FromBytes(subject)
	empty := pushBlob(t, a, "team/app", []byte("{}"))
	big := strings.Repeat("x", 300_000)
	var all, sigs []digest.Digest
	for i := range 8 {
		at := sbomArtifact
		if i%3 == 2 {
			at = sigArtifact
		}
		ann := map[string]string{"n": fmt.Sprint(i)}
		if i < 5 {
			ann["org.example.big"] = big // four of these pass 1 MiB
		}
		m := body(t, map[string]any{
			"schemaVersion": 2, "mediaType": ociImage, "artifactType": at,
			"config": descriptor(ociEmpty, empty, 2), "layers": []any{},
			"subject":     descriptor(ociImage, sd, len(subject)),
			"annotations": ann,
		})
		// Pushed in an order that is not digest order: pages are oldest first.
		putManifest(t, a, "team/app", digest.FromBytes(m).String(), ociImage, m)
		all = append(all, digest.FromBytes(m))
		if at == sigArtifact {
			sigs = append(sigs, digest.FromBytes(m))
		}
	}
	base := "/v2/team/app/referrers/" + sd.String()
	servers := []string{a, b}

	// Without n: pages cut by size (3 big ones fit in 1 MiB, a fourth does not).
	pages := referrerPages(t, servers, base, maxReferrersPage, "")
	if got := slices.Concat(pages...); !slices.Equal(got, all) || len(pages) != 2 || len(pages[0]) != 3 {
		t.Fatalf("pages by size: %v\nwant, oldest first, %v", pages, all)
	}
	// With n: pages of n (and of less where the size says so).
	pages = referrerPages(t, servers, base+"?n=2", 2, "")
	if got := slices.Concat(pages...); !slices.Equal(got, all) || len(pages) != 4 {
		t.Fatalf("pages of 2: %v\nwant %v", pages, all)
	}
	// The filter holds on every page.
	pages = referrerPages(t, servers, base+"?n=1&artifactType="+url.QueryEscape(sigArtifact), 1, sigArtifact)
	if got := slices.Concat(pages...); !slices.Equal(got, sigs) || len(pages) != len(sigs) {
		t.Fatalf("signature pages of 1: %v\nwant %v", pages, sigs)
	}
	for _, n := range []string{"-1", "abc"} {
		expect(t, "referrers n="+n, do(t, "GET", a+base+"?n="+n, nil), 400, "PAGINATION_NUMBER_INVALID")
	}
	expect(t, "referrers after a bad digest", do(t, "GET", a+base+"?last=sha256:zz", nil), 400, "DIGEST_INVALID")
	// After a referrer deleted since (or never there): 400, never 404,
	// which would tell the client the API is not supported.
	expect(t, "referrers after an unknown manifest", do(t, "GET", a+base+"?last="+digest.FromString("gone").String(), nil), 400, "DIGEST_INVALID")
}

// equalJSON compares two values by their JSON encodings.
func equalJSON(t *testing.T, got, want any) bool {
	t.Helper()
	g, err1 := json.Marshal(got)
	w, err2 := json.Marshal(want)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return bytes.Equal(g, w)
}

func TestManifestDelete(t *testing.T) {
	a, b := twoServers(t)
	c1 := pushImage(t, a, "team/app", nil)
	c2 := pushImage(t, a, "team/app", nil)
	d1, d2 := digest.FromBytes(c1), digest.FromBytes(c2)
	putManifest(t, a, "team/app", d1.String(), ociImage, c1)
	idx := body(t, map[string]any{"schemaVersion": 2, "mediaType": ociIndex,
		"manifests": []any{descriptor(ociImage, d1, len(c1)), descriptor(ociImage, d2, len(c2))}})
	di := digest.FromBytes(idx)

	// An index whose child is not pushed yet.
	r := do(t, "PUT", a+"/v2/team/app/manifests/multi", idx, "Content-Type", ociIndex)
	expect(t, "index with an unknown child", r, 400, "MANIFEST_BLOB_UNKNOWN")
	if errs := ociErrors(t, r); len(errs) != 1 || !bytes.Contains(errs[0].Detail, []byte(d2.String())) {
		t.Fatalf("unknown child errors: %s", r.body)
	}
	expect(t, "refused index's tag", do(t, "GET", b+"/v2/team/app/manifests/multi", nil), 404, "MANIFEST_UNKNOWN")
	putManifest(t, a, "team/app", "single", ociImage, c2)
	putManifest(t, a, "team/app", "multi", ociIndex, idx)

	// A listed child cannot be deleted.
	expect(t, "delete a listed child", do(t, "DELETE", b+"/v2/team/app/manifests/"+d1.String(), nil), 403, "DENIED")
	fetched(t, "child after a refused delete", do(t, "GET", a+"/v2/team/app/manifests/"+d1.String(), nil), "GET", ociImage, d1, c1)
	// Nor can a blob a manifest uses.
	var cm struct{ Config struct{ Digest string } }
	json.Unmarshal(c1, &cm)
	expect(t, "delete a blob in use", do(t, "DELETE", a+"/v2/team/app/blobs/"+cm.Config.Digest, nil), 403, "DENIED")

	// DELETE by tag removes the tag only.
	r = do(t, "DELETE", b+"/v2/team/app/manifests/single", nil)
	expect(t, "delete tag", r, 202, "")
	expect(t, "deleted tag", do(t, "GET", a+"/v2/team/app/manifests/single", nil), 404, "MANIFEST_UNKNOWN")
	fetched(t, "manifest of a deleted tag", do(t, "GET", a+"/v2/team/app/manifests/"+d2.String(), nil), "GET", ociImage, d2, c2)
	expect(t, "delete tag again", do(t, "DELETE", b+"/v2/team/app/manifests/single", nil), 404, "MANIFEST_UNKNOWN")

	// Index first, then its children.
	expect(t, "delete the index", do(t, "DELETE", a+"/v2/team/app/manifests/"+di.String(), nil), 202, "")
	expect(t, "deleted index", do(t, "GET", b+"/v2/team/app/manifests/"+di.String(), nil), 404, "MANIFEST_UNKNOWN")
	expect(t, "deleted index's tag", do(t, "GET", b+"/v2/team/app/manifests/multi", nil), 404, "MANIFEST_UNKNOWN")
	for _, d := range []digest.Digest{d1, d2} {
		expect(t, "delete a child after its index", do(t, "DELETE", b+"/v2/team/app/manifests/"+d.String(), nil), 202, "")
		expect(t, "deleted child", do(t, "GET", a+"/v2/team/app/manifests/"+d.String(), nil), 404, "MANIFEST_UNKNOWN")
	}
	expect(t, "delete again", do(t, "DELETE", a+"/v2/team/app/manifests/"+d1.String(), nil), 404, "MANIFEST_UNKNOWN")
	expect(t, "blob free once its manifest is gone", do(t, "DELETE", a+"/v2/team/app/blobs/"+cm.Config.Digest, nil), 202, "")
	r = do(t, "GET", a+"/v2/team/app/tags/list", nil)
	if r.status != 200 || !bytes.Contains(r.body, []byte(`"tags":[]`)) {
		t.Fatalf("tags after deleting everything: %d %s", r.status, r.body)
	}
}

// TestDeletesDisabled: without Options.Delete, DELETE of manifests, tags
// and blobs is UNSUPPORTED and changes nothing; cancelling an upload still works.
func TestDeletesDisabled(t *testing.T) {
	pool := metadatatest.Pool(t)
	drv, err := filesystem.FromParameters(map[string]any{"rootdirectory": t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(Options{Uploads: uploadsession.New(pool, drv), Blobs: metadata.NewBlobs(pool),
		Manifests: metadata.NewManifests(pool), Driver: drv, Delete: false}))
	t.Cleanup(srv.Close)
	a := srv.URL

	m := pushImage(t, a, "team/app", nil)
	d := digest.FromBytes(m)
	putManifest(t, a, "team/app", "v1", ociImage, m)
	layer, _ := randomBlob(10)
	ld := pushBlob(t, a, "team/app", layer)
	for _, ref := range []string{"/manifests/" + d.String(), "/manifests/v1", "/blobs/" + ld.String()} {
		expect(t, "DELETE "+ref, do(t, "DELETE", a+"/v2/team/app"+ref, nil), 405, "UNSUPPORTED")
	}
	fetched(t, "by tag after refused deletes", do(t, "GET", a+"/v2/team/app/manifests/v1", nil), "GET", ociImage, d, m)
	expect(t, "blob after a refused delete", do(t, "HEAD", a+"/v2/team/app/blobs/"+ld.String(), nil), 200, "")

	r := do(t, "POST", a+"/v2/team/app/blobs/uploads/", nil)
	expect(t, "start upload", r, 202, "")
	expect(t, "cancel upload", do(t, "DELETE", a+r.header.Get("Location"), nil), 204, "")
}
