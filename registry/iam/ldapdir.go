package iam

import (
	"context"
	"errors"

	"github.com/gaia-registry/gaia/registry/iam/ldap"
)

// LDAP is an LDAP directory (registry/iam/ldap) as a Store's Directory.
func LDAP(d *ldap.Directory) Directory { return ldapDirectory{d} }

type ldapDirectory struct{ d *ldap.Directory }

func (l ldapDirectory) Authenticate(ctx context.Context, user, password string) ([]string, error) {
	e, err := l.d.Authenticate(ctx, user, password)
	if errors.Is(err, ldap.ErrBadCredentials) {
		return nil, ErrBadCredentials
	}
	return e.Groups, err
}

func (l ldapDirectory) Groups(ctx context.Context, user string) ([]string, bool, error) {
	groups, err := l.d.Groups(ctx, user)
	if errors.Is(err, ldap.ErrNoSuchUser) {
		return nil, false, nil
	}
	return groups, err == nil, err
}
