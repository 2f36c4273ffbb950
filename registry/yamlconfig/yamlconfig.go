// Package yamlconfig loads a daemon's YAML configuration file with
// environment overrides: PREFIX<SECTION>_<KEY>... sets the key at that
// path (GAIA_HTTP_ADDR=... sets http.addr), its value read as YAML so
// booleans, numbers and durations keep their types. Unknown keys are
// errors, reported with the file's line numbers.
package yamlconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Load decodes the file at path into out, then, if environ holds
// overrides (variables PREFIX<section>_... for one of sections), decodes
// the file with them applied. Other variables with the prefix belong to
// other programs and are ignored.
func Load(path string, environ []string, prefix string, sections []string, out any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	// The file as written first, so errors carry its line numbers.
	if err := decodeStrict(raw, out); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	known := map[string]bool{}
	for _, s := range sections {
		known[s] = true
	}
	overrides := matching(environ, prefix, known)
	if len(overrides) == 0 {
		return nil
	}
	var tree map[string]any
	if err := yaml.Unmarshal(raw, &tree); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if tree == nil {
		tree = map[string]any{}
	}
	for _, o := range overrides {
		node := tree
		for _, p := range o.path[:len(o.path)-1] {
			next, ok := node[p].(map[string]any)
			if !ok {
				next = map[string]any{}
				node[p] = next
			}
			node = next
		}
		node[o.path[len(o.path)-1]] = o.value
	}
	merged, err := yaml.Marshal(tree)
	if err != nil {
		return err
	}
	if err := decodeStrict(merged, out); err != nil {
		return fmt.Errorf("%s with %s* overrides: %w", path, prefix, err)
	}
	return nil
}

type override struct {
	path  []string
	value any
}

func matching(environ []string, prefix string, sections map[string]bool) []override {
	environ = append([]string(nil), environ...)
	sort.Strings(environ) // deterministic when two variables touch one key
	var out []override
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		rest, found := strings.CutPrefix(k, prefix)
		if !ok || !found {
			continue
		}
		path := strings.Split(strings.ToLower(rest), "_")
		if !sections[path[0]] {
			continue
		}
		var val any
		if err := yaml.Unmarshal([]byte(v), &val); err != nil || val == nil {
			val = v
		}
		out = append(out, override{path, val})
	}
	return out
}

func decodeStrict(doc []byte, out any) error {
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}
