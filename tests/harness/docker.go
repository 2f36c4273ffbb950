package harness

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Docker runs the docker CLI against the harness's dockerd and returns its
// trimmed stdout; a failure fails the test with docker's output.
func Docker(t testing.TB, env Env, args ...string) string {
	t.Helper()
	out, err := DockerErr(env, args...)
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// DockerErr is Docker that returns the error instead of failing.
func DockerErr(env Env, args ...string) (string, error) {
	cmd := exec.Command("docker", append([]string{"-H", env["GAIA_TEST_DOCKER_HOST"]}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return strings.TrimSpace(stdout.String()), nil
}

// BuildImage makes a test image without pulling anything: a base layer
// holding a static busybox (Debian's busybox-static, imported with `docker
// import`), then one layer per entry of layerSizes, each a file of that many
// random bytes added by `docker build`. Random content makes every build's
// layers, and so its digests, new; the base layer carries a random marker
// file for the same reason.
func BuildImage(t testing.TB, env Env, ref string, layerSizes ...int) {
	t.Helper()
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("harness: busybox-static is not installed (svc.sh start dockerd installs it): %v", err)
	}
	var rootfs bytes.Buffer
	tw := tar.NewWriter(&rootfs)
	for _, d := range []string{"bin/", "tmp/", "data/"} {
		tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
	}
	tw.WriteHeader(&tar.Header{Name: "bin/busybox", Mode: 0o755, Size: int64(len(busybox))})
	tw.Write(busybox)
	for _, l := range []string{"sh", "echo", "cat", "ls", "sha256sum"} {
		tw.WriteHeader(&tar.Header{Name: "bin/" + l, Typeflag: tar.TypeSymlink, Linkname: "busybox"})
	}
	// A random marker makes the base layer new too, so no image left in
	// dockerd by another test shares a layer with this one (a shared layer
	// would not be pulled again).
	marker := make([]byte, 16)
	rand.Read(marker)
	tw.WriteHeader(&tar.Header{Name: "tmp/.gaia-test-image", Mode: 0o644, Size: int64(len(marker))})
	tw.Write(marker)
	tw.Close()

	base := ref + "-base"
	cmd := exec.Command("docker", "-H", env["GAIA_TEST_DOCKER_HOST"], "import", "-", base)
	cmd.Stdin = &rootfs
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker import: %v\n%s", err, out)
	}

	dir := t.TempDir()
	dockerfile := fmt.Sprintf("FROM %s\n", base)
	for i, size := range layerSizes {
		b := make([]byte, size)
		rand.Read(b)
		name := fmt.Sprintf("layer%d.bin", i)
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		dockerfile += fmt.Sprintf("COPY %s /data/%s\n", name, name)
	}
	dockerfile += "CMD [\"/bin/sh\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command("docker", "-H", env["GAIA_TEST_DOCKER_HOST"], "build", "-q", "-t", ref, dir)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	Docker(t, env, "rmi", base)
}

// BuildStatic builds the Go command in pkg (an import path, or a
// directory relative to the calling test's package) with CGO_ENABLED=0,
// so that it runs in any container image, and answers the binary's path.
// flags go to go build before the package.
func BuildStatic(t testing.TB, pkg string, flags ...string) string {
	t.Helper()
	name := filepath.Base(pkg)
	if abs, err := filepath.Abs(pkg); err == nil && strings.HasPrefix(pkg, ".") {
		name = filepath.Base(abs) // "." names the test's own directory
	}
	out := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", append(append([]string{"build", "-o", out}, flags...), pkg)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", pkg, err, b)
	}
	return out
}

// ImportRootfs imports into the dockerd at host (a -H address) an image
// named image whose one layer holds the files given (path in the image →
// file on this machine, mode 0755) and the empty directories a container
// expects (tmp, data, proc, sys, dev, etc). Nothing is pulled.
func ImportRootfs(host, image string, files map[string]string) error {
	var rootfs bytes.Buffer
	tw := tar.NewWriter(&rootfs)
	for _, d := range []string{"tmp/", "data/", "proc/", "sys/", "dev/", "etc/"} {
		tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
	}
	for name, src := range files {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(name, "/"), Mode: 0o755, Size: int64(len(b))})
		tw.Write(b)
	}
	if err := tw.Close(); err != nil {
		return err
	}
	cmd := exec.Command("docker", "-H", host, "import", "-", image)
	cmd.Stdin = &rootfs
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("docker import %s: %v\n%s", image, err, out)
	}
	return nil
}
