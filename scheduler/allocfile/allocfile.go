// Package allocfile loads gaia-scheduler's pools from an allocation file
// in the vocabulary of YARN's fair-scheduler allocation file, and watches
// the file for changes.
//
//	<allocations>
//	  <defaultQueueSchedulingPolicy>drf</defaultQueueSchedulingPolicy>
//	  <queue name="ads" type="parent">
//	    <weight>2</weight>
//	    <minResources>vcores=100, memory-mb=409600</minResources>
//	    <maxResources>cpu=400, memory=2Ti, netout=10Gbit</maxResources>
//	    <queue name="search"> ... </queue>
//	  </queue>
//	</allocations>
//
// Every <queue> (or YARN's older <pool>) becomes a model.Pool whose name
// is its dotted path under root ("root.ads.search"); a top-level queue
// named root is root itself. The pools come back parents first. What YARN
// inherits from the parent queue (the preemption timeouts and threshold,
// allowPreemptionFrom=false) is written into each pool, so a pool means
// the same on its own. The mapping, element by element, is in
// docs/cli.md ("Allocation files"); elements of YARN's vocabulary with no
// meaning in Gaia (maxRunningApps, maxAMShare, user limits, placement
// policy...) are accepted and reported as warnings, anything else is an
// error naming the element and its line.
package allocfile

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// Error is a fault in an allocation file: the line, the element and, when
// inside a queue, the pool it belongs to.
type Error struct {
	File    string // "" when parsed from bytes
	Line    int
	Element string // "minResources", "queue", ...
	Pool    string // "root.ads", or ""
	Message string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteByte(':')
		fmt.Fprintf(&b, "%d: ", e.Line)
	} else {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Element != "" {
		fmt.Fprintf(&b, "<%s>", e.Element)
		if e.Pool != "" {
			fmt.Fprintf(&b, " of %s", e.Pool)
		}
		b.WriteString(": ")
	}
	b.WriteString(e.Message)
	return b.String()
}

// Load reads and parses the allocation file at path.
func Load(path string) ([]model.Pool, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	pools, warnings, err := Parse(data)
	var e *Error
	if errors.As(err, &e) {
		e.File = path
	}
	return pools, warnings, err
}

// elem is one XML element with its line.
type elem struct {
	name  string
	attrs []xml.Attr
	line  int
	text  string // character data directly inside, untrimmed
	kids  []*elem
}

func (e *elem) trimmed() string { return strings.TrimSpace(e.text) }

// parseTree reads the whole document into elements.
func parseTree(data []byte) (*elem, error) {
	var nl []int
	for i, c := range data {
		if c == '\n' {
			nl = append(nl, i)
		}
	}
	lineAt := func(off int64) int { return 1 + sort.SearchInts(nl, int(off)) }
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	var root *elem
	var stack []*elem
	for {
		off := d.InputOffset()
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			var se *xml.SyntaxError
			if errors.As(err, &se) {
				return nil, &Error{Line: se.Line, Message: se.Msg}
			}
			return nil, &Error{Line: lineAt(d.InputOffset()), Message: err.Error()}
		}
		switch t := tok.(type) {
		case xml.StartElement:
			// The element starts at the first '<' after off.
			start := off
			if i := bytes.IndexByte(data[off:], '<'); i >= 0 {
				start += int64(i)
			}
			e := &elem{name: t.Name.Local, attrs: t.Attr, line: lineAt(start)}
			if len(stack) > 0 {
				p := stack[len(stack)-1]
				p.kids = append(p.kids, e)
			} else if root != nil {
				return nil, &Error{Line: e.line, Element: e.name, Message: "a second top-level element"}
			} else {
				root = e
			}
			stack = append(stack, e)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) > 0 {
				stack[len(stack)-1].text += string(t)
			}
		}
	}
	if root == nil {
		return nil, &Error{Line: 1, Message: "no <allocations> element"}
	}
	return root, nil
}

// defaults are the file-wide settings that queues inherit or default to.
type defaults struct {
	policy     model.Policy
	maxDefault *resource.Vector
}

// inherited is what a queue passes down to its children (YARN's rules).
type inherited struct {
	minShareTimeout, fairShareTimeout model.Duration
	threshold                         float64
	noPreemptionFrom                  bool
}

type parser struct {
	warnings []string
	pools    []model.Pool
	seen     map[string]int // pool name → line
	def      defaults
}

func (p *parser) warn(e *elem, pool, format string, args ...any) {
	where := fmt.Sprintf("line %d: <%s>", e.line, e.name)
	if pool != "" {
		where += " of " + pool
	}
	p.warnings = append(p.warnings, where+": "+fmt.Sprintf(format, args...))
}

func errAt(e *elem, pool, format string, args ...any) error {
	return &Error{Line: e.line, Element: e.name, Pool: pool, Message: fmt.Sprintf(format, args...)}
}

