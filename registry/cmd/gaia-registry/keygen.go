package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/gaia-registry/gaia/registry/tokenauth"
)

// keygenCmd writes a new token signing key (auth.builtin.signingkeys):
// EC P-256, PKCS#8 PEM, mode 0600. It never overwrites a file.
func keygenCmd(args []string) error {
	fs := flag.NewFlagSet("keygen", flag.ExitOnError)
	out := fs.String("out", "", "file to write the PEM private key to (must not exist)")
	fs.Parse(args)
	if *out == "" {
		return errors.New("keygen: --out FILE is required")
	}
	pem, err := tokenauth.GenerateKeyPEM()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if _, err := f.Write(pem); err != nil {
		f.Close()
		os.Remove(*out)
		return fmt.Errorf("keygen: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	keys, err := tokenauth.LoadKeys([]string{*out})
	if err != nil {
		return err
	}
	fmt.Printf("%s: kid %s\n", *out, keys.KeyID())
	return nil
}
