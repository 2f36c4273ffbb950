package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/gaia-registry/gaia/tests/harness"
)

// TestDockerLoginPushAnonymousPull: htpasswd auth with anonymous pull. The
// docker CLI logs in and pushes; without credentials docker push is
// refused; skopeo pulls the image anonymously; a wrong password fails
// docker login.
func TestDockerLoginPushAnonymousPull(t *testing.T) {
	env := harness.Start(t, harness.Dockerd)
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	os.WriteFile(htpasswd, []byte("builder:"+string(hash)+"\n"), 0o600)
	addr := harness.FreeAddr(t)
	config := harness.RegistryConfig(addr, harness.NewDatabase(t), t.TempDir()) +
		fmt.Sprintf("auth: {anonymouspull: true, htpasswd: {realm: gaia-e2e, path: %q}}\n", htpasswd)
	harness.StartRegistry(t, addr, config)

	// A private docker config, so logins do not leak into other tests.
	dockerConfig := t.TempDir()
	docker := func(args ...string) (string, error) {
		return harness.DockerErr(env, append([]string{"--config", dockerConfig}, args...)...)
	}
	ref := addr + "/team/private:v1"
	harness.BuildImage(t, env, ref, 100_000)
	defer harness.DockerErr(env, "rmi", ref)

	if out, err := docker("push", ref); err == nil || !strings.Contains(out, "no basic auth credentials") && !strings.Contains(out, "unauthorized") {
		t.Fatalf("anonymous push: %v\n%s", err, out)
	}
	if out, err := docker("login", "-u", "builder", "-p", "wrong", addr); err == nil {
		t.Fatalf("login with a wrong password succeeded:\n%s", out)
	}
	if out, err := docker("login", "-u", "builder", "-p", "s3cret", addr); err != nil {
		t.Fatalf("login: %v\n%s", err, out)
	}
	if out, err := docker("push", ref); err != nil {
		t.Fatalf("push after login: %v\n%s", err, out)
	}
	pushed, _ := docker("image", "inspect", "-f", "{{index .RepoDigests 0}}", ref)
	digest := pushed[strings.Index(pushed, "@")+1:]

	// Anonymous pull with a client that handles a 401 challenge anywhere.
	got := skopeo(t, "inspect", "--tls-verify=false", "--no-creds", "--format", "{{.Digest}}", "docker://"+ref)
	if got != digest {
		t.Fatalf("anonymous skopeo inspect: %s, want %s", got, digest)
	}
	dir := t.TempDir()
	skopeo(t, "copy", "--src-tls-verify=false", "--src-no-creds", "docker://"+ref, "dir:"+dir)
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err != nil {
		t.Fatalf("anonymous copy wrote no manifest: %v", err)
	}
	// Anonymous writes stay refused.
	out, err := run("skopeo", "copy", "--dest-tls-verify=false", "--dest-no-creds", "dir:"+dir, "docker://"+addr+"/team/other:v1")
	if err == nil || !strings.Contains(out, "unauthorized") {
		t.Fatalf("anonymous skopeo push: %v\n%s", err, out)
	}
}