// ignoredTop and ignoredQueue are YARN elements with no meaning in Gaia.
var ignoredTop = map[string]string{
	"queueMaxAppsDefault":          "Gaia limits instances, not apps (see maxInstances)",
	"queueMaxAMShareDefault":       "Gaia has no application masters",
	"userMaxAppsDefault":           "Gaia has no per-user app limits",
	"user":                         "Gaia has no per-user limits",
	"queuePlacementPolicy":         "an app names its pool",
	"placementPolicy":              "an app names its pool",
	"reservation-agent":            "Gaia has no reservations",
	"reservation-policy":           "Gaia has no reservations",
	"reservation-planner":          "Gaia has no reservations",
	"defaultQueueReservationAgent": "Gaia has no reservations",
}

var ignoredQueue = map[string]string{
	"maxRunningApps":            "Gaia limits instances, not apps: use <maxInstances>",
	"maxAMShare":                "Gaia has no application masters",
	"maxChildResources":         "Gaia has no dynamically created child pools",
	"aclAdministerApps":         "Gaia's admin token administers every pool",
	"aclAdministerReservations": "Gaia has no reservations",
	"aclListReservations":       "Gaia has no reservations",
	"aclSubmitReservations":     "Gaia has no reservations",
	"reservation":               "Gaia has no reservations",
	"maxContainerAllocation":    "an app's request is checked against the nodes",
}

// Parse reads an allocation file. The pools come back parents first,
// root first; warnings name the ignored elements.
func Parse(data []byte) ([]model.Pool, []string, error) {
	top, err := parseTree(data)
	if err != nil {
		return nil, nil, err
	}
	if top.name != "allocations" {
		return nil, nil, errAt(top, "", "the top-level element must be <allocations>")
	}
	p := &parser{seen: map[string]int{}, def: defaults{}}
	root := inherited{}
	var queues []*elem
	var explicitRoot *elem
	// File-wide settings first: they apply whatever their position.
	for _, e := range top.kids {
		switch e.name {
		case "queue", "pool":
			if name, _ := attr(e, "name"); name == model.RootPool {
				if explicitRoot != nil {
					return nil, nil, errAt(e, "", "a second root queue (the first is on line %d)", explicitRoot.line)
				}
				explicitRoot = e
			}
			queues = append(queues, e)
		case "defaultQueueSchedulingPolicy":
			pol, err := parsePolicy(e.trimmed())
			if err != nil {
				return nil, nil, errAt(e, "", "%v", err)
			}
			p.def.policy = pol
		case "defaultMinSharePreemptionTimeout":
			if root.minShareTimeout, err = parseSeconds(e.trimmed()); err != nil {
				return nil, nil, errAt(e, "", "%v", err)
			}
		case "defaultFairSharePreemptionTimeout":
			if root.fairShareTimeout, err = parseSeconds(e.trimmed()); err != nil {
				return nil, nil, errAt(e, "", "%v", err)
			}
		case "defaultFairSharePreemptionThreshold":
			if root.threshold, err = parseThreshold(e.trimmed()); err != nil {
				return nil, nil, errAt(e, "", "%v", err)
			}
		case "queueMaxResourcesDefault":
			v, err := parseResources(e.trimmed())
			if err != nil {
				return nil, nil, errAt(e, "", "%v", err)
			}
			p.def.maxDefault = &v
		default:
			if why, ok := ignoredTop[e.name]; ok {
				p.warn(e, "", "ignored: %s", why)
				continue
			}
			return nil, nil, errAt(e, "", "unknown element in <allocations>")
		}
	}
	if len(top.attrs) > 0 {
		return nil, nil, errAt(top, "", "unexpected attribute %q", top.attrs[0].Name.Local)
	}
	// root: explicit or implicit; top-level queues not named root are its
	// children.
	if explicitRoot != nil {
		if err := p.queue(explicitRoot, "", root); err != nil {
			return nil, nil, err
		}
	} else {
		rp := model.Pool{Name: model.RootPool, Policy: p.def.policy}
		applyInherited(&rp, root)
		p.pools = append(p.pools, rp)
		p.seen[model.RootPool] = top.line
	}
	rootPool := p.pools[0]
	down := inherited{
		minShareTimeout:  rootPool.MinSharePreemptionTimeout,
		fairShareTimeout: rootPool.FairSharePreemptionTimeout,
		threshold:        rootPool.FairSharePreemptionThreshold,
		noPreemptionFrom: !rootPool.PreemptableFrom(),
	}
	for _, e := range queues {
		if e == explicitRoot {
			continue
		}
		if err := p.queue(e, model.RootPool, down); err != nil {
			return nil, nil, err
		}
	}
	return p.pools, p.warnings, nil
}

