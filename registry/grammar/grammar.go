// Package grammar is the OCI Distribution API's request grammar: the route
// a path names, repository names, tags, manifest references and the byte
// ranges of Range and Content-Range. Pure functions over strings, with no
// dependency beyond go-digest, so that the API handler, auth and metrics
// share one reading of a request and the fuzz targets beside them
// (testdata/fuzz) build in seconds.
package grammar

import (
	_ "crypto/sha512" // sha384 and sha512 digests parse wherever this grammar is used
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Kinds of refusal, each answered with the spec's error of the same name.
var (
	ErrDigestInvalid = errors.New("DIGEST_INVALID")
	ErrTagInvalid    = errors.New("TAG_INVALID")
	ErrRangeInvalid  = errors.New("RANGE_INVALID")
)

// Error is a refusal: errors.Is matches its Kind (one of the Err values).
type Error struct {
	Kind   error
	Detail string // why, for the error body's detail
}

func (e *Error) Error() string { return e.Kind.Error() + ": " + e.Detail }
func (e *Error) Unwrap() error { return e.Kind }

func refuse(kind error, format string, a ...any) error {
	return &Error{Kind: kind, Detail: fmt.Sprintf(format, a...)}
}

// Route is what a request path names.
type Route struct {
	Kind string // "base", "catalog", "manifest", "blob", "upload", "tags", "referrer" or "" (unknown)
	Name string // repository
	Ref  string // tag or digest, blob digest, upload id ("" for a new upload)
}

// Parse splits an API path (the request's path as it arrived: no cleaning,
// no "." or ".." resolved) into its route.
func Parse(path string) Route {
	if path == "/v2/" || path == "/v2" {
		return Route{Kind: "base"}
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return Route{}
	}
	if rest == "_catalog" {
		return Route{Kind: "catalog"}
	}
	// name/<kind>/<ref>: ref never holds a slash, names may hold "blobs".
	i := strings.LastIndex(rest, "/")
	if i < 0 {
		return Route{}
	}
	prefix, ref := rest[:i], rest[i+1:]
	if name, ok := strings.CutSuffix(prefix, "/blobs/uploads"); ok {
		return Route{Kind: "upload", Name: name, Ref: ref}
	}
	if name, ok := strings.CutSuffix(prefix, "/blobs"); ok && ref == "uploads" {
		return Route{Kind: "upload", Name: name}
	}
	if name, ok := strings.CutSuffix(prefix, "/tags"); ok && ref == "list" {
		return Route{Kind: "tags", Name: name}
	}
	for _, kind := range []string{"blobs", "manifests", "referrers"} {
		if name, ok := strings.CutSuffix(prefix, "/"+kind); ok {
			return Route{Kind: strings.TrimSuffix(kind, "s"), Name: name, Ref: ref}
		}
	}
	return Route{}
}

// nameRegexp is the spec's repository name: lower-case path components.
// (reference.NameRegexp would accept a host name with capitals as the
// first component.)
var nameRegexp = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)

// MaxNameLength is the spec's limit on a repository name.
const MaxNameLength = 255

// ValidName reports whether s is a repository name the spec allows.
func ValidName(s string) bool { return len(s) <= MaxNameLength && nameRegexp.MatchString(s) }

// ValidTag is the spec's tag grammar: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}.
func ValidTag(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' ||
			i > 0 && (c == '.' || c == '-')
		if !ok {
			return false
		}
	}
	return true
}

// Reference is a manifest reference from a path: a tag or a digest.
type Reference struct {
	Tag    string
	Digest digest.Digest
}

func (r Reference) String() string {
	if r.Tag != "" {
		return r.Tag
	}
	return r.Digest.String()
}

// ParseReference reads a manifest reference: a digest when it holds a
// colon (no tag can), otherwise a tag. Refusals are *Error of kind
// ErrDigestInvalid or ErrTagInvalid.
func ParseReference(ref string) (Reference, error) {
	if strings.Contains(ref, ":") {
		d, err := digest.Parse(ref)
		if err != nil {
			return Reference{}, refuse(ErrDigestInvalid, "%v", err)
		}
		return Reference{Digest: d}, nil
	}
	if !ValidTag(ref) {
		return Reference{}, refuse(ErrTagInvalid, "%q is not a tag", ref)
	}
	return Reference{Tag: ref}, nil
}

