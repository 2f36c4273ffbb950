// Package blobsign makes and checks the signed blob URLs a gateway
// redirects clients to, so blob bytes go from a registry server straight
// to the client instead of through the gateway.
//
// A signature is an HMAC-SHA256, with a key the gateways and servers
// share, over the method, the repository, the blob's digest, the expiry
// (Unix seconds) and the identity of the caller the gateway authorized.
// It travels in the URL's query (Sig, Exp, ID parameters): a server that
// finds it checks it instead of credentials. It is good for that method,
// repository and digest only, until it expires. Two keys can be valid at
// once while rotating: the first signs, each verifies.
package blobsign

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gaia-registry/gaia/registry/internaltoken"
)

// Query parameters of a signed URL.
const (
	ParamSig = "gaia-sig" // hex HMAC-SHA256
	ParamExp = "gaia-exp" // Unix seconds
	ParamID  = "gaia-id"  // the authorized caller ("" anonymous)
)

// Keys is `signing.keys` / `cluster.signingkeys`: one key, or two while
// rotating (the first signs, both verify). Same YAML shapes as
// internaltoken.Tokens.
type Keys = internaltoken.Tokens

// MinKeyLen: shorter keys are refused, an HMAC key is only as strong as it
// is long.
const MinKeyLen = 16

// Check validates keys; key is their name in the config file.
func Check(keys Keys, key string) error {
	if err := keys.Check(key); err != nil {
		return err
	}
	for i, k := range keys {
		if len(k) < MinKeyLen {
			return fmt.Errorf("%s: key %d is %d bytes, at least %d are needed", key, i+1, len(k), MinKeyLen)
		}
	}
	return nil
}

func mac(key, method, repo, digest string, exp int64, id string) []byte {
	h := hmac.New(sha256.New, []byte(key))
	// Length-prefixed fields: no two different field lists give one input.
	for _, f := range []string{"gaia-blob-v1", method, repo, digest, strconv.FormatInt(exp, 10), id} {
		fmt.Fprintf(h, "%d:%s\n", len(f), f)
	}
	return h.Sum(nil)
}

// Sign returns the query parameters of a URL valid for method on repo's
// blob digest until exp, for caller id.
func Sign(keys Keys, method, repo, digest string, exp time.Time, id string) url.Values {
	e := exp.Unix()
	q := url.Values{}
	q.Set(ParamSig, hex.EncodeToString(mac(keys.Current(), method, repo, digest, e, id)))
	q.Set(ParamExp, strconv.FormatInt(e, 10))
	if id != "" {
		q.Set(ParamID, id)
	}
	return q
}

// MethodUpload is the method an upload session's signature is made for:
// it covers every request of the session (PATCH, PUT, GET and DELETE of
// /v2/<repo>/blobs/uploads/<id>), with the session's id as the digest.
const MethodUpload = "UPLOAD"

// Add sets the signature parameters of s in q, keeping q's others.
func Add(q, s url.Values) {
	for _, k := range []string{ParamSig, ParamExp, ParamID} {
		q.Del(k)
		if v := s.Get(k); v != "" {
			q.Set(k, v)
		}
	}
}

// Signed reports whether a query carries a signature (valid or not).
func Signed(q url.Values) bool { return q.Has(ParamSig) || q.Has(ParamExp) }

// Errors of Verify.
var (
	ErrExpired   = errors.New("the signed URL has expired")
	ErrInvalid   = errors.New("the URL's signature does not match this request")
	ErrMalformed = errors.New("the signed URL's parameters are malformed")
	ErrNoKeys    = errors.New("this server has no signing keys (cluster.signingkeys)")
)

// Verify checks a request's signature for method, repo and digest at time
// now, returning the identity it was made for.
func Verify(keys Keys, q url.Values, method, repo, digest string, now time.Time) (string, error) {
	if len(keys) == 0 {
		return "", ErrNoKeys
	}
	if len(q[ParamSig]) != 1 || len(q[ParamExp]) != 1 || len(q[ParamID]) > 1 {
		return "", ErrMalformed
	}
	sig, err := hex.DecodeString(q.Get(ParamSig))
	if err != nil || len(sig) != sha256.Size {
		return "", ErrMalformed
	}
	exps := q.Get(ParamExp)
	exp, err := strconv.ParseInt(exps, 10, 64)
	if err != nil || strings.TrimLeft(exps, "0123456789") != "" {
		return "", ErrMalformed
	}
	id := q.Get(ParamID)
	ok := 0
	for _, k := range keys {
		if hmac.Equal(sig, mac(k, method, repo, digest, exp, id)) {
			ok = 1
		}
	}
	if ok == 0 {
		return "", ErrInvalid
	}
	if now.Unix() >= exp {
		return "", ErrExpired
	}
	return id, nil
}