func attr(e *elem, name string) (string, bool) {
	for _, a := range e.attrs {
		if a.Name.Local == name {
			return a.Value, true
		}
	}
	return "", false
}

func applyInherited(pl *model.Pool, in inherited) {
	pl.MinSharePreemptionTimeout = in.minShareTimeout
	pl.FairSharePreemptionTimeout = in.fairShareTimeout
	pl.FairSharePreemptionThreshold = in.threshold
	if in.noPreemptionFrom {
		pl.AllowPreemptionFrom = model.Bool(false)
	}
}

// queue turns a <queue> element (and its descendants) into pools; parent
// is "" for the explicit root.
func (p *parser) queue(e *elem, parent string, in inherited) error {
	name, ok := attr(e, "name")
	if !ok || strings.TrimSpace(name) == "" {
		return errAt(e, parent, "a queue needs a name attribute")
	}
	for _, a := range e.attrs {
		switch a.Name.Local {
		case "name":
		case "type":
			if a.Value != "parent" && a.Value != "leaf" {
				return errAt(e, parent, "type=%q: want parent or leaf", a.Value)
			}
		default:
			return errAt(e, parent, "unexpected attribute %q", a.Name.Local)
		}
	}
	full := model.RootPool
	if parent != "" {
		if strings.Contains(name, ".") {
			return errAt(e, parent, "name %q: a queue name has no dots; nest <queue> elements instead", name)
		}
		full = parent + "." + name
	}
	if line, dup := p.seen[full]; dup {
		return errAt(e, full, "queue %s is defined twice (first on line %d)", full, line)
	}
	p.seen[full] = e.line
	pl := model.Pool{Name: full, Policy: p.def.policy}
	applyInherited(&pl, in)
	if parent != "" && p.def.maxDefault != nil {
		pl.Max = *p.def.maxDefault
	}
	var kids []*elem
	var err error
	for _, k := range e.kids {
		bad := func(err error) error { return errAt(k, full, "%v", err) }
		v := k.trimmed()
		switch k.name {
		case "queue", "pool":
			kids = append(kids, k)
		case "weight":
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 || math.IsInf(f, 0) || math.IsNaN(f) {
				return bad(fmt.Errorf("%q: want a number above 0 (Gaia has no weight-0 pools)", v))
			}
			pl.Weight = f
		case "minResources":
			if pl.Min, err = parseResources(v); err != nil {
				return bad(err)
			}
		case "maxResources":
			if pl.Max, err = parseResources(v); err != nil {
				return bad(err)
			}
		case "maxInstances":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return bad(fmt.Errorf("%q: want a whole number, 0 for unlimited", v))
			}
			pl.MaxInstances = n
		case "schedulingPolicy":
			if pl.Policy, err = parsePolicy(v); err != nil {
				return bad(err)
			}
		case "minSharePreemptionTimeout":
			if pl.MinSharePreemptionTimeout, err = parseSeconds(v); err != nil {
				return bad(err)
			}
		case "fairSharePreemptionTimeout":
			if pl.FairSharePreemptionTimeout, err = parseSeconds(v); err != nil {
				return bad(err)
			}
		case "fairSharePreemptionThreshold":
			if pl.FairSharePreemptionThreshold, err = parseThreshold(v); err != nil {
				return bad(err)
			}
		case "allowPreemptionFrom":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return bad(fmt.Errorf("%q: want true or false", v))
			}
			if !b || in.noPreemptionFrom {
				pl.AllowPreemptionFrom = model.Bool(false)
			} else {
				pl.AllowPreemptionFrom = nil
			}
			if b && in.noPreemptionFrom {
				p.warn(k, full, "true has no effect: a parent pool does not allow preemption from it (YARN's rule)")
			}
		case "aclSubmitApps":
			users, groups := parseACL(k.text)
			pl.Submitters = users
			if groups != "" {
				p.warn(k, full, "groups %q ignored: Gaia's submitters are token names", groups)
			}
		default:
			if why, ok := ignoredQueue[k.name]; ok {
				p.warn(k, full, "ignored: %s", why)
				continue
			}
			return errAt(k, full, "unknown element in <queue>")
		}
	}
	if err := pl.Validate(); err != nil {
		return &Error{Line: e.line, Element: "queue", Pool: full, Message: err.Error()}
	}
	p.pools = append(p.pools, pl)
	down := inherited{
		minShareTimeout:  pl.MinSharePreemptionTimeout,
		fairShareTimeout: pl.FairSharePreemptionTimeout,
		threshold:        pl.FairSharePreemptionThreshold,
		noPreemptionFrom: !pl.PreemptableFrom(),
	}
	for _, k := range kids {
		if err := p.queue(k, full, down); err != nil {
			return err
		}
	}
	return nil
}

