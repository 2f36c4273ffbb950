package yamlconfig

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// fuzzConf has a field of each kind the daemons' configs use.
type fuzzConf struct {
	HTTP struct {
		Addr  string        `yaml:"addr"`
		Drain time.Duration `yaml:"drain"`
		TLS   struct {
			Key string `yaml:"key"`
		} `yaml:"tls"`
	} `yaml:"http"`
	Count   int               `yaml:"count"`
	Retries *int              `yaml:"retries"`
	Flag    bool              `yaml:"flag"`
	Names   []string          `yaml:"names"`
	Peers   map[string]string `yaml:"peers"`
	Storage map[string]any    `yaml:"storage"`
}

var fuzzSections = []string{"http", "count", "retries", "flag", "names", "peers", "storage"}

// FuzzLoad: a file and one X_<KEY>=<value> override are loaded or
// refused with an error naming the file; no negative duration is
// accepted; an override sets its key as the
// value reads as YAML for that key's type (a string keeps its spelling:
// X_HTTP_ADDR=0123 is "0123", not 123) and changes no other key.
// Seeds: testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	path := filepath.Join(f.TempDir(), "c.yml") // one per fuzzing process
	f.Fuzz(func(t *testing.T, doc, key, value string) {
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		var plain fuzzConf
		if err := Load(path, nil, "X_", fuzzSections, &plain); err != nil {
			if !strings.HasPrefix(err.Error(), path+": ") {
				t.Fatalf("error without the file's name: %v", err)
			}
			return
		}
		if plain.HTTP.Drain < 0 {
			t.Fatalf("negative duration accepted: %q", doc)
		}
		var c fuzzConf
		err := Load(path, []string{"X_" + key + "=" + value}, "X_", fuzzSections, &c)
		if err != nil {
			if !strings.HasPrefix(err.Error(), path+" with X_* overrides: ") {
				t.Fatalf("override error without the file's name: %v", err)
			}
			return
		}
		if c.HTTP.Drain < 0 {
			t.Fatalf("negative duration accepted: X_%s=%q", key, value)
		}
		// What the value reads as, for a field of type T: as YAML, or
		// when that fails or is null, its text.
		as := func(out any) {
			var n yaml.Node
			if yaml.Unmarshal([]byte(value), &n) != nil || len(n.Content) == 0 || n.Content[0].Tag == "!!null" {
				n = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value}
			}
			if err := n.Decode(out); err != nil && !errors.As(err, new(*yaml.TypeError)) {
				t.Fatalf("decoding %q: %v", value, err)
			}
		}
		want := plain
		switch strings.ToLower(key) {
		case "http_addr":
			as(&want.HTTP.Addr)
		case "http_drain":
			as(&want.HTTP.Drain)
		case "http_tls_key":
			as(&want.HTTP.TLS.Key)
		case "count":
			as(&want.Count)
		case "flag":
			as(&want.Flag)
		default:
			return // other keys: no oracle here, only no panic
		}
		if !reflect.DeepEqual(c, want) {
			t.Fatalf("X_%s=%q over %q:\n got %+v\nwant %+v", key, value, doc, c, want)
		}
	})
}
