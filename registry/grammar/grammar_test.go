package grammar

import (
	"errors"
	"math"
	"math/big"
	"regexp"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestValidTag(t *testing.T) {
	long := strings.Repeat("a", 128)
	for _, c := range []struct {
		tag string
		ok  bool
	}{
		{"latest", true}, {"v1.2.3", true}, {"_x", true}, {"A-b_c.d", true}, {"9", true},
		{long, true}, {long + "a", false},
		{"", false}, {"-bad", false}, {".bad", false}, {"a/b", false}, {"a:b", false}, {"a b", false}, {"é", false},
	} {
		if got := ValidTag(c.tag); got != c.ok {
			t.Errorf("ValidTag(%q) = %v; want %v", c.tag, got, c.ok)
		}
	}
}

// path builds the path of a route; uploadNoSlash: "/blobs/uploads" for a
// new upload instead of "/blobs/uploads/".
func path(rt Route, uploadNoSlash bool) string {
	switch rt.Kind {
	case "base":
		return "/v2/"
	case "catalog":
		return "/v2/_catalog"
	case "manifest", "blob", "referrer":
		return "/v2/" + rt.Name + "/" + rt.Kind + "s/" + rt.Ref
	case "tags":
		return "/v2/" + rt.Name + "/tags/list"
	case "upload":
		if rt.Ref == "" && uploadNoSlash {
			return "/v2/" + rt.Name + "/blobs/uploads"
		}
		return "/v2/" + rt.Name + "/blobs/uploads/" + rt.Ref
	}
	return ""
}

// FuzzParse: a route is the whole path, read back exactly (nothing
// dropped, nothing cleaned), and a repository whose name is valid is
// routed to by every kind of request whatever its name's components
// (names may hold "blobs", "uploads", "tags", "manifests"). Seeds:
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	d := digest.FromString("x").String()
	f.Fuzz(func(t *testing.T, p string) {
		rt := Parse(p)
		switch rt.Kind {
		case "":
			if rt != (Route{}) {
				t.Fatalf("%q: unknown route with fields %+v", p, rt)
			}
		case "base", "catalog":
			if rt.Name != "" || rt.Ref != "" || (p != path(rt, false) && p != "/v2") {
				t.Fatalf("%q read as %+v", p, rt)
			}
		case "manifest", "blob", "referrer", "tags", "upload":
			if p != path(rt, false) && p != path(rt, true) {
				t.Fatalf("%q read as %+v, which is the path %q", p, rt, path(rt, false))
			}
			if strings.Contains(rt.Ref, "/") {
				t.Fatalf("%q: reference %q holds a slash", p, rt.Ref)
			}
		default:
			t.Fatalf("%q: kind %q", p, rt.Kind)
		}
		if !ValidName(rt.Name) {
			return
		}
		for _, want := range []Route{
			{"manifest", rt.Name, "latest"}, {"manifest", rt.Name, d}, {"manifest", rt.Name, "list"}, {"manifest", rt.Name, "uploads"},
			{"blob", rt.Name, d}, {"referrer", rt.Name, d}, {"tags", rt.Name, ""},
			{"upload", rt.Name, ""}, {"upload", rt.Name, "3f2a-11"}, {"upload", rt.Name, "list"},
		} {
			for _, noSlash := range []bool{false, true} {
				if got := Parse(path(want, noSlash)); got != want {
					t.Fatalf("%q read as %+v, want %+v", path(want, noSlash), got, want)
				}
			}
		}
	})
}

