package tokenauth

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/gaia-registry/gaia/registry/grammar"
)

// The token spec's scope grammar:
//
//	scope         := resourcescope [ ' ' resourcescope ]*
//	resourcescope := resourcetype ":" resourcename ":" action [ ',' action ]*
//	resourcetype  := resourcetypevalue [ '(' resourcetypevalue ')' ]
//	resourcename  := [ hostname '/' ] component [ '/' component ]*   (a hostname may have ":port")
//	action        := /[a-z]*/   (and "*", as in registry:catalog:*)
//
// The type ends at the first ':', the actions start after the last one.
var (
	typeRegexp   = regexp.MustCompile(`^([a-z0-9]+)(\([a-z0-9]+\))?$`)
	actionRegexp = regexp.MustCompile(`^([a-z]+|\*)$`)
)

// ParseScope reads one resource scope ("repository:team/app:pull,push",
// "repository(plugin):x:pull", "registry:catalog:*"). Repository names
// must be this registry's (grammar.ValidName): a name with a host part is
// another registry's, which we cannot grant. Duplicate actions collapse.
func ParseScope(s string) (Access, error) {
	typ, rest, ok := strings.Cut(s, ":")
	i := strings.LastIndexByte(rest, ':')
	if !ok || i < 0 {
		return Access{}, fmt.Errorf("scope %q: want type:name:actions", s)
	}
	name, actions := rest[:i], rest[i+1:]
	m := typeRegexp.FindStringSubmatch(typ)
	if m == nil {
		return Access{}, fmt.Errorf("scope %q: bad resource type %q", s, typ)
	}
	a := Access{Type: m[1], Name: name}
	switch {
	case name == "":
		return Access{}, fmt.Errorf("scope %q: empty resource name", s)
	case a.Type == "repository" && !grammar.ValidName(name):
		return Access{}, fmt.Errorf("scope %q: invalid repository name %q", s, name)
	case strings.ContainsAny(name, " \t\r\n"):
		return Access{}, fmt.Errorf("scope %q: resource name with white space", s)
	}
	for _, act := range strings.Split(actions, ",") {
		if !actionRegexp.MatchString(act) {
			return Access{}, fmt.Errorf("scope %q: bad action %q", s, act)
		}
		a.addAction(act)
	}
	return a, nil
}

func (a *Access) addAction(act string) {
	for _, x := range a.Actions {
		if x == act {
			return
		}
	}
	a.Actions = append(a.Actions, act)
}

// String is the scope form: type:name:action,action.
func (a Access) String() string {
	return a.Type + ":" + a.Name + ":" + strings.Join(a.Actions, ",")
}

// ParseScopes reads scope parameters: each may hold several resource
// scopes separated by spaces (the OAuth2 form, and what some clients put
// in one GET parameter). Scopes on the same resource merge. Empty
// parameters are ignored (containerd sends scope= when it has none).
func ParseScopes(params []string) ([]Access, error) {
	var out []Access
	idx := map[[2]string]int{}
	for _, p := range params {
		for _, s := range strings.Fields(p) {
			a, err := ParseScope(s)
			if err != nil {
				return nil, err
			}
			k := [2]string{a.Type, a.Name}
			if i, ok := idx[k]; ok {
				for _, act := range a.Actions {
					out[i].addAction(act)
				}
				continue
			}
			idx[k] = len(out)
			out = append(out, a)
		}
	}
	return out, nil
}
