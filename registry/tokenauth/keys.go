package tokenauth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/go-jose/go-jose/v4"
)

// Keys are the token service's signing keys: the first signs, every one
// verifies, so a rollover lists the new key first and the old one second
// until tokens signed by the old one have expired.
type Keys struct {
	signer  jose.Signer // the first key's, with its kid: access tokens
	refresh jose.Signer // the same key, typ refresh
	keys    []key       // in configuration order
	byKID   map[string]*key
}

type key struct {
	kid string
	alg jose.SignatureAlgorithm
	pub crypto.PublicKey
}

// LoadKeys reads PEM private keys (EC P-256/P-384/P-521 or RSA >= 2048
// bits; PKCS#8, SEC1 "EC PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY").
// Errors name the file.
func LoadKeys(paths []string) (*Keys, error) {
	if len(paths) == 0 {
		return nil, errors.New("no signing keys")
	}
	var signers []crypto.Signer
	seen := map[string]string{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		s, err := parsePrivateKey(b)
		if err == nil {
			_, err = algorithm(s.Public())
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		kid := thumbprint(s.Public())
		if q, dup := seen[kid]; dup {
			return nil, fmt.Errorf("%s: the same key as %s", p, q)
		}
		seen[kid] = p
		signers = append(signers, s)
	}
	return NewKeys(signers...)
}

func parsePrivateKey(b []byte) (crypto.Signer, error) {
	for rest := b; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			return nil, errors.New("no PEM private key (want PKCS#8 \"PRIVATE KEY\", \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\")")
		}
		var k any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue // "EC PARAMETERS" before a SEC1 key, certificates
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", block.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported key type %T", k)
		}
		return s, nil
	}
}

// algorithm is the JWS algorithm a key signs with.
func algorithm(pub crypto.PublicKey) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		case elliptic.P521():
			return jose.ES512, nil
		}
		return "", fmt.Errorf("unsupported EC curve %s", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return "", fmt.Errorf("RSA key of %d bits: want at least 2048", k.N.BitLen())
		}
		return jose.RS256, nil
	}
	return "", fmt.Errorf("unsupported key type %T (want EC or RSA)", pub)
}

// NewKeys makes Keys of private keys, the first signing.
func NewKeys(signers ...crypto.Signer) (*Keys, error) {
	if len(signers) == 0 {
		return nil, errors.New("no signing keys")
	}
	ks := &Keys{byKID: map[string]*key{}}
	for i, s := range signers {
		pub := s.Public()
		alg, err := algorithm(pub)
		if err != nil {
			return nil, err
		}
		k := key{kid: thumbprint(pub), alg: alg, pub: pub}
		if _, dup := ks.byKID[k.kid]; dup {
			return nil, fmt.Errorf("key %d is listed twice", i+1)
		}
		ks.keys = append(ks.keys, k)
		ks.byKID[k.kid] = &ks.keys[len(ks.keys)-1]
		if i == 0 {
			if ks.signer, err = newSigner(s, alg, k.kid, typeAccess); err != nil {
				return nil, err
			}
			if ks.refresh, err = newSigner(s, alg, k.kid, typeRefresh); err != nil {
				return nil, err
			}
		}
	}
	// byKID points into keys: rebuild now that keys no longer grows.
	for i := range ks.keys {
		ks.byKID[ks.keys[i].kid] = &ks.keys[i]
	}
	return ks, nil
}

// thumbprint is a key's kid: its RFC 7638 JWK thumbprint (SHA-256,
// base64url). A registry with distribution's token auth finds the key by
// it in our JWKS (it takes kids from the set as they are).
func thumbprint(pub crypto.PublicKey) string {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil { // only for key types algorithm refused
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(tp)
}

func newSigner(s crypto.Signer, alg jose.SignatureAlgorithm, kid, typ string) (jose.Signer, error) {
	opts := (&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader(jose.HeaderKey("kid"), kid)
	return jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: s}, opts)
}

// KeyID is the kid of the signing key.
func (ks *Keys) KeyID() string { return ks.keys[0].kid }

// JWKS is the public keys as a JSON Web Key Set (served at /auth/jwks),
// which a registry with distribution's token auth takes as its `jwks`
// file to accept our tokens.
func (ks *Keys) JWKS() []byte {
	set := jose.JSONWebKeySet{}
	for _, k := range ks.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.pub, KeyID: k.kid, Algorithm: string(k.alg), Use: "sig"})
	}
	b, err := json.Marshal(set)
	if err != nil { // only for key types algorithm refused
		panic(err)
	}
	return b
}

// GenerateKeyPEM makes a new EC P-256 key as PKCS#8 PEM (gaia-registry keygen).
func GenerateKeyPEM() ([]byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
