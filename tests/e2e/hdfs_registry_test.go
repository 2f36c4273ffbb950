// Package e2e holds end-to-end tests: real binaries, real services, real
// clients (the docker CLI against the harness's dockerd).
package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	gohdfs "github.com/colinmarc/hdfs/v2"

	"github.com/gaia-registry/gaia/tests/harness"
)

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func buildBinary(t *testing.T, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = harness.RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// TestDockerPushPullOnHDFS: the docker CLI pushes a multi-layer image to
// gaia-registry keeping blobs in the real HDFS, pulls it back after
// removing it locally, and gets the same digest; the layers are in HDFS.
func TestDockerPushPullOnHDFS(t *testing.T) {
	env := harness.Start(t, harness.HDFS, harness.Dockerd)
	nn := env.Get(t, "GAIA_TEST_HDFS_NAMENODE")
	bin := buildBinary(t, "./registry/cmd/gaia-registry")
	addr := freeAddr(t)
	root := fmt.Sprintf("/gaia-e2e/push-%d", time.Now().UnixNano())

	config := filepath.Join(t.TempDir(), "registry.yml")
	os.WriteFile(config, []byte(fmt.Sprintf(`version: 0.1
log: {level: info}
storage:
  hdfs:
    namenodes: [%q]
    rootdirectory: %s
    user: gaia
    replication: 1
  delete: {enabled: true}
http:
  addr: %s
  draintimeout: 5s
`, nn, root, addr)), 0o644)
	logPath := filepath.Join(t.TempDir(), "registry.log")
	logFile, _ := os.Create(logPath)
	srv := exec.Command(bin, "serve", "--config", config)
	srv.Stdout, srv.Stderr = logFile, logFile
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	defer func() {
		if srv.ProcessState == nil {
			srv.Process.Kill()
		}
	}()
	waitHTTP(t, "http://"+addr+"/v2/", logPath)

	ref := addr + "/e2e/hdfs-image:v1"
	// 3 MiB crosses HDFS block boundaries (1 MiB blocks in the test cluster).
	harness.BuildImage(t, env, ref, 3<<20+123, 1<<20, 10_000)
	harness.Docker(t, env, "push", ref)
	pushed := harness.Docker(t, env, "image", "inspect", "-f", "{{index .RepoDigests 0}}", ref)
	harness.Docker(t, env, "rmi", ref)
	if _, err := harness.DockerErr(env, "image", "inspect", ref); err == nil {
		t.Fatal("image still present after rmi")
	}
	harness.Docker(t, env, "pull", ref)
	pulled := harness.Docker(t, env, "image", "inspect", "-f", "{{index .RepoDigests 0}}", ref)
	if pushed != pulled || !strings.Contains(pushed, "@sha256:") {
		t.Fatalf("pushed %s, pulled %s", pushed, pulled)
	}
	out := harness.Docker(t, env, "run", "--rm", "--network", "none", ref, "/bin/sh", "-c", "ls /data")
	if out != "layer0.bin\nlayer1.bin\nlayer2.bin" {
		t.Fatalf("pulled image content: %q", out)
	}
	harness.Docker(t, env, "rmi", ref)

	// The layers live in HDFS under the configured root.
	c, err := gohdfs.NewClient(gohdfs.ClientOptions{Addresses: []string{nn}, User: "gaia"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer c.RemoveAll(root)
	var blobs, bigBlobs int
	err = c.Walk(root+"/docker/registry/v2/blobs", func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && fi.Name() == "data" {
			blobs++
			if fi.Size() > 3<<20 {
				bigBlobs++
			}
		}
		return err
	})
	if err != nil || blobs < 5 || bigBlobs < 1 {
		t.Fatalf("blobs in HDFS: %d (%d over 3 MiB), err %v; want config + manifest + 4 layers", blobs, bigBlobs, err)
	}

	// Graceful stop on SIGINT.
	srv.Process.Signal(syscall.SIGINT)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("registry exited with %v after SIGINT", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("registry did not stop within 30s of SIGINT")
	}
}

func waitHTTP(t *testing.T, url, logPath string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("%s not answering after 60s; server log:\n%s", url, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
