package enforce

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/tests/harness"
)

// The tests run against the real kernel: cgroups, loop devices, tc, and
// their own dockerd (tests/services/enforce-node.sh: own socket, data
// root, bridge and cgroup parent). A missing kernel feature fails the test
// with a message naming it; nothing is skipped silently.

var (
	harnessOnce sync.Once
	harnessErr  error
	dockerHost  string
	testImage   = "gaia-enforce-test:1"
)

func repoRoot() string {
	_, f, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(f), "..", ".."))
}

// needNode starts the tests' dockerd and builds the test image (once).
func needNode(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("node enforcement tests need root (cgroups, tc, loop devices)")
	}
	harnessOnce.Do(func() {
		out, err := exec.Command("bash", filepath.Join(repoRoot(), "tests/services/enforce-node.sh"), "start").CombinedOutput()
		if err != nil {
			harnessErr = fmt.Errorf("enforce-node.sh start: %v\n%s", err, out)
			return
		}
		dockerHost = "unix:///tmp/gaia-enforce/docker.sock"
		if h := os.Getenv("GAIA_ENFORCE_STATE_DIR"); h != "" {
			dockerHost = "unix://" + h + "/docker.sock"
		}
		harnessErr = buildImage()
	})
	if harnessErr != nil {
		t.Fatal(harnessErr)
	}
}

func buildImage() error {
	dir, err := os.MkdirTemp("", "gaia-enforce-img")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	hog := filepath.Join(dir, "hog")
	cmd := exec.Command("go", "build", "-o", hog, "./testdata/hog")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building hog: %v\n%s", err, out)
	}
	return harness.ImportRootfs(dockerHost, testImage, map[string]string{"hog": hog})
}

func docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", append([]string{"-H", dockerHost}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func dockerTry(args ...string) (string, error) {
	out, err := exec.Command("docker", append([]string{"-H", dockerHost}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// runArgs is `docker run` with what Prepare returned, as the agent's
// HostConfig would carry it.
func runArgs(c Container) []string {
	var a []string
	if c.CgroupParent != "" {
		a = append(a, "--cgroup-parent", c.CgroupParent)
	}
	if c.Memory > 0 {
		a = append(a, "--memory", fmt.Sprint(c.Memory), "--memory-swap", fmt.Sprint(c.MemorySwap))
	}
	if c.MemoryReservation > 0 {
		a = append(a, "--memory-reservation", fmt.Sprint(c.MemoryReservation))
	}
	if c.CPUShares > 0 {
		a = append(a, "--cpu-shares", fmt.Sprint(c.CPUShares))
	}
	if c.CPUQuota > 0 {
		a = append(a, "--cpu-period", fmt.Sprint(c.CPUPeriod), "--cpu-quota", fmt.Sprint(c.CPUQuota))
	}
	if c.CpusetCpus != "" {
		a = append(a, "--cpuset-cpus", c.CpusetCpus)
	}
	for _, d := range c.BlkioDeviceReadBps {
		a = append(a, "--device-read-bps", fmt.Sprintf("%s:%d", d.Path, d.Rate))
	}
	for _, d := range c.BlkioDeviceWriteBps {
		a = append(a, "--device-write-bps", fmt.Sprintf("%s:%d", d.Path, d.Rate))
	}
	for _, d := range c.BlkioDeviceReadIOps {
		a = append(a, "--device-read-iops", fmt.Sprintf("%s:%d", d.Path, d.Rate))
	}
	for _, d := range c.BlkioDeviceWriteIOps {
		a = append(a, "--device-write-iops", fmt.Sprintf("%s:%d", d.Path, d.Rate))
	}
	for _, m := range c.Mounts {
		a = append(a, "-v", m.Source+":"+m.Target)
	}
	return a
}

// startContainer runs the test image with c's limits; the container is
// removed at the end of the test.
func startContainer(t testing.TB, name string, c Container, cmd ...string) string {
	t.Helper()
	_, _ = dockerTry("rm", "-f", name)
	args := append([]string{"run", "-d", "--name", name}, runArgs(c)...)
	args = append(args, testImage)
	args = append(args, append([]string{"/hog"}, cmd...)...)
	id := docker(t, args...)
	t.Cleanup(func() { _, _ = dockerTry("rm", "-f", name) })
	return id
}

func waitLog(t testing.TB, name, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, _ := dockerTry("logs", name)
		if strings.Contains(out, want) {
			return out
		}
		if time.Now().After(deadline) {
			st, _ := dockerTry("inspect", "-f", "{{.State.Status}} oom={{.State.OOMKilled}} exit={{.State.ExitCode}}", name)
			t.Fatalf("%s: no %q in its log after %v (state %s); log:\n%s", name, want, timeout, st, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func inspect(t testing.TB, name, format string) string {
	t.Helper()
	return docker(t, "inspect", "-f", format, name)
}

// newNode is an Enforcer under a parent cgroup of its own, removed at the
// end of the test (after its containers).
func testNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = fmt.Sprintf("gaia-enforce-test-%d-%s", os.Getpid(), strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")))
	}
	if cfg.VolumeDir == "" {
		cfg.VolumeDir = t.TempDir()
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Init(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = n.Close()
		for _, ctrl := range v1Controllers {
			// Children first (dockerd removes the containers' own).
			_ = os.Remove(filepath.Join("/sys/fs/cgroup", ctrl, cfg.CgroupParent))
		}
	})
	return n
}