// RangeAnswer is how a GET answers its Range header (RFC 9110 §14).
type RangeAnswer int

const (
	// RangeWhole: 200 and the whole body. No Range; or one the server
	// ignores, as RFC 9110 lets it: a unit other than bytes (which it
	// must ignore), an invalid range-spec (bytes=5-3), several ranges
	// (Gaia answers no multipart/byteranges), any range of an empty body.
	RangeWhole         RangeAnswer = iota
	RangePartial                   // 206 with start-end
	RangeUnsatisfiable             // 416: a valid bytes range none of whose specs overlaps the body
)

// ByteRange reads a Range header against a body of size bytes. With
// RangePartial, 0 <= start <= end < size.
func ByteRange(h string, size int64) (start, end int64, answer RangeAnswer) {
	unit, set, found := strings.Cut(h, "=")
	if !found || !strings.EqualFold(strings.TrimSpace(unit), "bytes") || size <= 0 {
		return 0, 0, RangeWhole
	}
	specs, satisfiable := 0, 0
	for _, spec := range strings.Split(set, ",") {
		spec = strings.Trim(spec, " \t")
		if spec == "" { // an empty list element (RFC 9110 §5.6.1)
			continue
		}
		specs++
		a, b, found := strings.Cut(spec, "-")
		first, okA := rangePos(a)
		last, okB := rangePos(b)
		switch {
		case !found || (a == "" && b == "") || (a != "" && !okA) || (b != "" && !okB):
			return 0, 0, RangeWhole // not a range-spec
		case a == "": // suffix-range: the last n bytes
			if last > 0 {
				satisfiable++
				start, end = max(size-last, 0), size-1
			}
		case b != "" && decimalLess(b, a): // not last < first: both may be clamped to MaxInt64
			return 0, 0, RangeWhole // invalid: last-pos before first-pos
		case first < size:
			satisfiable++
			start, end = first, size-1
			if b != "" {
				end = min(last, size-1)
			}
		}
	}
	switch {
	case specs == 0:
		return 0, 0, RangeWhole
	case satisfiable == 0:
		return 0, 0, RangeUnsatisfiable
	case specs > 1:
		return 0, 0, RangeWhole
	}
	return start, end, RangePartial
}

// rangePos reads a Range position (1*DIGIT); one beyond int64 is as good
// as the end of any body.
func rangePos(s string) (int64, bool) {
	n, err := decimal(s)
	if errors.Is(err, strconv.ErrRange) {
		return math.MaxInt64, true
	}
	return n, err == nil
}

// decimalLess compares two strings of digits as numbers, however long.
func decimalLess(a, b string) bool {
	a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

// ContentRange reads an upload chunk's Content-Range: "start-end" as the
// spec writes it (or "bytes start-end"), decimal digits only, against
// the body's length (-1: not known before it is read). Refusals are
// *Error of kind ErrRangeInvalid. With no error, 0 <= start <= end.
func ContentRange(cr string, length int64) (start, end int64, err error) {
	a, b, found := strings.Cut(strings.TrimPrefix(cr, "bytes "), "-")
	start, errA := decimal(a)
	end, errB := decimal(b)
	if !found || errA != nil || errB != nil || end < start {
		return 0, 0, refuse(ErrRangeInvalid, "Content-Range must be start-end")
	}
	if length >= 0 && end-start != length-1 { // not end-start+1: that overflows at MaxInt64
		return 0, 0, refuse(ErrRangeInvalid, "Content-Range does not match Content-Length")
	}
	return start, end, nil
}

// decimal reads 1*DIGIT into an int64: no sign, no space, unlike
// strconv.ParseInt alone.
func decimal(s string) (int64, error) {
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	return strconv.ParseInt(s, 10, 64)
}
