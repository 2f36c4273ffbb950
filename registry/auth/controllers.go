package auth

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	dauth "github.com/distribution/distribution/v3/registry/auth"
)

func newHtpasswd(c HtpasswdConfig) (dauth.AccessController, error) {
	if c.Realm == "" {
		return nil, errors.New("auth.htpasswd.realm: required")
	}
	if c.Path == "" {
		return nil, errors.New("auth.htpasswd.path: required")
	}
	// Checked here too because distribution's controller, given a missing
	// file, creates one with a random password for a user "docker".
	if err := checkHtpasswd(c.Path); err != nil {
		return nil, fmt.Errorf("auth.htpasswd.path: %w", err)
	}
	ac, err := dauth.GetAccessController("htpasswd", map[string]any{"realm": c.Realm, "path": c.Path})
	if err != nil {
		return nil, fmt.Errorf("auth.htpasswd: %w", err)
	}
	return ac, nil
}

// checkHtpasswd checks that every entry is user:bcrypt-hash, the only kind
// distribution's controller accepts (it would otherwise refuse the user at
// each request).
func checkHtpasswd(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		if _, hash, _ := strings.Cut(line, ":"); !strings.HasPrefix(hash, "$2") {
			return fmt.Errorf("%s line %d: want user:bcrypt-hash (htpasswd -nbB user pass)", path, i+1)
		}
	}
	return nil
}

func newToken(c TokenConfig) (dauth.AccessController, error) {
	opts := map[string]any{}
	for _, kv := range [][2]string{{"realm", c.Realm}, {"service", c.Service}, {"issuer", c.Issuer}} {
		if kv[1] == "" {
			return nil, fmt.Errorf("auth.token.%s: required", kv[0])
		}
		opts[kv[0]] = kv[1]
	}
	if c.RootCertBundle == "" && c.JWKS == "" {
		return nil, errors.New("auth.token.rootcertbundle: required (or auth.token.jwks)")
	}
	if c.RootCertBundle != "" {
		if err := checkCertBundle(c.RootCertBundle); err != nil {
			return nil, fmt.Errorf("auth.token.rootcertbundle: %w", err)
		}
		opts["rootcertbundle"] = c.RootCertBundle
	}
	if c.JWKS != "" {
		if _, err := os.ReadFile(c.JWKS); err != nil {
			return nil, fmt.Errorf("auth.token.jwks: %w", err)
		}
		opts["jwks"] = c.JWKS
	}
	ac, err := dauth.GetAccessController("token", opts)
	if err != nil {
		return nil, fmt.Errorf("auth.token: %w", err)
	}
	return ac, nil
}

// checkCertBundle checks that path holds at least one PEM certificate and
// that all of them parse.
func checkCertBundle(path string) error {
	rest, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	n := 0
	for {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("%s: no PEM certificates", path)
	}
	return nil
}
