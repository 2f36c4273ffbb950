// Package resource holds gaia-scheduler's six-dimension resource vectors
// and their human units.
//
// Units: cpu in millicores, memory and disk in bytes, diskio in bytes per
// second, netin and netout in bits per second. In JSON and YAML a Vector
// is an object keyed by dimension name whose values are human strings
// ("500m", "2", "4Gi", "50MiB/s", "100Mbit"); plain numbers are accepted on
// input and read exactly as the same digits in a string would be (cpu 2 is
// two cores, memory 1024 is 1024 bytes). Omitted dimensions are 0.
package resource

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Dim indexes a Vector.
type Dim int

// The six dimensions.
const (
	CPU Dim = iota
	Memory
	Disk
	DiskIO
	NetIn
	NetOut
	NumDims = 6
)

// Dims lists every dimension in order.
var Dims = [NumDims]Dim{CPU, Memory, Disk, DiskIO, NetIn, NetOut}

var dimNames = [NumDims]string{"cpu", "memory", "disk", "diskio", "netin", "netout"}

// String is the dimension's JSON name.
func (d Dim) String() string {
	if d < 0 || int(d) >= NumDims {
		return fmt.Sprintf("dim(%d)", int(d))
	}
	return dimNames[d]
}

// ParseDim maps a JSON name ("cpu", "memory", ...) to its Dim.
func ParseDim(name string) (Dim, bool) {
	for i, n := range dimNames {
		if n == name {
			return Dim(i), true
		}
	}
	return 0, false
}

// Vector is an amount in all six dimensions, in base units.
type Vector [NumDims]int64

// New builds a Vector from cpu millicores and memory bytes, the rest 0.
func New(cpuMilli, memBytes int64) Vector { return Vector{cpuMilli, memBytes} }

// Add returns v+o.
func (v Vector) Add(o Vector) Vector {
	for i := range v {
		v[i] += o[i]
	}
	return v
}

// Sub returns v-o (which may be negative in some dimension).
func (v Vector) Sub(o Vector) Vector {
	for i := range v {
		v[i] -= o[i]
	}
	return v
}

// Scale returns v*n.
func (v Vector) Scale(n int64) Vector {
	for i := range v {
		v[i] *= n
	}
	return v
}

// Fits reports whether v ≤ capacity in every dimension.
func (v Vector) Fits(capacity Vector) bool {
	for i := range v {
		if v[i] > capacity[i] {
			return false
		}
	}
	return true
}

// IsZero reports whether every dimension is 0.
func (v Vector) IsZero() bool { return v == Vector{} }

// AnyNegative reports whether some dimension is below 0.
func (v Vector) AnyNegative() bool {
	for _, x := range v {
		if x < 0 {
			return true
		}
	}
	return false
}

// Max returns the per-dimension maximum of v and o.
func (v Vector) Max(o Vector) Vector {
	for i := range v {
		if o[i] > v[i] {
			v[i] = o[i]
		}
	}
	return v
}

// Min returns the per-dimension minimum of v and o.
func (v Vector) Min(o Vector) Vector {
	for i := range v {
		if o[i] < v[i] {
			v[i] = o[i]
		}
	}
	return v
}

// DominantShare is max over dimensions of v[d]/total[d], skipping
// dimensions where total is 0 (a dimension nobody has cannot dominate).
func (v Vector) DominantShare(total Vector) float64 {
	s := 0.0
	for i := range v {
		if total[i] > 0 {
			if f := float64(v[i]) / float64(total[i]); f > s {
				s = f
			}
		}
	}
	return s
}

// String formats v as its JSON object without quotes around keys, for
// messages: "cpu=500m memory=4Gi".
func (v Vector) String() string {
	var b strings.Builder
	for _, d := range Dims {
		if v[d] == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(d.String())
		b.WriteByte('=')
		b.WriteString(Format(d, v[d]))
	}
	if b.Len() == 0 {
		return "0"
	}
	return b.String()
}

