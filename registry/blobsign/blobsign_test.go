package blobsign

import (
	"errors"
	"testing"
	"time"
)

func TestSignVerify(t *testing.T) {
	keys := Keys{"0123456789abcdef-new"}
	now := time.Unix(1_800_000_000, 0)
	q := Sign(keys, "GET", "lib/app", "sha256:aa", now.Add(time.Minute), "alice")
	if id, err := Verify(keys, q, "GET", "lib/app", "sha256:aa", now); err != nil || id != "alice" {
		t.Fatalf("valid signature: %q %v", id, err)
	}
	// Rotation: signed with the old key, verified by servers holding both.
	if _, err := Verify(Keys{"0123456789abcdef-nxt", "0123456789abcdef-new"}, q, "GET", "lib/app", "sha256:aa", now); err != nil {
		t.Fatalf("second key: %v", err)
	}
	for name, c := range map[string]struct {
		keys                   Keys
		method, repo, dgst, id string
		exp                    string
		sig                    string
		at                     time.Time
		want                   error
	}{
		"expired":      {at: now.Add(time.Minute), want: ErrExpired},
		"other key":    {keys: Keys{"fedcba9876543210-xx"}, want: ErrInvalid},
		"other method": {method: "HEAD", want: ErrInvalid},
		"other repo":   {repo: "lib/other", want: ErrInvalid},
		"other digest": {dgst: "sha256:bb", want: ErrInvalid},
		"other id":     {id: "bob", want: ErrInvalid},
		"later exp":    {exp: "1800000600", want: ErrInvalid},
		"bad sig":      {sig: "zz", want: ErrMalformed},
		"flipped sig":  {sig: flip(q.Get(ParamSig)), want: ErrInvalid},
		"signed exp":   {exp: "+1800000060", want: ErrMalformed},
	} {
		t.Run(name, func(t *testing.T) {
			k, m, r, d, at := keys, "GET", "lib/app", "sha256:aa", now
			if c.keys != nil {
				k = c.keys
			}
			if c.method != "" {
				m = c.method
			}
			if c.repo != "" {
				r = c.repo
			}
			if c.dgst != "" {
				d = c.dgst
			}
			if !c.at.IsZero() {
				at = c.at
			}
			q2 := Sign(keys, "GET", "lib/app", "sha256:aa", now.Add(time.Minute), "alice")
			if c.id != "" {
				q2.Set(ParamID, c.id)
			}
			if c.exp != "" {
				q2.Set(ParamExp, c.exp)
			}
			if c.sig != "" {
				q2.Set(ParamSig, c.sig)
			}
			if _, err := Verify(k, q2, m, r, d, at); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	if _, err := Verify(nil, q, "GET", "lib/app", "sha256:aa", now); !errors.Is(err, ErrNoKeys) {
		t.Fatalf("no keys: %v", err)
	}
	if err := Check(Keys{"short"}, "k"); err == nil {
		t.Fatal("a 5-byte key was accepted")
	}
}

func flip(s string) string {
	b := []byte(s)
	if b[0] == '0' {
		b[0] = '1'
	} else {
		b[0] = '0'
	}
	return string(b)
}
