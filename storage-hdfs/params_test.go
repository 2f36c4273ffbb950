package hdfs

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParametersValidation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		params  map[string]any
		wantKey string // the key the error must name; "" for success
	}{
		{"minimal", map[string]any{"namenodes": "nn1:8020"}, ""},
		{"list", map[string]any{"namenodes": []any{"nn1:8020", "nn2:8020"}}, ""},
		{"missing namenodes", map[string]any{}, "namenodes"},
		{"empty namenodes", map[string]any{"namenodes": ""}, "namenodes"},
		{"namenode without port", map[string]any{"namenodes": "nn1"}, "namenodes"},
		{"namenodes of ints", map[string]any{"namenodes": []any{1, 2}}, "namenodes"},
		{"relative root", map[string]any{"namenodes": "nn:1", "rootdirectory": "reg"}, "rootdirectory"},
		{"odd blocksize", map[string]any{"namenodes": "nn:1", "blocksize": 1000}, "blocksize"},
		{"text blocksize", map[string]any{"namenodes": "nn:1", "blocksize": "big"}, "blocksize"},
		{"replication 0 is default", map[string]any{"namenodes": "nn:1", "replication": 0}, ""},
		{"replication too high", map[string]any{"namenodes": "nn:1", "replication": 1000}, "replication"},
		{"maxthreads zero", map[string]any{"namenodes": "nn:1", "maxthreads": 0}, "maxthreads"},
		{"maxclients zero", map[string]any{"namenodes": "nn:1", "maxclients": 0}, "maxclients"},
		{"maxclients negative", map[string]any{"namenodes": "nn:1", "maxclients": -4}, "maxclients"},
		{"maxclients text", map[string]any{"namenodes": "nn:1", "maxclients": "many"}, "maxclients"},
		{"bad bool", map[string]any{"namenodes": "nn:1", "usedatanodehostname": "perhaps"}, "usedatanodehostname"},
		{"bad protection", map[string]any{"namenodes": "nn:1", "datatransferprotection": "secret"}, "datatransferprotection"},
		{"bad timeout", map[string]any{"namenodes": "nn:1", "iotimeout": "soon"}, "iotimeout"},
		{"unknown key", map[string]any{"namenodes": "nn:1", "namenode": "nn:1"}, "namenode"},
		{"missing conf dir", map[string]any{"hadoopconfdir": "/nonexistent/gaia"}, "hadoopconfdir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := fromParametersImpl(tc.params)
			if tc.wantKey == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want an error naming %q", tc.wantKey)
			}
			if !strings.Contains(err.Error(), `"`+tc.wantKey+`"`) {
				t.Fatalf("error %q does not name %q", err, tc.wantKey)
			}
		})
	}
}

func TestParametersValues(t *testing.T) {
	p, err := fromParametersImpl(map[string]any{
		"namenodes": "nn1:8020, nn2:8020", "rootdirectory": "/a/b/", "user": "reg",
		"blocksize": "134217728", "replication": 3, "maxthreads": 50, "maxclients": "64", "dialtimeout": "3s", "iotimeout": 90,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Namenodes) != 2 || p.Namenodes[1] != "nn2:8020" || p.RootDirectory != "/a/b" || p.User != "reg" ||
		p.BlockSize != 128<<20 || p.Replication != 3 || p.MaxThreads != 50 || p.MaxClients != 64 ||
		p.DialTimeout != 3*time.Second || p.IOTimeout != 90*time.Second {
		t.Fatalf("parsed %+v", p)
	}
	if p, err := fromParametersImpl(map[string]any{"namenodes": "nn:1"}); err != nil || p.MaxClients != defaultMaxClients {
		t.Fatalf("maxclients default: %+v, %v", p, err)
	}
}

func TestParametersFromHadoopConf(t *testing.T) {
	dir := t.TempDir()
	site := `<configuration>
<property><name>dfs.nameservices</name><value>gaia</value></property>
<property><name>dfs.namenode.rpc-address.gaia.nn1</name><value>nn1:8020</value></property>
<property><name>dfs.namenode.rpc-address.gaia.nn2</name><value>nn2:8020</value></property>
<property><name>dfs.client.use.datanode.hostname</name><value>true</value></property>
</configuration>`
	if err := os.WriteFile(filepath.Join(dir, "hdfs-site.xml"), []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := fromParametersImpl(map[string]any{"hadoopconfdir": dir})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Namenodes) != 2 || !p.UseDatanodeHostname {
		t.Fatalf("from hdfs-site.xml: %+v", p)
	}
	// Explicit namenodes win over the site files.
	p, err = fromParametersImpl(map[string]any{"hadoopconfdir": dir, "namenodes": "other:9000"})
	if err != nil || len(p.Namenodes) != 1 || p.Namenodes[0] != "other:9000" {
		t.Fatalf("explicit namenodes: %+v %v", p, err)
	}
	kerb := `<configuration><property><name>hadoop.security.authentication</name><value>kerberos</value></property></configuration>`
	os.WriteFile(filepath.Join(dir, "core-site.xml"), []byte(kerb), 0o644)
	if _, err := fromParametersImpl(map[string]any{"hadoopconfdir": dir}); err == nil || !strings.Contains(err.Error(), "kerberos") {
		t.Fatalf("kerberos config accepted: %v", err)
	}
}

func TestIsConnError(t *testing.T) {
	notConn := []error{
		&os.PathError{Op: "remove", Path: "/x", Err: syscall.ENOTEMPTY},
		&os.PathError{Op: "open", Path: "/x", Err: os.ErrNotExist},
		&os.PathError{Op: "open", Path: "/x", Err: os.ErrPermission},
	}
	for _, err := range notConn {
		if isConnError(err) {
			t.Errorf("isConnError(%v) = true", err)
		}
	}
	conn := []error{
		io.EOF,
		&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET},
		fmt.Errorf("no available namenodes: %w", syscall.ECONNREFUSED),
		&os.PathError{Op: "create", Path: "/x", Err: syscall.EPIPE},
	}
	for _, err := range conn {
		if !isConnError(err) {
			t.Errorf("isConnError(%v) = false", err)
		}
	}
}