// MarshalJSON writes the non-zero dimensions as human strings.
func (v Vector) MarshalJSON() ([]byte, error) {
	var b []byte
	b = append(b, '{')
	first := true
	for _, d := range Dims {
		if v[d] == 0 {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = strconv.AppendQuote(b, d.String())
		b = append(b, ':')
		b = strconv.AppendQuote(b, Format(d, v[d]))
	}
	return append(b, '}'), nil
}

// UnmarshalJSON reads an object of human strings or numbers; null is zero.
func (v *Vector) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		*v = Vector{}
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("resources: want an object keyed by cpu, memory, disk, diskio, netin, netout")
	}
	var out Vector
	for _, k := range sortedKeys(m) {
		raw := m[k]
		d, ok := ParseDim(k)
		if !ok {
			return &DimError{Dim: k, Err: fmt.Errorf("unknown resource %q (want cpu, memory, disk, diskio, netin or netout)", k)}
		}
		var s string
		if len(raw) > 0 && raw[0] == '"' {
			if err := json.Unmarshal(raw, &s); err != nil {
				return &DimError{Dim: k, Err: err}
			}
		} else {
			s = string(raw)
		}
		x, err := Parse(d, s)
		if err != nil {
			return &DimError{Dim: k, Err: err}
		}
		out[d] = x
	}
	*v = out
	return nil
}

// MarshalYAML writes the same object as MarshalJSON.
func (v Vector) MarshalYAML() (any, error) {
	m := map[string]string{}
	for _, d := range Dims {
		if v[d] != 0 {
			m[d.String()] = Format(d, v[d])
		}
	}
	return m, nil
}

// UnmarshalYAML reads an object of human strings or numbers.
func (v *Vector) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && (n.Tag == "!!null" || n.Value == "") {
		*v = Vector{}
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: resources: want a mapping keyed by cpu, memory, disk, diskio, netin, netout", n.Line)
	}
	var out Vector
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		d, ok := ParseDim(k.Value)
		if !ok {
			return &DimError{Dim: k.Value, Err: fmt.Errorf("line %d: unknown resource %q (want cpu, memory, disk, diskio, netin or netout)", k.Line, k.Value)}
		}
		if val.Kind != yaml.ScalarNode {
			return &DimError{Dim: k.Value, Err: fmt.Errorf("line %d: want a quantity", val.Line)}
		}
		x, err := Parse(d, val.Value)
		if err != nil {
			return &DimError{Dim: k.Value, Err: fmt.Errorf("line %d: %w", val.Line, err)}
		}
		out[d] = x
	}
	*v = out
	return nil
}

// DimError names the dimension a quantity failed in, so callers can build
// a JSON path such as resources.memory.
type DimError struct {
	Dim string
	Err error
}

func (e *DimError) Error() string { return e.Dim + ": " + e.Err.Error() }
func (e *DimError) Unwrap() error { return e.Err }

func sortedKeys(m map[string]json.RawMessage) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

type unit struct {
	suffix string
	mult   int64
}

