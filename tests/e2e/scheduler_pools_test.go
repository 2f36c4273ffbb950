package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/tests/harness"
)

// TestSchedulerPoolsFile: a gaia-scheduler with pools.file loads the
// allocation file's pools when it starts leading, and reloads them when
// the file changes: new pools appear in GET /v1/pools, changed ones
// change, a pool dropped from the file goes (it was empty). The file's
// pools are read-only through the API (409 naming the pool and the
// file); other pools stay the API's. An invalid file is counted and
// logged, and the last good set stays.
func TestSchedulerPoolsFile(t *testing.T) {
	e := newSchedEnv(t)
	file := filepath.Join(e.dir, "allocation.xml")
	write := func(body string) {
		t.Helper()
		// Through a rename, so the watcher never reads half a file.
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte("<allocations>\n"+body+"\n</allocations>\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	write(`<queue name="ads"><weight>3</weight>
  <queue name="search"><weight>2</weight><maxInstances>50</maxInstances></queue>
  <queue name="display"/>
</queue>`)
	e.extra = fmt.Sprintf("pools: {file: %q, reload: 200ms}\n", file)
	s := e.start()
	waitFor(t, "the scheduler to lead", time.Minute, func() bool { return isLeader(s) })

	type pool struct {
		Name         string  `json:"name"`
		Weight       float64 `json:"weight"`
		MaxInstances int     `json:"maxInstances"`
	}
	pools := func() map[string]pool {
		var page struct{ Items []pool }
		if code := call(t, s.URL(), schedAdmin, "GET", "/v1/pools?limit=1000", nil, &page); code != http.StatusOK {
			t.Fatalf("GET /v1/pools: %d", code)
		}
		out := map[string]pool{}
		for _, p := range page.Items {
			out[p.Name] = p
		}
		return out
	}
	names := func(m map[string]pool) string {
		var n []string
		for k := range m {
			n = append(n, k)
		}
		sort.Strings(n)
		return strings.Join(n, " ")
	}
	waitErr(t, "the file's pools in GET /v1/pools", time.Minute, func() error {
		got := pools()
		if got["root.ads"].Weight != 3 || got["root.ads.search"].Weight != 2 || got["root.ads.search"].MaxInstances != 50 || got["root.ads.display"].Name == "" {
			return fmt.Errorf("pools: %+v", got)
		}
		return nil
	}, s)

	// The file's pools are the file's.
	var refused struct{ Error api.Error }
	if code := call(t, s.URL(), schedAdmin, "PUT", "/v1/pools/root.ads.search", map[string]any{"name": "root.ads.search", "weight": 9}, &refused); code != http.StatusConflict ||
		!strings.Contains(refused.Error.Message, "root.ads.search") || !strings.Contains(refused.Error.Message, file) {
		t.Errorf("PUT of a file pool: %d %+v, want 409 naming the pool and the file", code, refused)
	}
	if code := call(t, s.URL(), schedAdmin, "DELETE", "/v1/pools/root.ads.display", nil, &refused); code != http.StatusConflict ||
		!strings.Contains(refused.Error.Message, "root.ads.display") {
		t.Errorf("DELETE of a file pool: %d %+v, want 409 naming the pool", code, refused)
	}
	// Others are the API's.
	if code := call(t, s.URL(), schedAdmin, "POST", "/v1/pools", map[string]any{"name": "root.adhoc", "weight": 1}, nil); code != http.StatusCreated {
		t.Errorf("POST of a pool the file does not name: %d", code)
	}

	// Edit: search's weight changes, batch comes, display goes.
	write(`<queue name="ads"><weight>3</weight>
  <queue name="search"><weight>5</weight><maxInstances>50</maxInstances></queue>
</queue>
<queue name="batch"><weight>1</weight></queue>`)
	waitErr(t, "the edited file's pools in GET /v1/pools", time.Minute, func() error {
		got := pools()
		if got["root.ads.search"].Weight != 5 || got["root.batch"].Name == "" || got["root.ads.display"].Name != "" || got["root.adhoc"].Name == "" {
			return fmt.Errorf("pools: %s, search %+v", names(got), got["root.ads.search"])
		}
		return nil
	}, s)
	// display left the file: the API may take the name now.
	if code := call(t, s.URL(), schedAdmin, "POST", "/v1/pools", map[string]any{"name": "root.ads.display"}, nil); code != http.StatusCreated {
		t.Errorf("POST of a pool that left the file: %d", code)
	}

	// A broken file: counted, logged, the last good set stays.
	errorsBefore, _ := harness.ScrapeMetric(nil, s.URL(), "gaia_scheduler_pools_file_loads_total", `result="error"`)
	write(`<queue name="ads"><weight>heavy</weight></queue>`)
	waitFor(t, "the broken file to be counted", time.Minute, func() bool {
		v, _ := harness.ScrapeMetric(nil, s.URL(), "gaia_scheduler_pools_file_loads_total", `result="error"`)
		return v > errorsBefore
	})
	if got := pools(); got["root.ads.search"].Weight != 5 || got["root.batch"].Name == "" {
		t.Errorf("after a broken file: %s, search %+v; want the last good set", names(got), got["root.ads.search"])
	}
	if !strings.Contains(s.Log(), "last good set") {
		t.Errorf("the broken file was not logged:\n%s", tail(s.Log(), 20))
	}
}