var tagRegexp = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`) // the spec's, verbatim

// FuzzReference: a reference is accepted as exactly what it says (a tag
// matching the spec's regular expression, or a valid digest of an
// available algorithm with the right length) or refused with the spec's
// error for what it looks like. Seeds: testdata/fuzz/FuzzReference.
func FuzzReference(f *testing.F) {
	f.Fuzz(func(t *testing.T, ref string) {
		r, err := ParseReference(ref)
		if err != nil {
			var ge *Error
			want := ErrTagInvalid
			if strings.Contains(ref, ":") {
				want = ErrDigestInvalid
			}
			if !errors.As(err, &ge) || ge.Kind != want || ge.Detail == "" || !errors.Is(err, want) {
				t.Fatalf("%q refused with %#v, want a %v *Error with a detail", ref, err, want)
			}
			if want == ErrTagInvalid && tagRegexp.MatchString(ref) {
				t.Fatalf("tag %q refused", ref)
			}
			return
		}
		if r.String() != ref || (r.Tag == "") == (r.Digest == "") {
			t.Fatalf("%q read as %+v", ref, r)
		}
		if r.Tag != "" && !tagRegexp.MatchString(r.Tag) {
			t.Fatalf("tag %q accepted against the spec's grammar", r.Tag)
		}
		if r.Digest != "" {
			alg := r.Digest.Algorithm()
			if r.Digest.Validate() != nil || !alg.Available() || len(r.Digest.Encoded()) != 2*alg.Size() {
				t.Fatalf("digest %q accepted: algorithm %q available %v, %d hex digits", ref, alg, alg.Available(), len(r.Digest.Encoded()))
			}
		}
	})
}

var (
	intRange    = regexp.MustCompile(`^([0-9]+)-([0-9]*)$`)
	suffixRange = regexp.MustCompile(`^-([0-9]+)$`)
)

// FuzzByteRange checks ByteRange against RFC 9110 §14, read with regular
// expressions and arbitrary-precision numbers: a partial answer lies
// within the body and is the one range asked for; a header that is no
// valid bytes range-set, or asks several ranges, is ignored; a valid
// range-set none of whose ranges overlaps the body is unsatisfiable.
// Seeds: testdata/fuzz/FuzzByteRange.
func FuzzByteRange(f *testing.F) {
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			size = -(size + 1)
		}
		start, end, answer := ByteRange(h, size)
		if answer == RangePartial && (start < 0 || start > end || end >= size) {
			t.Fatalf("Range %q of %d bytes: %d-%d", h, size, start, end)
		}
		want, wantStart, wantEnd := RangeWhole, int64(0), int64(0)
		unit, set, ok := strings.Cut(h, "=")
		valid := ok && strings.EqualFold(strings.TrimSpace(unit), "bytes") && size > 0
		n, satisfiable := 0, 0
		bigSize := big.NewInt(size)
		for _, spec := range strings.Split(set, ",") {
			if spec = strings.Trim(spec, " \t"); spec == "" || !valid {
				continue
			}
			n++
			if m := suffixRange.FindStringSubmatch(spec); m != nil {
				if l, _ := new(big.Int).SetString(m[1], 10); l.Sign() > 0 {
					satisfiable++
					wantStart, wantEnd = max(0, size-clamp(l)), size-1
				}
				continue
			}
			m := intRange.FindStringSubmatch(spec)
			if m == nil {
				valid = false
				continue
			}
			first, _ := new(big.Int).SetString(m[1], 10)
			last := new(big.Int).SetInt64(math.MaxInt64)
			if m[2] != "" {
				last.SetString(m[2], 10)
				if last.Cmp(first) < 0 {
					valid = false
					continue
				}
			}
			if first.Cmp(bigSize) < 0 {
				satisfiable++
				wantStart, wantEnd = first.Int64(), min(clamp(last), size-1)
			}
		}
		switch {
		case !valid || n == 0:
		case satisfiable == 0:
			want = RangeUnsatisfiable
		case n == 1:
			want = RangePartial
		}
		if answer != want || (want == RangePartial && (start != wantStart || end != wantEnd)) {
			t.Fatalf("Range %q of %d bytes: answer %d %d-%d, want %d %d-%d", h, size, answer, start, end, want, wantStart, wantEnd)
		}
	})
}

func clamp(n *big.Int) int64 {
	if n.IsInt64() {
		return n.Int64()
	}
	return math.MaxInt64
}

var contentRange = regexp.MustCompile(`^(?:bytes )?([0-9]+)-([0-9]+)$`)

// FuzzContentRange: a chunk's Content-Range is accepted exactly when it
// is start-end in decimal digits, both in int64, start <= end, and its
// length matches the body's; a refusal is RANGE_INVALID. (Signs such as
// "+0-+9" once passed: strconv.ParseInt takes them.) Seeds:
// testdata/fuzz/FuzzContentRange.
func FuzzContentRange(f *testing.F) {
	f.Fuzz(func(t *testing.T, cr string, length int64) {
		start, end, err := ContentRange(cr, length)
		ok := false
		var first, last *big.Int
		if m := contentRange.FindStringSubmatch(cr); m != nil {
			first, _ = new(big.Int).SetString(m[1], 10)
			last, _ = new(big.Int).SetString(m[2], 10)
			n := new(big.Int).Sub(last, first)
			ok = first.IsInt64() && last.IsInt64() && n.Sign() >= 0 &&
				(length < 0 || n.Add(n, big.NewInt(1)).Cmp(big.NewInt(length)) == 0)
		}
		if err != nil {
			var ge *Error
			if !errors.As(err, &ge) || ge.Kind != ErrRangeInvalid || ge.Detail == "" {
				t.Fatalf("Content-Range %q refused with %#v, want a RANGE_INVALID *Error", cr, err)
			}
			if ok {
				t.Fatalf("Content-Range %q (length %d) refused: %v", cr, length, err)
			}
			return
		}
		if !ok || start != first.Int64() || end != last.Int64() {
			t.Fatalf("Content-Range %q (length %d) accepted as %d-%d", cr, length, start, end)
		}
	})
}
