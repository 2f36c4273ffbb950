package hdfs

import (
	"fmt"
	"math"
	"path"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// FuzzParameters: the driver's parameters, as the YAML under
// `storage: hdfs:` gives them, are refused with an error naming the
// parameter, or accepted within their documented ranges; a timeout given
// as a number is that many seconds, exactly. Seeds:
// testdata/fuzz/FuzzParameters.
func FuzzParameters(f *testing.F) {
	f.Fuzz(func(t *testing.T, doc string) {
		var params map[string]any
		if yaml.Unmarshal([]byte(doc), &params) != nil {
			return
		}
		for k := range params {
			if strings.EqualFold(k, "hadoopconfdir") {
				delete(params, k) // reads a directory: not this target's
			}
		}
		p, err := fromParametersImpl(params)
		if err != nil {
			named := false
			for k := range knownParameters {
				named = named || strings.HasPrefix(err.Error(), fmt.Sprintf("hdfs storage driver: parameter %q: ", k))
			}
			for k := range params {
				named = named || strings.HasPrefix(err.Error(), fmt.Sprintf("hdfs storage driver: parameter %q: unknown parameter", k))
			}
			if !named {
				t.Fatalf("error names no parameter: %v", err)
			}
			return
		}
		for _, nn := range p.Namenodes {
			if _, port, ok := strings.Cut(nn, ":"); !ok || port == "" {
				t.Fatalf("namenode %q accepted", nn)
			}
		}
		switch {
		case len(p.Namenodes) == 0, !path.IsAbs(p.RootDirectory), path.Clean(p.RootDirectory) != p.RootDirectory,
			p.BlockSize < 0, p.BlockSize%bytesPerChecksum != 0, p.Replication < 0, p.Replication > maxReplication,
			p.MaxThreads < 1, p.MaxClients < 1, p.DialTimeout <= 0, p.IOTimeout <= 0:
			t.Fatalf("accepted %+v", p)
		}
		switch p.DataTransferProtection {
		case "", "authentication", "integrity", "privacy":
		default:
			t.Fatalf("accepted protection %q", p.DataTransferProtection)
		}
		for key, got := range map[string]time.Duration{"dialtimeout": p.DialTimeout, "iotimeout": p.IOTimeout} {
			for k, v := range params {
				if !strings.EqualFold(k, key) {
					continue
				}
				if n, ok := v.(int); ok && (n > math.MaxInt64/int(time.Second) || got != time.Duration(n)*time.Second) {
					t.Fatalf("%s: %d seconds accepted as %v", k, n, got)
				}
			}
		}
	})
}
