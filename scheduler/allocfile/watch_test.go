package allocfile

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
)

type report struct {
	pools []model.Pool
	err   error
}

func TestWatcher(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "allocation.xml")
	write := func(s string) {
		t.Helper()
		// Write then rename, as editors and config managers do.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(`<allocations><queue name="a"/></allocations>`)
	var got []report
	w, err := NewWatcher(path, func(p []model.Pool, _ []string, err error) { got = append(got, report{p, err}) })
	if err != nil {
		t.Fatal(err)
	}
	names := func(ps []model.Pool) string {
		var s []string
		for _, p := range ps {
			s = append(s, p.Name)
		}
		return strings.Join(s, " ")
	}
	if p, _ := w.Pools(); names(p) != "root root.a" {
		t.Fatalf("initial pools %q", names(p))
	}
	// Nothing changed: no report (the file was just written, so it is
	// re-read and hashed, and the same content is not reported).
	if w.Check() || len(got) != 0 {
		t.Fatalf("unchanged file reported: %+v", got)
	}
	// A new queue.
	write(`<allocations><queue name="a"/><queue name="b"/></allocations>`)
	if !w.Check() || len(got) != 1 || got[0].err != nil || names(got[0].pools) != "root root.a root.b" {
		t.Fatalf("after adding b: %+v", got)
	}
	// Same size, same mtime as a racy rewrite could leave: still seen.
	fi, _ := os.Stat(path)
	write(`<allocations><queue name="a"/><queue name="c"/></allocations>`)
	os.Chtimes(path, fi.ModTime(), fi.ModTime())
	if !w.Check() || len(got) != 2 || names(got[1].pools) != "root root.a root.c" {
		t.Fatalf("after a same-size rewrite: %+v", got)
	}
	// A broken file: the error, once; the old set is kept.
	write("<allocations>\n<queue name=\"a\"><weight>heavy</weight></queue></allocations>")
	if !w.Check() || len(got) != 3 || got[2].err == nil || !strings.Contains(got[2].err.Error(), path+":2: <weight> of root.a") {
		t.Fatalf("broken file: %+v", got)
	}
	if w.Check() || len(got) != 3 {
		t.Fatalf("the same error reported twice: %+v", got)
	}
	if p, _ := w.Pools(); names(p) != "root root.a root.c" {
		t.Fatalf("after an error, pools %q, want the last good set", names(p))
	}
	// Removed: an error, once; back: reported again.
	os.Remove(path)
	if !w.Check() || len(got) != 4 || !os.IsNotExist(got[3].err) {
		t.Fatalf("removed: %+v", got)
	}
	if w.Check() || len(got) != 4 {
		t.Fatalf("missing file reported twice: %+v", got)
	}
	write(`<allocations><queue name="a"/><queue name="c"/></allocations>`)
	if !w.Check() || len(got) != 5 || got[4].err != nil || names(got[4].pools) != "root root.a root.c" {
		t.Fatalf("back: %+v", got)
	}
	// An invalid file at the start is NewWatcher's error.
	bad := filepath.Join(dir, "bad.xml")
	os.WriteFile(bad, []byte("<allocations><queue/></allocations>"), 0o644)
	if _, err := NewWatcher(bad, nil); err == nil || !strings.Contains(err.Error(), bad+":1: <queue>") {
		t.Fatalf("NewWatcher of a bad file: %v", err)
	}
	if _, err := NewWatcher(filepath.Join(dir, "none.xml"), nil); !os.IsNotExist(err) {
		t.Fatalf("NewWatcher of a missing file: %v", err)
	}
}

// TestWatcherRun: Run polls until its context ends and reports changes.
func TestWatcherRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.xml")
	os.WriteFile(path, []byte(`<allocations/>`), 0o644)
	ch := make(chan []model.Pool, 4)
	w, err := NewWatcher(path, func(p []model.Pool, _ []string, err error) {
		if err == nil {
			ch <- p
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx, 10*time.Millisecond); close(done) }()
	os.WriteFile(path, []byte(`<allocations><queue name="x"/></allocations>`), 0o644)
	p := <-ch
	if len(p) != 2 || p[1].Name != "root.x" {
		t.Fatalf("%+v", p)
	}
	cancel()
	<-done
}
