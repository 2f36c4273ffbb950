// gaia-gate is an instance container's first process when the node agent
// shapes its network (nodeagent/enforce): it holds the instance's own
// command until the agent has given the container's veth its HTB classes,
// then execs that command in its place (same PID, environment and
// working directory), so the instance's first packet is already shaped.
//
// The agent bind-mounts this binary (static: CGO_ENABLED=0, it runs in
// any image) at /.gaia-gate and the instance's gate directory, read-only,
// at /.gaia-gate.d, and releases the gate by writing the container's
// network namespace ("net:[4026532...]", as /proc/PID/ns/net reads) into
// /.gaia-gate.d/released after the classes exist. The gate execs only
// when that names its own namespace: a release left from an earlier start
// (a new start is a new namespace) never opens a later one, whoever
// starts the container.
//
//	gaia-gate COMMAND [ARG...]
//
// COMMAND is looked up in $PATH when it has no slash, as docker does.
// Exit status: 127 when COMMAND cannot be run, 125 when the gate is not
// released within 10 minutes (the agent is away: the container exits and
// the agent restarts it when it is back), 126 when the gate directory
// cannot be read, 128+n on signal n while waiting (143: SIGTERM).
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const timeout = 10 * time.Minute

// gateDir is where the agent mounts the instance's gate directory; only
// the binary's own test builds it with another (-ldflags -X), so that
// nothing an app or image sets can move it.
var gateDir = "/.gaia-gate.d"

func main() {
	if len(os.Args) < 2 {
		fail(127, "no command to run (the image has neither an entrypoint nor a command, and the app sets none)")
	}
	// Any stop signal (the image's STOPSIGNAL may be SIGWINCH or SIGUSR1,
	// which Go would otherwise ignore) ends the wait at once, 128+n.
	sig := make(chan os.Signal, 8)
	signal.Notify(sig)
	released := filepath.Join(gateDir, "released")
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		fail(126, "cannot read its own network namespace: %v", err)
	}
	start := time.Now()
	deadline := start.Add(timeout)
	wait := time.Millisecond
	said := false
	stopped := func(s os.Signal) {
		switch s {
		case syscall.SIGURG, syscall.SIGCHLD, syscall.SIGPIPE: // the runtime's, or harmless
			return
		}
		fail(128+int(s.(syscall.Signal)), "stopped (%v) before the node agent released it", s)
	}
	for {
		b, err := os.ReadFile(released)
		if err == nil && strings.TrimSpace(string(b)) == self {
			break
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			fail(126, "cannot see the gate's release (%v): the gate directory must be readable by the instance's user", err)
		}
		if !said && time.Since(start) >= time.Second { // in the container's log: why it has not started
			fmt.Fprintln(os.Stderr, "gaia-gate: waiting for the node agent to set up the instance's network")
			said = true
		}
		if time.Now().After(deadline) {
			fail(125, "not released within %s: the node agent did not finish setting the instance's network up", timeout)
		}
		select {
		case s := <-sig:
			stopped(s)
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Millisecond) // a read every 5 ms: the start waits at most that long past the release
	}
drain: // a stop signal that came with the release still stops it
	for {
		select {
		case s := <-sig:
			stopped(s)
		default:
			break drain
		}
	}
	signal.Reset()
	path := os.Args[1]
	if lp, err := exec.LookPath(path); err == nil {
		path = lp
	}
	err = syscall.Exec(path, os.Args[1:], os.Environ())
	fail(127, "exec %s: %v", os.Args[1], err)
}

func fail(code int, format string, a ...any) {
	fmt.Fprintf(os.Stderr, "gaia-gate: "+format+"\n", a...)
	os.Exit(code)
}
