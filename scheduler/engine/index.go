package engine

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// tree is the placement index: a segment tree over the nodes (in index
// order) holding, at every inner vertex, the per-dimension maximum of the
// free capacity below it. A request can only fit under a vertex whose
// maximum covers it in all six dimensions, so a search skips whole
// subtrees of full nodes; the leaves are checked exactly, so the index
// never over-commits. Updating a node costs O(log n).
type tree struct {
	size int
	max  []resource.Vector
}

func (t *tree) grow(n int) {
	if n <= t.size {
		return
	}
	size := 1
	for size < n {
		size *= 2
	}
	nm := make([]resource.Vector, 2*size)
	for i := range nm {
		nm[i] = notPlaceable
	}
	for i := 0; i < t.size; i++ {
		nm[size+i] = t.max[t.size+i]
	}
	for j := size - 1; j >= 1; j-- {
		nm[j] = nm[2*j].Max(nm[2*j+1])
	}
	t.size, t.max = size, nm
}

func (t *tree) set(i int, v resource.Vector) {
	if i >= t.size {
		return
	}
	j := t.size + i
	t.max[j] = v
	for j > 1 {
		j /= 2
		m := t.max[2*j].Max(t.max[2*j+1])
		if m == t.max[j] {
			break
		}
		t.max[j] = m
	}
}

// scan calls visit on every leaf in [from, to) whose free capacity may
// fit req, in index order, until visit returns false. It reports whether
// it ran to the end.
func (t *tree) scan(req resource.Vector, from, to int, visit func(int) bool) bool {
	if t.size == 0 || from >= to {
		return true
	}
	return t.rec(1, 0, t.size, req, from, to, visit)
}

func (t *tree) rec(x, lo, hi int, req resource.Vector, from, to int, visit func(int) bool) bool {
	if hi <= from || lo >= to || !req.Fits(t.max[x]) {
		return true
	}
	if hi-lo == 1 {
		return visit(lo)
	}
	mid := (lo + hi) / 2
	return t.rec(2*x, lo, mid, req, from, to, visit) && t.rec(2*x+1, mid, hi, req, from, to, visit)
}

// ---- constraints

type conEntry struct {
	gen   uint64
	nodes []int // node indices, ascending
}

