// Package e2e holds end-to-end tests: real binaries, real services, real
// clients (the docker CLI against the harness's dockerd).
package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	gohdfs "github.com/colinmarc/hdfs/v2"
	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"

	"github.com/gaia-registry/gaia/registry/uploadsession"
	"github.com/gaia-registry/gaia/tests/harness"
)

// TestDockerPushPullOnHDFS: the docker CLI pushes a multi-layer image to
// gaia-registry keeping blobs in the real HDFS, pulls it back after
// removing it locally, and gets the same digest; the layers are in HDFS,
// one object per blob, and nothing else is.
func TestDockerPushPullOnHDFS(t *testing.T) {
	env := harness.Start(t, harness.HDFS, harness.Dockerd)
	nn := env.Get(t, "GAIA_TEST_HDFS_NAMENODE")
	addr := harness.FreeAddr(t)
	root := fmt.Sprintf("/gaia-e2e/push-%d", time.Now().UnixNano())
	db := harness.NewDatabase(t)
	reg := harness.StartRegistry(t, addr, harness.RegistryConfig(addr, db,
		fmt.Sprintf("hdfs: {namenodes: [%q], rootdirectory: %s, user: gaia, replication: 1}", nn, root)))

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
	// Exactly one object per blob PostgreSQL records, at its digest's
	// path and of its size; nothing else.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, _ := conn.Query(ctx, `SELECT digest, size FROM blobs`)
	recorded := map[string]int64{} // storage path → size
	var bigBlobs int
	for rows.Next() {
		var d digest.Digest
		var size int64
		if err := rows.Scan(&d, &size); err != nil {
			t.Fatal(err)
		}
		recorded[root+uploadsession.BlobPath(d)] = size
		if size > 3<<20 {
			bigBlobs++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(recorded) != 5 || bigBlobs != 1 {
		t.Fatalf("blob rows: %d (%d over 3 MiB); want config + 4 layers, one over 3 MiB (manifests live in PostgreSQL)", len(recorded), bigBlobs)
	}
	var stray []string
	found := 0
	err = c.Walk(root, func(p string, fi os.FileInfo, err error) error {
		switch {
		case err != nil || fi.IsDir():
		case recorded[p] == fi.Size() && fi.Size() > 0:
			found++
		default:
			stray = append(stray, fmt.Sprintf("%s (%d bytes)", p, fi.Size()))
		}
		return err
	})
	if err != nil || found != len(recorded) {
		t.Fatalf("of %d recorded blobs, %d are in HDFS at their path and size (walk: %v)", len(recorded), found, err)
	}
	if len(stray) > 0 {
		t.Fatalf("files other than the recorded blobs in HDFS: %v", stray)
	}

	if err := reg.Stop(); err != nil {
		t.Fatalf("graceful stop: %v\n%s", err, reg.Log())
	}
}