func parsePolicy(s string) (model.Policy, error) {
	switch pol := model.Policy(strings.ToLower(strings.TrimSpace(s))); pol {
	case model.PolicyDRF, model.PolicyFair, model.PolicyFIFO:
		return pol, nil
	}
	return "", fmt.Errorf("%q: want drf, fair or fifo", s)
}

// parseSeconds reads a timeout: seconds as in YARN ("30"), or a Go
// duration ("30s", "5m").
func parseSeconds(s string) (model.Duration, error) {
	d, err := model.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d < 0 {
		return 0, fmt.Errorf("%q: must not be negative", s)
	}
	return d, nil
}

func parseThreshold(s string) (float64, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(f) || f <= 0 || f > 1 {
		return 0, fmt.Errorf("%q: want a number above 0 and at most 1 (Gaia reads 0 as the default, 0.5)", s)
	}
	return f, nil
}

// parseACL splits YARN's "user1,user2 group1,group2": "*" is everyone,
// and a leading space means no users (" group1" is groups only).
func parseACL(raw string) (users []string, groups string) {
	if strings.ContainsAny(raw, "\r\n") {
		// Written over several lines: the layout is not YARN's leading
		// space (which means "no users").
		raw = strings.TrimSpace(raw)
	}
	if strings.TrimSpace(raw) == "*" {
		return []string{"*"}, ""
	}
	u, g, _ := strings.Cut(raw, " ")
	for _, s := range strings.Split(u, ",") {
		if s = strings.TrimSpace(s); s != "" {
			users = append(users, s)
		}
	}
	return users, strings.TrimSpace(g)
}

// yarnKeys maps YARN's resource names, and Gaia's own, to dimensions.
var yarnKeys = map[string]resource.Dim{
	"vcores": resource.CPU, "memory-mb": resource.Memory, "memory": resource.Memory,
	"cpu": resource.CPU, "disk": resource.Disk, "diskio": resource.DiskIO,
	"netin": resource.NetIn, "netout": resource.NetOut,
}

// parseResources reads "vcores=2, memory-mb=4096", YARN's older "4096 mb,
// 2 vcores", or Gaia's dimensions with units ("cpu=2, memory=4Gi,
// disk=100Gi, diskio=50MiB/s, netin=100Mbit, netout=100Mbit"), mixed
// freely. memory-mb and "N mb" count MiB, vcores count cores; memory and
// disk need a unit. Percentages of the cluster are refused.
func parseResources(s string) (resource.Vector, error) {
	var v resource.Vector
	set := map[resource.Dim]string{}
	if strings.TrimSpace(s) == "" {
		return v, errors.New("empty: give e.g. \"vcores=2, memory-mb=4096\"")
	}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if strings.Contains(item, "%") {
			return v, fmt.Errorf("%q: percentages of the cluster are not supported; give amounts", item)
		}
		var key, val string
		if k, x, ok := strings.Cut(item, "="); ok {
			key, val = strings.TrimSpace(k), strings.TrimSpace(x)
		} else if f := strings.Fields(item); len(f) == 2 {
			// YARN's older "1024 mb" and "2 vcores".
			switch strings.ToLower(f[1]) {
			case "mb":
				key, val = "memory-mb", f[0]
			case "vcores", "vcore":
				key, val = "vcores", f[0]
			default:
				return v, fmt.Errorf("%q: want \"N mb\" or \"N vcores\"", item)
			}
		} else {
			return v, fmt.Errorf("%q: want name=amount (vcores, memory-mb, cpu, memory, disk, diskio, netin, netout)", item)
		}
		d, ok := yarnKeys[strings.ToLower(key)]
		if !ok {
			return v, fmt.Errorf("%q: unknown resource %q (Gaia has vcores/cpu, memory-mb/memory, disk, diskio, netin, netout)", item, key)
		}
		if prev, dup := set[d]; dup {
			return v, fmt.Errorf("%q: %s is already given by %q", item, d, prev)
		}
		set[d] = item
		var n int64
		var err error
		switch lk := strings.ToLower(key); {
		case lk == "memory-mb" && isPlainNumber(val):
			var mb int64
			mb, err = strconv.ParseInt(val, 10, 64)
			if err == nil && (mb < 0 || mb > math.MaxInt64>>20) {
				err = fmt.Errorf("out of range")
			}
			n = mb << 20
		case (d == resource.Memory || d == resource.Disk) && isPlainNumber(val):
			err = fmt.Errorf("give a unit (e.g. %s=4Gi), or memory-mb=N for MiB", key)
		default:
			n, err = resource.Parse(d, val)
		}
		if err != nil {
			return v, fmt.Errorf("%q: %v", item, err)
		}
		v[d] = n
	}
	return v, nil
}

func isPlainNumber(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
