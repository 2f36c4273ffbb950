package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/gaia-registry/gaia/tests/harness"
)

func skopeo(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run("skopeo", args...)
	if err != nil {
		t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// run runs a command and returns its trimmed combined output.
func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestDockerAndSkopeoAcrossTwoServers: two gaia-registry processes share a
// PostgreSQL and a storage directory; every request goes to the other
// server than the one before. docker push and pull of a multi-layer image
// (its chunked uploads cross servers) give the same digest and a working
// image; skopeo copies it to another repository; the servers' metrics saw
// the traffic.
func TestDockerAndSkopeoAcrossTwoServers(t *testing.T) {
	env := harness.Start(t, harness.Dockerd)
	db := harness.NewDatabase(t)
	root := t.TempDir()
	a, b := harness.FreeAddr(t), harness.FreeAddr(t)
	ra := harness.StartRegistry(t, a, harness.RegistryConfig(a, db, root))
	rb := harness.StartRegistry(t, b, harness.RegistryConfig(b, db, root))
	alt := harness.Alternate(t, ra.URL(), rb.URL())

	ref := alt.Host() + "/e2e/app:v1"
	harness.BuildImage(t, env, ref, 2<<20+7, 300_000, 1)
	harness.Docker(t, env, "push", ref)
	pushed := harness.Docker(t, env, "image", "inspect", "-f", "{{index .RepoDigests 0}}", ref)
	harness.Docker(t, env, "rmi", ref)
	harness.Docker(t, env, "pull", ref)
	pulled := harness.Docker(t, env, "image", "inspect", "-f", "{{index .RepoDigests 0}}", ref)
	if pushed != pulled || !strings.Contains(pushed, "@sha256:") {
		t.Fatalf("pushed %s, pulled %s", pushed, pulled)
	}
	if out := harness.Docker(t, env, "run", "--rm", "--network", "none", ref, "/bin/sh", "-c", "ls /data"); out != "layer0.bin\nlayer1.bin\nlayer2.bin" {
		t.Fatalf("pulled image content: %q", out)
	}
	harness.Docker(t, env, "rmi", ref)
	manifestDigest := pushed[strings.Index(pushed, "@")+1:]

	// skopeo copy between two repositories (blobs mounted or re-pushed),
	// then both resolve to the same manifest digest.
	dst := alt.Host() + "/e2e/copied:v1"
	skopeo(t, "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "docker://"+ref, "docker://"+dst)
	for _, r := range []string{ref, dst} {
		if got := skopeo(t, "inspect", "--tls-verify=false", "--format", "{{.Digest}}", "docker://"+r); got != manifestDigest {
			t.Fatalf("skopeo inspect %s: digest %s, want %s", r, got, manifestDigest)
		}
	}
	var tags struct{ Tags []string }
	if err := json.Unmarshal([]byte(skopeo(t, "list-tags", "--tls-verify=false", "docker://"+alt.Host()+"/e2e/copied")), &tags); err != nil || len(tags.Tags) != 1 || tags.Tags[0] != "v1" {
		t.Fatalf("skopeo list-tags: %+v %v", tags, err)
	}

	served := alt.Served()
	if served[0] < 5 || served[1] < 5 {
		t.Fatalf("requests per server: %v", served)
	}
	var all string
	for _, r := range []*harness.Registry{ra, rb} {
		resp, err := http.Get(r.URL() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{
			`gaia_registry_http_request_duration_seconds_bucket{method="PATCH",route="upload"`,
			`gaia_registry_storage_action_seconds_count{action="writer",driver="filesystem"}`,
			`gaia_registry_db_pool_max_connections`,
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("%s/metrics lacks %s", r.URL(), want)
			}
		}
		all += string(body)
	}
	for _, want := range []string{
		`gaia_registry_http_requests_total{code="201",method="PUT",route="manifest"}`,
		`gaia_registry_http_response_bytes_total{route="blob"}`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("neither server's metrics have %s", want)
		}
	}
}
