package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// decodeFile decodes a YAML (.yaml, .yml) or JSON file into v, refusing
// unknown fields; "-" is standard input, read as YAML (JSON is YAML).
func decodeFile(path string, v any) error {
	var raw []byte
	var err error
	if path == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return err
	}
	if err := decodeBytes(raw, isJSONName(path), v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func isJSONName(path string) bool { return strings.EqualFold(filepath.Ext(path), ".json") }

func decodeBytes(raw []byte, isJSON bool, v any) error {
	if isJSON {
		d := json.NewDecoder(bytes.NewReader(raw))
		d.DisallowUnknownFields()
		return d.Decode(v)
	}
	d := yaml.NewDecoder(bytes.NewReader(raw))
	d.KnownFields(true)
	if err := d.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty file")
		}
		return err
	}
	return nil
}

// readSpec reads an app spec and checks it as the server would, so a
// mistake is named by its field before anything is sent.
func readSpec(path string) (*model.AppSpec, error) {
	var spec model.AppSpec
	if err := decodeFile(path, &spec); err != nil {
		var de *resource.DimError
		if errors.As(err, &de) {
			return nil, fmt.Errorf("%s: %w", path, model.AsFieldError(err, "resources"))
		}
		return nil, err
	}
	return &spec, nil
}

func checkSpec(path string, spec *model.AppSpec) error {
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// readPools reads one pool, a list of pools, or {pools: [...]}.
func readPools(path string) ([]model.Pool, error) {
	var raw []byte
	var err error
	if path == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	isJSON := isJSONName(path)
	var probe any
	if err := yaml.Unmarshal(raw, &probe); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var pools []model.Pool
	switch p := probe.(type) {
	case []any:
		err = decodeBytes(raw, isJSON, &pools)
	case map[string]any:
		if _, ok := p["pools"]; ok && len(p) == 1 {
			var doc struct {
				Pools []model.Pool `json:"pools" yaml:"pools"`
			}
			err = decodeBytes(raw, isJSON, &doc)
			pools = doc.Pools
		} else {
			var one model.Pool
			err = decodeBytes(raw, isJSON, &one)
			pools = []model.Pool{one}
		}
	default:
		err = errors.New("want a pool, a list of pools, or pools: [...]")
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(pools) == 0 {
		return nil, fmt.Errorf("%s: no pools", path)
	}
	for i := range pools {
		if err := pools[i].Validate(); err != nil {
			where := pools[i].Name
			if where == "" {
				where = fmt.Sprintf("pool %d", i+1)
			}
			return nil, fmt.Errorf("%s: %s: %w", path, where, err)
		}
	}
	return pools, nil
}