// Suffixes per kind, longest first within a family so "Mi" is tried before
// "M".
var (
	byteUnits = []unit{
		{"EiB", 1 << 60}, {"PiB", 1 << 50}, {"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
		{"Ei", 1 << 60}, {"Pi", 1 << 50}, {"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10},
		{"EB", 1e18}, {"PB", 1e15}, {"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"kB", 1e3},
		{"E", 1e18}, {"P", 1e15}, {"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"K", 1e3}, {"k", 1e3},
		{"B", 1}, {"", 1},
	}
	bitUnits = []unit{
		{"Tbit", 1e12}, {"Gbit", 1e9}, {"Mbit", 1e6}, {"Kbit", 1e3}, {"kbit", 1e3},
		{"Tbps", 1e12}, {"Gbps", 1e9}, {"Mbps", 1e6}, {"Kbps", 1e3}, {"kbps", 1e3},
		{"Tibit", 1 << 40}, {"Gibit", 1 << 30}, {"Mibit", 1 << 20}, {"Kibit", 1 << 10},
		{"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"K", 1e3}, {"k", 1e3},
		{"bps", 1}, {"bit", 1}, {"", 1},
	}
	cpuUnits = []unit{{"m", 1}, {"", 1000}}
)

// Parse reads a human quantity for dimension d into base units:
//
//	cpu     "2", "0.5", "500m"               → millicores
//	memory  "4Gi", "512Mi", "1G", "1024"     → bytes (Ki Mi Gi Ti Pi binary,
//	disk                                       K M G T P decimal, optional B)
//	diskio  "50MiB/s", "1Gi", "100MB/s"      → bytes/s (the "/s" is optional)
//	netin   "100Mbit", "1Gbps", "10G"        → bits/s (the "/s" is optional)
//	netout
//
// Fractions are allowed when the result is a whole number of base units
// ("1.5Gi", "0.25" cpu); negative quantities are refused.
func Parse(d Dim, s string) (int64, error) {
	in := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty quantity")
	}
	var units []unit
	switch d {
	case CPU:
		units = cpuUnits
	case Memory, Disk:
		units = byteUnits
	case DiskIO:
		units = byteUnits
		s = strings.TrimSuffix(s, "/s")
	case NetIn, NetOut:
		units = bitUnits
		s = strings.TrimSuffix(s, "/s")
	default:
		return 0, fmt.Errorf("unknown dimension %d", int(d))
	}
	for _, u := range units {
		if !strings.HasSuffix(s, u.suffix) {
			continue
		}
		num := strings.TrimSpace(strings.TrimSuffix(s, u.suffix))
		if num == "" || !isNumber(num) {
			continue
		}
		r, ok := new(big.Rat).SetString(num)
		if !ok {
			continue
		}
		if r.Sign() < 0 {
			return 0, fmt.Errorf("%q: negative quantity", in)
		}
		r.Mul(r, new(big.Rat).SetInt64(u.mult))
		if !r.IsInt() {
			return 0, fmt.Errorf("%q: not a whole number of %s", in, baseUnit(d))
		}
		n := r.Num()
		if !n.IsInt64() {
			return 0, fmt.Errorf("%q: too large", in)
		}
		return n.Int64(), nil
	}
	return 0, fmt.Errorf("%q: not a %s quantity (e.g. %s)", in, d, example(d))
}

func isNumber(s string) bool {
	dot, digits := false, 0
	for i, c := range s {
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !dot:
			dot = true
		case (c == '-' || c == '+') && i == 0:
		default:
			return false
		}
	}
	return digits > 0
}

func baseUnit(d Dim) string {
	switch d {
	case CPU:
		return "millicores"
	case Memory, Disk:
		return "bytes"
	case DiskIO:
		return "bytes/s"
	default:
		return "bits/s"
	}
}

func example(d Dim) string {
	switch d {
	case CPU:
		return `"2" or "500m"`
	case Memory, Disk:
		return `"4Gi" or "512Mi"`
	case DiskIO:
		return `"50MiB/s"`
	default:
		return `"100Mbit"`
	}
}

// Format writes v in the largest unit that divides it exactly, so that
// Parse(d, Format(d, v)) == v.
func Format(d Dim, v int64) string {
	neg := ""
	if v < 0 {
		if v == math.MinInt64 {
			return strconv.FormatInt(v, 10)
		}
		neg, v = "-", -v
	}
	switch d {
	case CPU:
		if v%1000 == 0 {
			return neg + strconv.FormatInt(v/1000, 10)
		}
		return neg + strconv.FormatInt(v, 10) + "m"
	case Memory, Disk, DiskIO:
		suf := ""
		if d == DiskIO {
			suf = "/s"
		}
		for _, u := range []unit{{"Ei", 1 << 60}, {"Pi", 1 << 50}, {"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
			if v != 0 && v%u.mult == 0 {
				if d == DiskIO {
					return neg + strconv.FormatInt(v/u.mult, 10) + u.suffix + "B" + suf
				}
				return neg + strconv.FormatInt(v/u.mult, 10) + u.suffix
			}
		}
		if d == DiskIO {
			return neg + strconv.FormatInt(v, 10) + "B/s"
		}
		return neg + strconv.FormatInt(v, 10)
	case NetIn, NetOut:
		for _, u := range []unit{{"Tbit", 1e12}, {"Gbit", 1e9}, {"Mbit", 1e6}, {"Kbit", 1e3}} {
			if v != 0 && v%u.mult == 0 {
				return neg + strconv.FormatInt(v/u.mult, 10) + u.suffix
			}
		}
		return neg + strconv.FormatInt(v, 10) + "bit"
	}
	return neg + strconv.FormatInt(v, 10)
}

// MustParse is Parse that panics, for tests and literals.
func MustParse(d Dim, s string) int64 {
	x, err := Parse(d, s)
	if err != nil {
		panic(err)
	}
	return x
}

// MustVector builds a Vector from "dim=quantity" pairs, for tests and
// literals: MustVector("cpu=500m", "memory=4Gi").
func MustVector(pairs ...string) Vector {
	var v Vector
	for _, p := range pairs {
		k, q, ok := strings.Cut(p, "=")
		d, known := ParseDim(k)
		if !ok || !known {
			panic("resource.MustVector: bad pair " + p)
		}
		v[d] = MustParse(d, q)
	}
	return v
}

// Bytes is a memory amount in bytes that marshals as a human string
// ("8Gi"); used for AppSpec.memoryLimit.
type Bytes int64

// MarshalJSON writes a human string.
func (b Bytes) MarshalJSON() ([]byte, error) { return quantityJSON(Memory, int64(b)) }

// UnmarshalJSON reads a human string or a number of bytes.
func (b *Bytes) UnmarshalJSON(data []byte) error { return quantityFromJSON(Memory, data, (*int64)(b)) }

// MarshalYAML writes a human string.
func (b Bytes) MarshalYAML() (any, error) { return Format(Memory, int64(b)), nil }

// UnmarshalYAML reads a human string or a number of bytes.
func (b *Bytes) UnmarshalYAML(n *yaml.Node) error {
	return quantityFromYAML(Memory, n, "a memory quantity such as 8Gi", (*int64)(b))
}

// Millicores is a CPU amount that marshals as a human string ("2",
// "500m"); used for AppSpec.cpuLimit.
type Millicores int64

// MarshalJSON writes a human string.
func (m Millicores) MarshalJSON() ([]byte, error) { return quantityJSON(CPU, int64(m)) }

// UnmarshalJSON reads a human string or a number of cores.
func (m *Millicores) UnmarshalJSON(data []byte) error {
	return quantityFromJSON(CPU, data, (*int64)(m))
}

// MarshalYAML writes a human string.
func (m Millicores) MarshalYAML() (any, error) { return Format(CPU, int64(m)), nil }

// UnmarshalYAML reads a human string or a number of cores.
func (m *Millicores) UnmarshalYAML(n *yaml.Node) error {
	return quantityFromYAML(CPU, n, "a CPU quantity such as 2 or 500m", (*int64)(m))
}

func quantityJSON(d Dim, x int64) ([]byte, error) { return strconv.AppendQuote(nil, Format(d, x)), nil }

// quantityFromJSON reads a quantity of d, a human string or a bare number,
// into x (null: 0).
func quantityFromJSON(d Dim, data []byte, x *int64) error {
	if string(data) == "null" {
		*x = 0
		return nil
	}
	s := string(data)
	if len(data) > 0 && data[0] == '"' {
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
	}
	v, err := Parse(d, s)
	if err != nil {
		return err
	}
	*x = v
	return nil
}

// quantityFromYAML reads a scalar quantity of d into x.
func quantityFromYAML(d Dim, n *yaml.Node, want string, x *int64) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want %s", n.Line, want)
	}
	v, err := Parse(d, n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*x = v
	return nil
}
