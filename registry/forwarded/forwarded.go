// Package forwarded finds a request's client behind proxies (the IDC's
// gateways, a load balancer in front of them): X-Forwarded-For is
// believed only as far as it was written by configured trusted proxies,
// so a client cannot choose the address it is logged under.
package forwarded

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Header is the list of addresses a request passed through, the client
// first, each proxy appending the address it got the request from.
const Header = "X-Forwarded-For"

// Trusted is a set of proxies (`http.trustedproxies`).
type Trusted []netip.Prefix

// Parse reads addresses and CIDR ranges ("10.1.0.0/16", "127.0.0.1");
// errors name key.
func Parse(list []string, key string) (Trusted, error) {
	var t Trusted
	for i, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%s[%d]: %q is not an IP address or CIDR range", key, i, s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		t = append(t, p.Masked())
	}
	return t, nil
}

func (t Trusted) contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// addr reads an address as X-Forwarded-For or RemoteAddr spell it (an
// IP, maybe with a port).
func addr(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// entries are the request's X-Forwarded-For addresses, in order.
func entries(r *http.Request) []string {
	var out []string
	for _, v := range r.Header.Values(Header) {
		for _, e := range strings.Split(v, ",") {
			if e = strings.TrimSpace(e); e != "" {
				out = append(out, e)
			}
		}
	}
	return out
}

func peer(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return r.RemoteAddr
}

// Client is the address of r's client: the peer's, or when the peer is a
// trusted proxy, the last X-Forwarded-For entry that is not one (the
// first entry when all are). proxied says X-Forwarded-For was used.
func (t Trusted) Client(r *http.Request) (client string, proxied bool) {
	p := peer(r)
	pa, ok := addr(p)
	if !ok || !t.contains(pa) {
		return p, false
	}
	list := entries(r)
	if len(list) == 0 {
		return p, false
	}
	client = p
	for i := len(list) - 1; i >= 0; i-- {
		a, ok := addr(list[i])
		if !ok {
			break // garbage from the client's side: the hop that passed it on is all we know
		}
		client = a.String()
		if !t.contains(a) {
			break
		}
	}
	return client, true
}

// Chain is the X-Forwarded-For a proxy sends on: what came in, kept only
// from a trusted proxy, and the peer's address after it.
func (t Trusted) Chain(r *http.Request) string {
	p := peer(r)
	if pa, ok := addr(p); ok && t.contains(pa) {
		if in := entries(r); len(in) > 0 {
			return strings.Join(in, ", ") + ", " + p
		}
	}
	return p
}
