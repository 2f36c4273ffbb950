package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gaia-registry/gaia/mirror-sync/upstream"
	"github.com/gaia-registry/gaia/tests/harness"
)

// gaiactl runs gaiactl against the registry's admin API.
func gaiactl(t *testing.T, base, token string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(harness.Binary(t, "./cmd/gaiactl"), append([]string{"--server", base, "--token", token}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func policyFile(t *testing.T, json string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(p, []byte(json), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRetentionImmutabilityUsage, through the registry's admin API and
// gaiactl: an immutable-tag policy makes `docker push` of another image
// to an existing tag fail with the reason; a policy keeping the latest 3
// of 10 tags and protecting release-* leaves exactly those (its dry run
// deleting nothing); `gaiactl storage usage` and a quota answer.
func TestRetentionImmutabilityUsage(t *testing.T) {
	ctx := context.Background()
	env := harness.Start(t, harness.Dockerd)
	addr := harness.FreeAddr(t)
	db, root := harness.NewDatabase(t), t.TempDir()
	const token = "admin-secret"
	reg := harness.StartRegistry(t, addr, harness.RegistryConfig(addr, db, root)+"admin: {token: "+token+"}\n")
	base := reg.URL()

	if out, err := gaiactl(t, base, token, "retention", "set", "frozen", "-f", policyFile(t, `{"repositories": "prod/*", "immutable": "^v[0-9]"}`)); err != nil {
		t.Fatalf("retention set: %v\n%s", err, out)
	}
	ref := addr + "/prod/app:v1"
	harness.BuildImage(t, env, ref, 1000)
	harness.Docker(t, env, "push", ref)
	harness.Docker(t, env, "push", ref) // the same image again: allowed
	harness.BuildImage(t, env, ref, 1000)
	out, err := harness.DockerErr(env, "push", ref)
	if err == nil || !strings.Contains(out, "immutable") || !strings.Contains(out, "frozen") {
		t.Fatalf("docker push of another image to an immutable tag: %v\n%s", err, out)
	}
	harness.Docker(t, env, "tag", ref, addr+"/prod/app:latest")
	harness.Docker(t, env, "push", addr+"/prod/app:latest") // a tag the policy does not cover
	harness.Docker(t, env, "rmi", ref, addr+"/prod/app:latest")

	client := upstream.New(upstream.Options{URL: base})
	order := []string{"v1", "release-1", "v2", "v3", "v4", "release-2", "v5", "v6", "v7", "v8"}
	for i, tag := range order {
		img := harness.NewTestImage("linux/amd64", harness.Layer(uint64(500+i), 512))
		if err := img.Push(ctx, client, "team/svc", tag); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := gaiactl(t, base, token, "retention", "set", "team", "-f", policyFile(t, `{"repositories": "team/*", "keep_latest": 3, "protect": "release-*"}`)); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err = gaiactl(t, base, token, "retention", "run", "team", "--dry-run")
	if err != nil || strings.Count(out, "would delete") != 5 || !strings.Contains(out, "5 deleted, 5 kept") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if tags, _ := client.Tags(ctx, "team/svc"); len(tags) != 10 {
		t.Fatalf("the dry run deleted tags: %v", tags)
	}
	if out, err := gaiactl(t, base, token, "retention", "run", "team"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	tags, err := client.Tags(ctx, "team/svc")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(tags)
	if got := strings.Join(tags, " "); got != "release-1 release-2 v6 v7 v8" {
		t.Fatalf("tags after the policy: %s; want release-1 release-2 v6 v7 v8", got)
	}

	out, err = gaiactl(t, base, token, "storage", "usage", "team")
	if err != nil || !strings.Contains(out, "team/svc") || !strings.Contains(out, "\nteam ") {
		t.Fatalf("storage usage: %v\n%s", err, out)
	}
	if out, err := gaiactl(t, base, token, "storage", "quota", "team", "1"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	err = harness.NewTestImage("linux/amd64", harness.Layer(999, 512)).Push(ctx, client, "team/other", "v1")
	if err == nil || !strings.Contains(err.Error(), "quota") {
		t.Fatalf("a push over the namespace quota: %v", err)
	}
	if out, err := gaiactl(t, base, "wrong", "gc", "status"); err == nil || !strings.Contains(out, "token") {
		t.Fatalf("gc status with a wrong token: %v\n%s", err, out)
	}
	if out, err := gaiactl(t, base, token, "gc", "status"); err != nil || !strings.Contains(out, "manifests") {
		t.Fatalf("gc status: %v\n%s", err, out)
	}
}
