// Package yamlconfig loads a daemon's YAML configuration file with
// environment overrides: PREFIX<SECTION>_<KEY>... sets the key at that
// path (GAIA_HTTP_ADDR=... sets http.addr), its value read as YAML so
// booleans, numbers and durations keep their types. Unknown keys are
// errors, reported with the file's line numbers, and so are negative
// durations.
package yamlconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

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
	// The overrides go into the file's node tree, each value as the node
	// it parses to: a scalar keeps its text, so a string field gets the
	// value as spelled (an X=0123 token stays "0123") and other fields the
	// type they ask for, as if it were written in the file.
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		doc = yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{Kind: yaml.MappingNode}}}
	}
	// Aliases become copies, so an override of one use of an anchor
	// leaves the others as written (a bound keeps "billion laughs" out).
	budget := 10000 + 10*len(raw)
	root, err := expand(doc.Content[0], &budget)
	if err != nil {
		return fmt.Errorf("%s with %s* overrides: %w", path, prefix, err)
	}
	doc.Content[0] = root
	for _, o := range overrides {
		if !utf8.ValidString(o.value.Value) {
			return fmt.Errorf("%s with %s* overrides: %s: not valid UTF-8", path, prefix, o.name)
		}
		node := doc.Content[0]
		for _, p := range o.path[:len(o.path)-1] {
			node = child(node, p)
		}
		set(node, o.path[len(o.path)-1], o.value)
	}
	merged, err := yaml.Marshal(&doc)
	if err != nil {
		return fmt.Errorf("%s with %s* overrides: %w", path, prefix, err)
	}
	if err := decodeStrict(merged, out); err != nil {
		return fmt.Errorf("%s with %s* overrides: %w", path, prefix, err)
	}
	return nil
}

// expand copies n with every alias replaced by a copy of what it names,
// each node taken from budget.
func expand(n *yaml.Node, budget *int) (*yaml.Node, error) {
	if *budget--; *budget < 0 {
		return nil, errors.New("too many aliases to apply environment overrides")
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return expand(n.Alias, budget)
	}
	c := *n
	c.Anchor, c.Alias, c.Content = "", nil, make([]*yaml.Node, len(n.Content))
	if c.Kind == yaml.ScalarNode && c.ShortTag() == "!!null" {
		// An implicit null (`{key}`, `key:`) has no text; written back
		// it would read as "". Spell it.
		c.Value, c.Style = "null", 0
	}
	for i, e := range n.Content {
		var err error
		if c.Content[i], err = expand(e, budget); err != nil {
			return nil, err
		}
	}
	return &c, nil
}

// child returns the mapping under key in mapping m, making one (in place of
// whatever else was there) when there is none.
func child(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value != key {
			continue
		}
		v := m.Content[i+1]
		if v.Kind != yaml.MappingNode {
			v = &yaml.Node{Kind: yaml.MappingNode}
		}
		m.Content[i+1] = v
		return v
	}
	v := &yaml.Node{Kind: yaml.MappingNode}
	set(m, key, v)
	return v
}

// set puts value under key in mapping m.
func set(m *yaml.Node, key string, value *yaml.Node) {
	if m.Kind != yaml.MappingNode {
		*m = yaml.Node{Kind: yaml.MappingNode}
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = value
			return
		}
	}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, value)
}

type override struct {
	name  string // the variable
	path  []string
	value *yaml.Node
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
		// The value as YAML; as text when it is no YAML or null.
		var val yaml.Node
		if err := yaml.Unmarshal([]byte(v), &val); err != nil || len(val.Content) == 0 || val.Content[0].Tag == "!!null" {
			val.Content = []*yaml.Node{{Kind: yaml.ScalarNode, Tag: "!!str", Value: v}}
		}
		out = append(out, override{k, path, val.Content[0]})
	}
	return out
}

func decodeStrict(doc []byte, out any) error {
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if key, d := negativeDuration(reflect.ValueOf(out), ""); key != "" {
		return fmt.Errorf("%s: must not be negative, got %s", key, d)
	}
	return nil
}

var durationType = reflect.TypeOf(time.Duration(0))

// negativeDuration is the key and value of the first negative duration in
// v ("" when none is): no daemon has a use for one (0 asks for the default), and a
// negative poll interval or timeout fires at once, in a loop.
func negativeDuration(v reflect.Value, key string) (string, time.Duration) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			return negativeDuration(v.Elem(), key)
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || name == "-" {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			k := key
			if opts != "inline" {
				k = strings.TrimPrefix(key+"."+name, ".")
			}
			if bad, d := negativeDuration(v.Field(i), k); bad != "" {
				return bad, d
			}
		}
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			if bad, d := negativeDuration(v.Index(i), fmt.Sprintf("%s[%d]", key, i)); bad != "" {
				return bad, d
			}
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			if bad, d := negativeDuration(v.MapIndex(k), fmt.Sprintf("%s.%v", key, k)); bad != "" {
				return bad, d
			}
		}
	case reflect.Int64:
		if v.Type() == durationType && v.Int() < 0 {
			return key, time.Duration(v.Int())
		}
	}
	return "", 0
}
