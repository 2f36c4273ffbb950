// Package internaltoken is the cluster's internal credential: a secret
// shared by the servers of every IDC, sent with the blob reads of
// cross-IDC fills and replication (and good for nothing else), so a peer
// IDC can copy blobs whatever the auth configuration.
package internaltoken

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Header carries the token.
const Header = "X-Gaia-Internal-Token"

// NoFillHeader marks a peer IDC's copy (sent with the token or a robot's
// credential): the server answers from its own storage only, so two IDCs
// lacking a blob never ask each other in a loop, and a gateway proxies
// the request to a server instead of answering it itself (a redirect
// would point another IDC at a server inside this one).
const NoFillHeader = "X-Gaia-No-Fill"

// Tokens is `cluster.internaltoken`: one token, or a list of two while
// rotating. The first is the one sent; each is accepted.
type Tokens []string

// UnmarshalYAML takes a single token (what older configs have) or a list.
func (t *Tokens) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		var s string
		if err := n.Decode(&s); err != nil {
			return err
		}
		*t = nil
		if s != "" {
			*t = Tokens{s}
		}
		return nil
	case yaml.SequenceNode:
		var l []string
		if err := n.Decode(&l); err != nil {
			return err
		}
		*t = l
		return nil
	}
	return fmt.Errorf("line %d: internaltoken: a token, or a list of two tokens while rotating", n.Line)
}

// Check validates the tokens; key is their name in the file.
func (t Tokens) Check(key string) error {
	if len(t) > 2 {
		return fmt.Errorf("%s: %d tokens: at most two (the one sent first, and the other accepted while rotating)", key, len(t))
	}
	for i, s := range t {
		if s == "" || strings.TrimSpace(s) != s {
			return fmt.Errorf("%s: token %d is empty or has surrounding spaces", key, i+1)
		}
	}
	if len(t) == 2 && t[0] == t[1] {
		return fmt.Errorf("%s: the two tokens are the same", key)
	}
	return nil
}

// Current is the token to send ("" without one).
func (t Tokens) Current() string {
	if len(t) == 0 {
		return ""
	}
	return t[0]
}

// Match reports whether got is one of the tokens, in time that does not
// depend on where got and a token differ (every token is compared).
func (t Tokens) Match(got string) bool {
	if got == "" {
		return false
	}
	ok := 0
	for _, s := range t {
		ok |= subtle.ConstantTimeCompare([]byte(got), []byte(s))
	}
	return ok == 1
}

// ErrPlainHTTP: the token would cross a network in clear text.
var ErrPlainHTTP = errors.New("the internal token is sent over https only (or plain http to a loopback address)")

// Safe reports whether the token may be sent to a server reached with
// scheme at hostport (host[:port]): over https, or over plain http to a
// loopback address only.
func Safe(scheme, hostport string) bool {
	if scheme == "https" {
		return true
	}
	if scheme != "http" {
		return false
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}
