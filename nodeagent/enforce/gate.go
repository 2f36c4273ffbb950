package enforce

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// The gate: an instance's classes exist before its first packet. Docker
// makes a container's network namespace and veth only when it starts the
// container, and the classes hang off the veth, so the agent cannot make
// them earlier. Instead the container's first process is gaia-gate
// (nodeagent/cmd/gaia-gate), which waits for its gate directory to hold
// "released" naming its own network namespace before it execs the
// instance's command. Enforcement makes the directory and the container's
// mounts (Prepare) and removes them (Stopped, Sweep); the agent, which
// starts the container, closes the gate (CloseGate) before every start
// and writes the release once Started has attached the classes, deciding
// from the container's own entrypoint and mounts, so a gated container is
// released by any agent, with or without shaping.

// GateEntrypoint is where the gate binary is mounted in the container:
// the container's entrypoint when Container.Gate is set, the instance's
// own command its arguments.
const GateEntrypoint = "/.gaia-gate"

const (
	GateDirTarget = "/.gaia-gate.d" // gaia-gate waits for <this>/released
	GateReleased  = "released"
)

// gated: containers are started behind the gate.
func (n *Node) gated() bool { return n.net != nil && n.cfg.Gate != "" }

// checkGate: the gate binary exists and is static (it runs in the
// instance's image, which may have no C library).
func checkGate(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("enforce: the gate binary (gate: %s): %v (make build puts gaia-gate beside gaia-nodeagent)", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("enforce: the gate binary %s is dynamically linked: build it with CGO_ENABLED=0", path)
		}
	}
	return nil
}

func (n *Node) gateDir(id string) string { return filepath.Join(n.cfg.GateDir, volName(id)) }

// prepareGate makes the instance's gate directory (closed) and answers the
// container's two read-only mounts: the binary and the directory.
func (n *Node) prepareGate(id string) ([]Mount, error) {
	if err := n.closeGate(id); err != nil {
		return nil, err
	}
	return []Mount{{Source: n.cfg.Gate, Target: GateEntrypoint, ReadOnly: true},
		{Source: n.gateDir(id), Target: GateDirTarget, ReadOnly: true}}, nil
}

func (n *Node) closeGate(id string) error { return CloseGate(n.gateDir(id)) }

// CloseGate makes sure a gate directory exists (the bind mount's source,
// at every start) and holds no release. The mode is set explicitly, not
// left to the umask: the instance may run as any user.
func CloseGate(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("the gate's directory: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("the gate's directory: %w", err)
	}
	if err := os.Remove(filepath.Join(dir, GateReleased)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("closing the gate: %w", err)
	}
	return nil
}

// removeGate and removeGates clean the gate directory whether this agent
// gates containers or not: a container made by one that did may go at any
// time. (No GateDir: a Node built without defaults, in tests.)
func (n *Node) removeGate(id string) error {
	if n.cfg.GateDir == "" {
		return nil
	}
	return os.RemoveAll(n.gateDir(id))
}

// removeGates removes the gate directories of instances not in keep.
func (n *Node) removeGates(keep func(id string) bool) error {
	if n.cfg.GateDir == "" {
		return nil
	}
	ents, err := os.ReadDir(n.cfg.GateDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, e := range ents {
		if !keep(e.Name()) {
			errs = append(errs, os.RemoveAll(filepath.Join(n.cfg.GateDir, e.Name())))
		}
	}
	return joinErrs(errs)
}
