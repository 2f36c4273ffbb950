package enforce

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gaia-registry/gaia/tests/harness"
)

// The gate's directory: made closed with the container's two read-only
// mounts, removed with the instance or when orphaned; no gate without
// network shaping. (The agent opens and closes it: nodeagent.)
func TestGateLifecycle(t *testing.T) {
	dir := t.TempDir()
	n := newNode(Config{LinkOut: 1, Gate: "/usr/local/bin/gaia-gate", GateDir: dir}, &cgroupV1{})
	n.cfg.defaults()
	released := filepath.Join(dir, "g-1", GateReleased)
	os.MkdirAll(filepath.Dir(released), 0o700)
	os.WriteFile(released, nil, 0o644) // left by an earlier life of the instance
	c, err := n.Prepare(Instance{ID: "g-1"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{{Source: "/usr/local/bin/gaia-gate", Target: GateEntrypoint, ReadOnly: true},
		{Source: filepath.Join(dir, "g-1"), Target: GateDirTarget, ReadOnly: true}}
	if !c.Gate || len(c.Mounts) != 2 || c.Mounts[0] != want[0] || c.Mounts[1] != want[1] {
		t.Fatalf("Prepare: gate %v mounts %+v, want %+v", c.Gate, c.Mounts, want)
	}
	if _, err := os.Stat(released); !os.IsNotExist(err) {
		t.Fatalf("released after Prepare: %v", err)
	}
	if st, err := os.Stat(filepath.Dir(released)); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("the gate directory: %v %v, want mode 0755 (the instance may run as any user)", st.Mode(), err)
	}
	if err := n.Stopped("g-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "g-1")); !os.IsNotExist(err) {
		t.Fatalf("gate directory after Stopped: %v", err)
	}
	// Orphans (an agent that died before Stopped) go with Sweep.
	os.MkdirAll(filepath.Join(dir, "orphan"), 0o755)
	os.MkdirAll(filepath.Join(dir, "kept"), 0o755)
	if err := n.Sweep(map[string]bool{"kept": true}); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "kept" {
		t.Fatalf("after Sweep: %v", ents)
	}
	// Without network shaping there is nothing to wait for.
	plain := newNode(Config{Gate: "/usr/local/bin/gaia-gate", GateDir: dir}, &cgroupV1{})
	plain.cfg.defaults()
	if c, err := plain.Prepare(Instance{ID: "g-2"}); err != nil || c.Gate || len(c.Mounts) != 0 {
		t.Fatalf("without shaping: %+v %v", c, err)
	}
	// but a gated container's directory (left by an agent that shaped) is
	// still removed with it.
	os.MkdirAll(filepath.Join(dir, "g-3"), 0o755)
	if err := plain.Stopped("g-3"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "g-3")); !os.IsNotExist(err) {
		t.Fatalf("a gate directory after Stopped on a node without shaping: %v", err)
	}
}

// The gate binary must exist and be static (it runs in any image).
func TestCheckGate(t *testing.T) {
	if err := checkGate(filepath.Join(t.TempDir(), "none")); err == nil || !strings.Contains(err.Error(), "make build") {
		t.Fatalf("missing binary: %v", err)
	}
	sh, _ := exec.LookPath("sh") // dynamically linked on Debian
	if err := checkGate(sh); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("%s: %v", sh, err)
	}
	if err := checkGate(harness.BuildStatic(t, "../cmd/gaia-gate")); err != nil {
		t.Fatal(err)
	}
}
