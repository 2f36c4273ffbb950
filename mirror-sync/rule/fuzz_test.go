package rule

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// FuzzRule: a rule body (what the admin API reads) is refused with a
// *FieldError naming a field, or accepted as one JSON document whose rule
// is valid, reads back identically after the store's round trip through
// JSON, runs at a future time, and answers the worker's questions.
// Seeds: testdata/fuzz/FuzzRule.
func FuzzRule(f *testing.F) {
	now := time.Date(2025, 6, 15, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, data []byte) {
		refused := func(err error) bool {
			if err == nil {
				return false
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field == "" || fe.Reason == "" {
				t.Fatalf("refused with %#v, not a *FieldError naming a field", err)
			}
			return true
		}
		r, err := Decode(data)
		if refused(err) {
			return
		}
		if refused(r.Validate()) {
			return
		}
		if !json.Valid(data) {
			t.Fatalf("accepted a body that is not one JSON document: %q", data)
		}
		stored, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Decode(stored)
		if err != nil {
			t.Fatalf("stored rule %s does not decode: %v", stored, err)
		}
		if err := again.Validate(); err != nil {
			t.Fatalf("stored rule %s does not validate: %v", stored, err)
		}
		if b, _ := json.Marshal(again); !bytes.Equal(b, stored) {
			t.Fatalf("rule changed through JSON:\n%s\n%s", stored, b)
		}
		s, err := ParseSchedule(r.Schedule)
		if err != nil {
			t.Fatalf("schedule %q validated, then: %v", r.Schedule, err)
		}
		next := s.Next(now)
		if !next.After(now) {
			t.Fatalf("schedule %q: next run %v is not after %v", r.Schedule, next, now)
		}
		if after := s.Next(next); after.Sub(next) < 10*time.Second {
			t.Fatalf("schedule %q runs at %v then %v: more often than every ten seconds", r.Schedule, next, after)
		}
		for _, name := range append([]string{"library/nginx", ""}, r.Repositories...) {
			r.MatchRepository(name)
			r.DestinationOf(name)
		}
		r.Exact()
		r.SelectTags([]string{"latest", "1.25.3", "v2", "1.25.3-alpine", ""})
		r.WantPlatform("linux", "arm64", "v8")
	})
}
