package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// gaiactl audit passes its filters on, prints a table or JSON, follows
// next with --all, and reports the field a refusal names.
func TestAudit(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.URL.RequestURI())
		mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer tok" || r.URL.Path != "/admin/v1/audit" {
			w.WriteHeader(401)
			return
		}
		q := r.URL.Query()
		if q.Get("since") == "bad" {
			w.WriteHeader(400)
			w.Write([]byte(`{"error":{"field":"since","message":"\"bad\" is neither an RFC 3339 time nor a duration"}}`))
			return
		}
		switch q.Get("cursor") {
		case "":
			w.Write([]byte(`{"events":[{"id":9,"at":"2026-01-02T10:00:00Z","actor":"ann","actor_kind":"user","action":"push","namespace":"team","repository":"team/app","reference":"v1","remote":"10.0.0.1","detail":{"digest":"sha256:ab"}}],"next":"c1"}`))
		case "c1":
			w.Write([]byte(`{"events":[{"id":8,"at":"2026-01-02T09:00:00Z","actor":"","actor_kind":"anonymous","action":"pull","namespace":"team","repository":"team/app","reference":"v1"}],"next":""}`))
		}
	}))
	defer srv.Close()
	take := func() string {
		mu.Lock()
		defer mu.Unlock()
		s := strings.Join(got, " ")
		got = nil
		return s
	}
	code, out, errs := run(t, "--server", srv.URL, "--token", "tok", "audit", "--namespace", "team", "--user", "ann",
		"--action", "push", "--repository", "team/app", "--since", "24h", "--until", "2026-01-03T00:00:00Z", "--limit", "1")
	if code != 0 || !strings.HasPrefix(out, "TIME") || !strings.Contains(out, "2026-01-02T10:00:00Z  push    ann") ||
		!strings.Contains(out, `{"digest":"sha256:ab"}`) || !strings.Contains(out, "more: --cursor c1") || strings.Contains(out, "anonymous") {
		t.Fatalf("one page: exit %d\n%s%s", code, out, errs)
	}
	if q := take(); q != "/admin/v1/audit?action=push&actor=ann&limit=1&namespace=team&repository=team%2Fapp&since=24h&until=2026-01-03T00%3A00%3A00Z" {
		t.Fatalf("request %s", q)
	}
	code, out, _ = run(t, "--server", srv.URL, "--token", "tok", "audit", "--all", "-o", "json")
	var res auditPage
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || len(res.Events) != 2 || res.Events[1].ActorKind != "anonymous" || res.Next != "" {
		t.Fatalf("--all -o json: exit %d\n%s", code, out)
	}
	if q := take(); q != "/admin/v1/audit? /admin/v1/audit?cursor=c1" {
		t.Fatalf("--all requests %s", q)
	}
	if code, _, errs := run(t, "--server", srv.URL, "--token", "tok", "audit", "--since", "bad"); code != 1 || !strings.Contains(errs, "since: ") {
		t.Fatalf("refused: exit %d %s", code, errs)
	}
}
