package admin

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gaia-registry/gaia/mirror-sync/store"
	"github.com/gaia-registry/gaia/registry/metadata/metadatatest"
)

func setup(t *testing.T) (base string, st *store.Store) {
	t.Helper()
	st = store.New(metadatatest.Pool(t))
	srv := httptest.NewServer(&Handler{Store: st, Token: "adm1n"})
	t.Cleanup(srv.Close)
	return srv.URL + Prefix, st
}

func call(t *testing.T, method, url, token, body string) (int, map[string]any, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	json.Unmarshal(raw, &m)
	return resp.StatusCode, m, string(raw)
}

const ruleJSON = `{"name":"hub","upstream":{"url":"%s","username":"bot","password":"s3cret"},
	"repositories":["library/nginx"],"tags":{"regex":"^1\\."},"schedule":"1h","enabled":true}`

func errField(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	f, _ := e["field"].(string)
	return f
}

func TestRulesAPI(t *testing.T) {
	base, st := setup(t)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized) // a registry asking for a token
	}))
	defer upstream.Close()
	body := strings.Replace(ruleJSON, "%s", upstream.URL, 1)

	if code, _, _ := call(t, "GET", base, "", ""); code != 401 {
		t.Fatalf("no token: %d", code)
	}
	if code, _, _ := call(t, "GET", base, "wrong", ""); code != 401 {
		t.Fatalf("wrong token: %d", code)
	}
	code, m, raw := call(t, "POST", base+"?check=1", "adm1n", body)
	if code != 201 || strings.Contains(raw, "s3cret") || !strings.Contains(raw, `"password": "********"`) || m["next_run_at"] == nil {
		t.Fatalf("create: %d %s", code, raw)
	}
	if code, m, _ := call(t, "POST", base, "adm1n", body); code != 409 || errField(m) != "name" {
		t.Fatalf("duplicate: %d %v", code, m)
	}
	for bad, field := range map[string]string{
		strings.Replace(body, `"1h"`, `"every hour"`, 1):          "schedule",
		strings.Replace(body, `"^1\\."`, `"("`, 1):                "tags.regex",
		strings.Replace(body, `"enabled":true`, `"colour":1`, 1):  "colour",
		strings.Replace(body, `"name":"hub"`, `"name":"Hub!"`, 1): "name",
	} {
		if code, m, _ := call(t, "POST", base, "adm1n", bad); code != 400 || errField(m) != field {
			t.Errorf("invalid rule (%s): %d %v", field, code, m)
		}
	}
	unreachable := strings.Replace(strings.Replace(body, upstream.URL, "http://127.0.0.1:1", 1), `"hub"`, `"hub2"`, 1)
	if code, m, _ := call(t, "POST", base+"?check=1", "adm1n", unreachable); code != 400 || errField(m) != "upstream.url" {
		t.Fatalf("unreachable upstream with check: %d %v", code, m)
	}

	// Update without the password keeps the stored one.
	upd := strings.Replace(strings.Replace(body, `,"password":"s3cret"`, ``, 1), `"1h"`, `"0 3 * * *"`, 1)
	if code, _, raw := call(t, "PUT", base+"/hub", "adm1n", upd); code != 200 || !strings.Contains(raw, `"0 3 * * *"`) {
		t.Fatalf("update: %d %s", code, raw)
	}
	e, err := st.Get(context.Background(), "hub")
	if err != nil || e.Rule.Upstream.Password != "s3cret" || e.Rule.Schedule != "0 3 * * *" {
		t.Fatalf("stored after update: %+v %v", e, err)
	}
	if code, m, _ := call(t, "PUT", base+"/other", "adm1n", upd); code != 400 || errField(m) != "name" {
		t.Fatalf("rename through PUT: %d %v", code, m)
	}

	// Run now: queued once; asking again returns the same run.
	code, m, _ = call(t, "POST", base+"/hub/run", "adm1n", "")
	if code != 202 || m["state"] != "queued" || m["trigger"] != "manual" {
		t.Fatalf("run: %d %v", code, m)
	}
	id := m["id"]
	if code, m, _ := call(t, "POST", base+"/hub/run", "adm1n", ""); code != 200 || m["id"] != id {
		t.Fatalf("run again: %d %v", code, m)
	}
	code, _, raw = call(t, "GET", base+"/hub/runs", "adm1n", "")
	var runs []store.Run
	json.Unmarshal([]byte(raw), &runs)
	if code != 200 || len(runs) != 1 || runs[0].State != "queued" {
		t.Fatalf("history: %d %s", code, raw)
	}
	if code, _, raw := call(t, "GET", base+"/hub", "adm1n", ""); code != 200 || !strings.Contains(raw, `"runs": [`) || strings.Contains(raw, "s3cret") {
		t.Fatalf("show: %d %s", code, raw)
	}
	if code, _, raw := call(t, "GET", base, "adm1n", ""); code != 200 || !strings.Contains(raw, `"name": "hub"`) || strings.Contains(raw, "s3cret") {
		t.Fatalf("list: %d %s", code, raw)
	}
	if code, _, _ := call(t, "DELETE", base+"/hub", "adm1n", ""); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	if code, m, _ := call(t, "GET", base+"/hub", "adm1n", ""); code != 404 || errField(m) != "name" {
		t.Fatalf("after delete: %d %v", code, m)
	}
	if code, _, _ := call(t, "POST", base+"/hub/run", "adm1n", ""); code != 404 {
		t.Fatalf("run of a deleted rule: %d", code)
	}
}

// An update that moves the upstream to another host must give the
// password again: the stored one is not sent to the new host.
func TestUpdateMovingUpstreamNeedsPassword(t *testing.T) {
	base, st := setup(t)
	body := strings.Replace(ruleJSON, "%s", "https://registry.corp.example", 1)
	if code, _, raw := call(t, "POST", base, "adm1n", body); code != 201 {
		t.Fatalf("create: %d %s", code, raw)
	}
	moved := strings.Replace(strings.Replace(body, "registry.corp.example", "attacker.example", 1), `"s3cret"`, `"********"`, 1)
	code, m, raw := call(t, "PUT", base+"/hub", "adm1n", moved)
	if code != 400 || errField(m) != "upstream.password" || !strings.Contains(raw, "give the password again") {
		t.Fatalf("moved upstream, password left out: %d %s", code, raw)
	}
	if e, err := st.Get(context.Background(), "hub"); err != nil || e.Rule.Upstream.URL != "https://registry.corp.example" {
		t.Fatalf("stored after the refused update: %+v %v", e, err)
	}
	moved = strings.Replace(moved, `"********"`, `"other-pass"`, 1)
	if code, _, raw := call(t, "PUT", base+"/hub", "adm1n", moved); code != 200 {
		t.Fatalf("moved upstream with a password: %d %s", code, raw)
	}
	if e, err := st.Get(context.Background(), "hub"); err != nil || e.Rule.Upstream.Password != "other-pass" || e.Rule.Upstream.URL != "https://attacker.example" {
		t.Fatalf("stored after the update: %+v %v", e, err)
	}
}
