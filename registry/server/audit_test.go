package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"

	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/registry/audit"
	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
	"github.com/gaia-registry/gaia/tests/harness"
)

// The API's manifest GETs (not HEADs, not failures), manifest PUTs and
// deletes of manifests, tags and blobs land in the audit log with the
// user and the client's address (through a trusted proxy); the admin API
// reads them back, refusing bad filters by name; what is still queued at
// shutdown is written before Serve returns.
func TestAuditLog(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	os.WriteFile(htpasswd, []byte("builder:"+string(hash)+"\n"), 0o600)
	db := harness.NewDatabase(t)
	cfg, err := LoadConfig(writeConfig(t, fmt.Sprintf(`
http: {addr: %s, trustedproxies: [127.0.0.1]}
storage: {filesystem: {rootdirectory: %q}, delete: {enabled: true}}
database: {url: %q, migrate: true}
auth: {htpasswd: {realm: test, path: %q}}
admin: {token: admintoken}
audit: {retention: 48h, buffer: 100}
`, harness.FreeAddr(t), t.TempDir(), db, htpasswd)), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	srv, err := New(ctx, cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(serveCtx) }()
	defer stop()
	base := "http://" + cfg.HTTP.Addr
	waitReady(t, base)

	c := upstream.New(upstream.Options{URL: base, Username: "builder", Password: "s3cret",
		Header: http.Header{"X-Forwarded-For": {"203.0.113.7"}}})
	img := harness.NewTestImage("linux/amd64", harness.Layer(1, 1000))
	if err := img.Push(ctx, c, "team/app", "v1"); err != nil {
		t.Fatal(err)
	}
	do := func(method, path string, want int) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, nil)
		req.SetBasicAuth("builder", "s3cret")
		req.Header.Set("X-Forwarded-For", "203.0.113.7")
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d, want %d", method, path, resp.StatusCode, want)
		}
	}
	do("GET", "/v2/team/app/manifests/v1", 200)
	do("HEAD", "/v2/team/app/manifests/v1", 200)                          // not a pull
	do("GET", "/v2/team/app/manifests/nosuch", 404)                       // failed: nothing
	do("GET", "/v2/other/app/manifests/v1", 404)                          // likewise
	do("DELETE", "/v2/team/app/blobs/"+img.Blobs[1].Digest.String(), 403) // still referenced: refused, nothing
	do("DELETE", "/v2/team/app/manifests/v1", 202)                        // the tag
	do("DELETE", "/v2/team/app/manifests/"+img.Digest.String(), 202)
	loose := []byte("a blob no manifest refers to")
	if err := c.PushBlob(ctx, "team/app", digest.FromBytes(loose), int64(len(loose)), bytes.NewReader(loose)); err != nil {
		t.Fatal(err)
	}
	do("DELETE", "/v2/team/app/blobs/"+digest.FromBytes(loose).String(), 202)

	admin := func(query string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest("GET", base+"/admin/v1/audit?"+query, nil)
		req.Header.Set("Authorization", "Bearer admintoken")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	type row struct{ Action, Actor, Kind, Repo, Ref, Remote, Object, Digest string }
	const want = 5 // push, pull, 3 deletes
	var got []row
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := admin("namespace=team&limit=50")
		if code != 200 {
			t.Fatalf("GET /admin/v1/audit: %d %v", code, body)
		}
		evs, _ := body["events"].([]any)
		got = got[:0]
		for _, e := range evs {
			m := e.(map[string]any)
			d, _ := m["detail"].(map[string]any)
			str := func(m map[string]any, k string) string { s, _ := m[k].(string); return s }
			got = append(got, row{str(m, "action"), str(m, "actor"), str(m, "actor_kind"), str(m, "repository"),
				str(m, "reference"), str(m, "remote"), str(d, "object"), str(d, "digest")})
		}
		if len(got) >= want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d audit events after 20s, want %d: %+v", len(got), want, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	exp := []row{ // newest first
		{"delete", "builder", "user", "team/app", digest.FromBytes(loose).String(), "203.0.113.7", "blob", ""},
		{"delete", "builder", "user", "team/app", img.Digest.String(), "203.0.113.7", "manifest", ""},
		{"delete", "builder", "user", "team/app", "v1", "203.0.113.7", "tag", ""},
		{"pull", "builder", "user", "team/app", "v1", "203.0.113.7", "", img.Digest.String()},
		{"push", "builder", "user", "team/app", "v1", "203.0.113.7", "", img.Digest.String()},
	}
	if fmt.Sprint(got) != fmt.Sprint(exp) {
		t.Fatalf("audit events:\n got %+v\nwant %+v", got, exp)
	}
	if code, body := admin("action=pull&limit=1"); code != 200 || len(body["events"].([]any)) != 1 || body["next"] != "" {
		t.Fatalf("filtered by action: %d %v", code, body)
	}
	if code, body := admin("action=delete&limit=2"); code != 200 || len(body["events"].([]any)) != 2 || body["next"] == "" {
		t.Fatalf("a first page: %d %v", code, body)
	} else if code, body := admin("action=delete&limit=2&cursor=" + url.QueryEscape(body["next"].(string))); code != 200 ||
		len(body["events"].([]any)) != 1 || body["next"] != "" {
		t.Fatalf("the last page: %d %v", code, body)
	}
	if code, body := admin("since=1h&actor=builder"); code != 200 || len(body["events"].([]any)) != 5 {
		t.Fatalf("since=1h: %d %v", code, body)
	}
	if code, body := admin("until=2000-01-01T00:00:00Z"); code != 200 || len(body["events"].([]any)) != 0 {
		t.Fatalf("until long ago: %d %v", code, body)
	}
	for _, tc := range []struct{ query, field string }{
		{"since=yesterday", "since"},
		{"until=-5m", "until"},
		{"limit=many", "limit"},
		{"limit=0", "limit"},
		{"cursor=garbage", "cursor"},
	} {
		code, body := admin(tc.query)
		e, _ := body["error"].(map[string]any)
		if code != 400 || e["field"] != tc.field {
			t.Errorf("?%s: %d %v, want 400 naming %s", tc.query, code, body, tc.field)
		}
	}

	// A pull just before shutdown is written by the time Serve returns,
	// long before the next flush would have been due.
	do("GET", "/v2/team/app/blobs/"+img.Blobs[0].Digest.String(), 200) // blobs GETs are not audited
	srv.audit.Record(audit.Event{Action: audit.ActionLogin, Actor: "late"})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	pool := metadatatest.Open(t, db)
	evs, _, err := audit.Query(ctx, pool, audit.Filter{Actor: "late"})
	if err != nil || len(evs) != 1 {
		t.Fatalf("the event recorded before shutdown: %v %v", evs, err)
	}
	if all, _, _ := audit.Query(ctx, pool, audit.Filter{}); len(all) != want+1 {
		t.Fatalf("%d events in all, want %d (a blob GET is not audited)", len(all), want+1)
	}
}

func TestAuditConfigErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{minimal + "audit: {retention: -1h}\n", "audit.retention"},
		{minimal + "audit: {retention: 10m}\n", "audit.retention"},
		{minimal + "audit: {buffer: -3}\n", "audit.buffer"},
		{minimal + "audit: {bufer: 3}\n", "field bufer not found"},
	} {
		_, err := LoadConfig(writeConfig(t, tc.text), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: error %v, want one containing %q", tc.text, err, tc.want)
		}
	}
}
