package harness_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	gohdfs "github.com/colinmarc/hdfs/v2"
	goldap "github.com/go-ldap/ldap/v3"
	"github.com/jackc/pgx/v5"

	"github.com/gaia-registry/gaia/tests/harness"
)

// TestServices starts every service of the harness and uses each for real.
func TestServices(t *testing.T) {
	t.Run("postgres", func(t *testing.T) {
		env := harness.Start(t, harness.Postgres)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, env.Get(t, "GAIA_TEST_PG_DSN"))
		if err != nil {
			t.Fatalf("connect: %v\n%s", err, harness.Logs(harness.Postgres))
		}
		defer conn.Close(ctx)
		var n int
		if err := conn.QueryRow(ctx, "SELECT $1::int + 1", 41).Scan(&n); err != nil || n != 42 {
			t.Fatalf("query: %d %v", n, err)
		}
	})
	for _, svc := range []struct{ name, key string }{
		{harness.HDFS, "GAIA_TEST_HDFS_NAMENODE"},
		{harness.HDFSFaults, "GAIA_TEST_HDFS_FAULTS_NAMENODE"},
	} {
		t.Run(svc.name, func(t *testing.T) {
			env := harness.Start(t, svc.name)
			if svc.name == harness.HDFSFaults {
				harness.LockHDFSFaults(t) // not while a fault test has a daemon stopped
			}
			c, err := gohdfs.NewClient(gohdfs.ClientOptions{Addresses: []string{env.Get(t, svc.key)}, User: "gaia"})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			dir := "/harness-" + time.Now().Format("150405.000000")
			defer c.RemoveAll(dir)
			if err := c.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			// The cluster runs with 1 MiB blocks so tests cross block boundaries.
			def, err := c.ServerDefaults()
			if err != nil || def.BlockSize != 1<<20 || def.Replication != 1 {
				t.Fatalf("server defaults %+v %v: want 1 MiB blocks, replication 1", def, err)
			}
		})
	}
	t.Run("consul", func(t *testing.T) {
		env := harness.Start(t, harness.Consul)
		base := "http://" + env.Get(t, "GAIA_TEST_CONSUL_ADDR")
		req, _ := http.NewRequest(http.MethodPut, base+"/v1/kv/gaia/harness", strings.NewReader("hello"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("kv put: %v %v", resp, err)
		}
		resp.Body.Close()
		resp, err = http.Get(base + "/v1/kv/gaia/harness?raw")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "hello" {
			t.Fatalf("kv get: %q", b)
		}
		resp, err = http.Get(base + "/v1/agent/self")
		if err != nil {
			t.Fatal(err)
		}
		var self struct{ Config struct{ Server bool } }
		json.NewDecoder(resp.Body).Decode(&self)
		resp.Body.Close()
		if !self.Config.Server {
			t.Fatal("the dev agent should be a server")
		}
	})
	t.Run("slapd", func(t *testing.T) {
		env := harness.Start(t, harness.LDAP)
		conn, err := goldap.DialURL(env.Get(t, "GAIA_TEST_LDAP_URL"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := conn.Bind(env.Get(t, "GAIA_TEST_LDAP_ADMIN_DN"), env.Get(t, "GAIA_TEST_LDAP_ADMIN_PASSWORD")); err != nil {
			t.Fatalf("admin bind: %v", err)
		}
		base := env.Get(t, "GAIA_TEST_LDAP_BASE")
		for _, dn := range []string{"ou=people," + base, "ou=groups," + base} {
			if _, err := conn.Search(goldap.NewSearchRequest(dn, goldap.ScopeBaseObject, goldap.NeverDerefAliases,
				0, 0, false, "(objectClass=organizationalUnit)", []string{"1.1"}, nil)); err != nil {
				t.Fatalf("seeded %s: %v", dn, err)
			}
		}
	})
	t.Run("dockerd", func(t *testing.T) {
		env := harness.Start(t, harness.Dockerd)
		ref := "gaia-test/harness:" + time.Now().Format("150405")
		harness.BuildImage(t, env, ref, 1000, 20000)
		defer harness.Docker(t, env, "rmi", ref)
		layers := harness.Docker(t, env, "image", "inspect", "-f", "{{len .RootFS.Layers}}", ref)
		if layers != "3" {
			t.Fatalf("image has %s layers, want 3 (busybox + 2)", layers)
		}
		out := harness.Docker(t, env, "run", "--rm", "--network", "none", ref, "/bin/sh", "-c", "echo ok; ls /data")
		if out != "ok\nlayer0.bin\nlayer1.bin" {
			t.Fatalf("container printed %q", out)
		}
		// Bridge networking with a published port (the node agent's
		// instances need it; svc.sh gives dockerd a bridge of its own).
		id := harness.Docker(t, env, "run", "-d", "-p", "127.0.0.1::8080", ref, "/bin/busybox", "sh", "-c",
			"mkdir -p /www && echo published > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www")
		defer harness.Docker(t, env, "rm", "-f", id)
		hostPort := harness.Docker(t, env, "port", id, "8080/tcp")
		var body string
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := http.Get("http://" + strings.Split(hostPort, "\n")[0] + "/")
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if body = strings.TrimSpace(string(b)); body == "published" {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET of the published port %s: %q, %v (no bridge networking?)", hostPort, body, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

// TestStartPostgres: a test's own PostgreSQL keeps committed rows across a
// Stop and a Start on the same port, and refuses connections in between.
func TestStartPostgres(t *testing.T) {
	pg := harness.StartPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, pg.Log())
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before the stop')"); err != nil {
		t.Fatal(err)
	}
	pg.Stop(t)
	// The open session was ended by the shutdown.
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("a session survived the stop")
	}
	if c, err := pgx.Connect(ctx, pg.URL); err == nil {
		c.Close(ctx)
		t.Fatal("connected while stopped")
	}
	pg.Start(t)
	conn, err = pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatalf("connect after the start: %v\n%s", err, pg.Log())
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil || v != "before the stop" {
		t.Fatalf("after a restart: %q %v", v, err)
	}
}
