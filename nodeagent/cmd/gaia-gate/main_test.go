package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/tests/harness"
)

// The gate holds the command until "released" names its own network
// namespace (one naming another, left from an earlier start, does not
// open it), then execs it (a command without a slash found in $PATH, with
// its environment); SIGTERM while waiting ends it at once with 143; a
// command that cannot run is 127.
func TestGate(t *testing.T) {
	dir := t.TempDir()
	ns, err := os.Readlink("/proc/self/ns/net") // the gate's too: same namespace
	if err != nil {
		t.Fatal(err)
	}
	release := func(token string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "released"), []byte(token+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := harness.BuildStatic(t, ".", "-ldflags=-X main.gateDir="+dir)
	var out bytes.Buffer
	cmd := exec.Command(bin, "sh", "-c", "echo ran $0 $GREETING", "x")
	cmd.Env = append(os.Environ(), "GREETING=hello")
	cmd.Stdout = &out // (stderr may say it is waiting, under load)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("ran before the release: %v %q", err, out.String())
	case <-time.After(300 * time.Millisecond):
	}
	release("net:[1]") // an earlier start's
	select {
	case err := <-done:
		t.Fatalf("ran on another namespace's release: %v %q", err, out.String())
	case <-time.After(300 * time.Millisecond):
	}
	release(ns)
	select {
	case err := <-done:
		if err != nil || strings.TrimSpace(out.String()) != "ran x hello" {
			t.Fatalf("after the release: %v %q", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("not run 30 s after the release")
	}

	if err := os.Remove(filepath.Join(dir, "released")); err != nil {
		t.Fatal(err)
	}
	// Waiting a second, it says so in the container's log; a stop then
	// ends it.
	stopped := exec.Command(bin, "true")
	stderr, err := stopped.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := stopped.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stderr).ReadString('\n')
	if err != nil || !strings.Contains(line, "waiting for the node agent") {
		t.Fatalf("the gate's first words: %q %v", line, err)
	}
	stopped.Process.Signal(syscall.SIGTERM)
	if err := stopped.Wait(); stopped.ProcessState.ExitCode() != 143 {
		t.Fatalf("SIGTERM while waiting: %v, exit %d", err, stopped.ProcessState.ExitCode())
	}

	release(ns)
	missing := exec.Command(bin, "/no/such/command")
	if b, _ := missing.CombinedOutput(); missing.ProcessState.ExitCode() != 127 || !strings.Contains(string(b), "/no/such/command") {
		t.Fatalf("a command that cannot run: exit %d %q", missing.ProcessState.ExitCode(), b)
	}
}