func constraintKey(con model.Constraints) string {
	if con.IDC == "" && len(con.Labels) == 0 {
		return ""
	}
	ks := make([]string, 0, len(con.Labels))
	for k := range con.Labels {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var b strings.Builder
	b.WriteString(con.IDC)
	for _, k := range ks {
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(con.Labels[k])
	}
	return b.String()
}

func matches(con model.Constraints, n *node) bool {
	if con.IDC != "" && n.m.IDC != con.IDC {
		return false
	}
	for k, v := range con.Labels {
		if w, ok := n.m.Labels[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// constrained returns the nodes an app's constraints allow, cached until
// the node set or some node's labels change; nil when the app has none.
func (c *Cluster) constrained(a *app) *conEntry {
	key := constraintKey(a.m.Spec.Constraints)
	if key == "" {
		return nil
	}
	e := c.conCache[key]
	if e != nil && e.gen == c.nodeGen {
		return e
	}
	e = &conEntry{gen: c.nodeGen}
	for idx, n := range c.nodeList {
		if matches(a.m.Spec.Constraints, n) {
			e.nodes = append(e.nodes, idx)
		}
	}
	c.conCache[key] = e
	return e
}

// ---- feasibility and choice

// feasible is exact: all six dimensions, state, constraints, spread and
// host ports.
func (c *Cluster) feasible(a *app, n *node, req resource.Vector) bool {
	return n.ready() && req.Fits(n.free()) && c.admits(a, n)
}

// admits: n allows one more instance of a by a's constraints, spread and
// host ports (feasible but for state and room).
func (c *Cluster) admits(a *app, n *node) bool {
	s := &a.m.Spec
	if s.Spread > 0 && n.appCount[a] >= s.Spread {
		return false
	}
	if !matches(s.Constraints, n) {
		return false
	}
	dyn := 0
	for _, p := range s.Ports {
		if p.HostPort != 0 {
			if _, used := n.ports[p.HostPort]; used {
				return false
			}
			if p.HostPort >= c.cfg.PortMin && p.HostPort <= c.cfg.PortMax {
				dyn++ // it will take a slot of the range too
			}
		} else {
			dyn++
		}
	}
	if dyn > 0 && c.cfg.PortMax-c.cfg.PortMin+1-n.dynUsed < dyn {
		return false
	}
	return true
}

// score is higher for fuller nodes after placing req.
func score(n *node, req resource.Vector) float64 {
	after := n.used.Add(req)
	s := 0.0
	for d := range after {
		if n.alloc[d] > 0 {
			s += float64(after[d]) / float64(n.alloc[d])
		}
	}
	return s
}

// pick chooses a node for one instance of a, or nil. cursor is the
// plan's rotating start for Spread.
func (c *Cluster) pick(a *app, req resource.Vector, cursor int) *node {
	k := c.cfg.Candidates
	var best *node
	var bestScore float64
	found := 0
	firstFound := -1
	visit := func(idx int) bool {
		n := c.nodeList[idx]
		if !c.feasible(a, n, req) {
			return true
		}
		if firstFound < 0 {
			firstFound = idx
		}
		s := score(n, req)
		if best == nil || (c.cfg.Scoring == Binpack && s > bestScore) || (c.cfg.Scoring == Spread && s < bestScore) {
			best, bestScore = n, s
		}
		found++
		return found < k
	}
	nn := len(c.nodeList)
	if con := c.constrained(a); con != nil && len(con.nodes)*4 < nn {
		// few nodes qualify: walk the list
		list := con.nodes
		start := 0
		if c.cfg.Scoring == Binpack {
			start = sort.SearchInts(list, a.scanFrom)
		} else if len(list) > 0 && nn > 0 {
			// the cursor is a node index: start at the first listed node
			// at or after it
			start = sort.SearchInts(list, cursor%nn)
			if start == len(list) {
				start = 0
			}
		}
		for j := 0; j < len(list); j++ {
			pos := start + j
			if pos >= len(list) {
				if c.cfg.Scoring == Binpack {
					break
				}
				pos -= len(list)
			}
			if !req.Fits(c.tree.max[c.tree.size+list[pos]]) {
				continue
			}
			if !visit(list[pos]) {
				break
			}
		}
	} else if c.cfg.Scoring == Binpack {
		// First fit from the first node not yet ruled out for this app in
		// this plan: within a plan, free capacity only shrinks and the
		// app's counts only grow, so a node that failed stays failed.
		c.tree.scan(req, a.scanFrom, nn, visit)
	} else {
		start := 0
		if nn > 0 {
			start = cursor % nn
		}
		if c.tree.scan(req, start, nn, visit) {
			c.tree.scan(req, 0, start, visit)
		}
	}
	if c.cfg.Scoring == Binpack {
		if firstFound >= 0 {
			a.scanFrom = firstFound
		} else {
			a.scanFrom = nn
		}
	}
	return best
}

// assignPorts gives an instance its host ports on n: the fixed ones, and
// for the rest the lowest free ports of the dynamic range.
func (c *Cluster) assignPorts(a *app, n *node) []hostPort {
	if len(a.m.Spec.Ports) == 0 {
		return nil
	}
	out := make([]hostPort, 0, len(a.m.Spec.Ports))
	taken := func(p int) bool {
		if _, used := n.ports[p]; used {
			return true
		}
		for _, hp := range out {
			if hp.port == p {
				return true
			}
		}
		return false
	}
	for _, p := range a.m.Spec.Ports {
		if p.HostPort != 0 {
			out = append(out, hostPort{p.Name, p.HostPort})
		}
	}
	next := c.cfg.PortMin
	for _, p := range a.m.Spec.Ports {
		if p.HostPort != 0 {
			continue
		}
		for next <= c.cfg.PortMax && taken(next) {
			next++
		}
		out = append(out, hostPort{p.Name, next})
		next++
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// unfit says why no node took an instance of a. The generic answer costs
// nothing; an app with fixed host ports or a spread limit gets one scan
// of the nodes its constraints allow (once per plan, as pick failed) to
// tell a port clash or the spread limit from a lack of room.
func (c *Cluster) unfit(a *app, req resource.Vector) string {
	generic := fmt.Sprintf("no node has room for %s", describe(a))
	s := &a.m.Spec
	var fixed []int
	for _, p := range s.Ports {
		if p.HostPort != 0 {
			fixed = append(fixed, p.HostPort)
		}
	}
	if len(fixed) == 0 && s.Spread == 0 {
		return generic
	}
	// nodes with room; of those, under the spread limit; of those, with
	// every fixed port free
	roomy, spreadOK, portsFree := 0, 0, 0
	taken := map[int]bool{}
	for _, n := range c.nodeList {
		if !n.ready() || !matches(s.Constraints, n) || !req.Fits(n.free()) {
			continue
		}
		roomy++
		if s.Spread > 0 && n.appCount[a] >= s.Spread {
			continue
		}
		spreadOK++
		free := true
		for _, p := range fixed {
			if _, used := n.ports[p]; used {
				taken[p], free = true, false
			}
		}
		if free {
			portsFree++
		}
	}
	switch {
	case spreadOK > 0 && portsFree == 0:
		ports := make([]string, 0, len(taken))
		for _, p := range fixed {
			if taken[p] {
				ports = append(ports, strconv.Itoa(p))
				delete(taken, p)
			}
		}
		if len(ports) == 1 {
			return fmt.Sprintf("host port %s is taken on every node that fits %s", ports[0], describe(a))
		}
		return fmt.Sprintf("host ports %s are taken on every node that fits %s", strings.Join(ports, ", "), describe(a))
	case roomy > 0 && spreadOK == 0:
		return fmt.Sprintf("every node with room for %s already runs %d of its instances (spread)", a.m.Spec.Resources, s.Spread)
	}
	return generic
}
