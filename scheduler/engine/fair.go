package engine

import (
	"math"
	"sort"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// dimMask selects the dimensions a policy compares: all six for drf,
// memory only for fair.
type dimMask [resource.NumDims]bool

var (
	allDims    = dimMask{true, true, true, true, true, true}
	memoryOnly = dimMask{resource.Memory: true}
)

func maskOf(p model.Policy) dimMask {
	if p == model.PolicyFair {
		return memoryOnly
	}
	return allDims
}

// share is v's dominant share of total over the masked dimensions.
func share(v, total resource.Vector, m *dimMask) float64 {
	s := 0.0
	for d := range v {
		if m[d] && total[d] > 0 {
			if f := float64(v[d]) / float64(total[d]); f > s {
				s = f
			}
		}
	}
	return s
}

// needy: below its min target in some masked dimension.
func needy(usage, minT resource.Vector, m *dimMask) bool {
	for d := range usage {
		if m[d] && minT[d] > 0 && usage[d] < minT[d] {
			return true
		}
	}
	return false
}

// minRatio is the largest usage/min over the masked dimensions with a min.
func minRatio(usage, minT resource.Vector, m *dimMask) float64 {
	r := 0.0
	for d := range usage {
		if m[d] && minT[d] > 0 {
			if f := float64(usage[d]) / float64(minT[d]); f > r {
				r = f
			}
		}
	}
	return r
}

// less orders the children of a pool with policy pol: higher priority
// first (apps); then, for drf and fair, pools below their min (YARN's
// "needy") before the rest, needy ones by smallest usage/min, the rest by
// smallest dominant share over weight; for fifo, apps by creation time and
// pools by name. Ties go by name.
func (c *Cluster) less(pol model.Policy, x, y *schedKey) bool {
	if x.priority != y.priority {
		return x.priority > y.priority
	}
	if pol == model.PolicyFIFO {
		if !x.created.Equal(y.created) {
			return x.created.Before(y.created)
		}
		return x.name < y.name
	}
	m := maskOf(pol)
	xn, yn := needy(x.usage, x.minT, &m), needy(y.usage, y.minT, &m)
	if xn != yn {
		return xn
	}
	if xn {
		if rx, ry := minRatio(x.usage, x.minT, &m), minRatio(y.usage, y.minT, &m); rx != ry {
			return rx < ry
		}
	} else {
		sx := share(x.usage, c.total, &m) / x.weight
		sy := share(y.usage, c.total, &m) / y.weight
		if sx != sy {
			return sx < sy
		}
	}
	return x.name < y.name
}

// ---- demand

// prepareDemand sets every app's and pool's demand (usage plus the
// missing instances' requests, capped by the pool's max) and min target
// (min capped by demand). missing must be set on the apps.
func (c *Cluster) prepareDemand() {
	for _, p := range c.pools {
		p.sk.demand = resource.Vector{}
	}
	for _, a := range c.sortedApps() {
		a.sk.demand = a.sk.usage
		if a.missing > 0 {
			a.sk.demand = a.sk.demand.Add(a.m.Spec.Resources.Scale(int64(a.missing)))
		}
		a.pool.sk.demand = a.pool.sk.demand.Add(a.sk.demand)
	}
	// children before parents: deepest first
	ps := c.poolsByDepth()
	for j := len(ps) - 1; j >= 0; j-- {
		p := ps[j]
		for d := range p.sk.demand {
			if p.m.Max[d] > 0 && p.sk.demand[d] > p.m.Max[d] {
				p.sk.demand[d] = p.m.Max[d]
			}
		}
		p.sk.minT = p.m.Min.Min(p.sk.demand)
		if p.parent != nil {
			p.parent.sk.demand = p.parent.sk.demand.Add(p.sk.demand)
		}
	}
}

func (c *Cluster) poolsByDepth() []*pool {
	ps := make([]*pool, 0, len(c.pools))
	for _, p := range c.pools {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].depth != ps[j].depth {
			return ps[i].depth < ps[j].depth
		}
		return ps[i].sk.name < ps[j].sk.name
	})
	return ps
}

// ---- fair shares

// FairShares is each pool's weighted fair share of the ready nodes'
// capacity under the current demand (usage plus missing instances):
// hierarchical weighted DRF by progressive filling. At every level a
// child's allocation grows along its demand vector so that its dominant
// share is max(its min's share, weight × t), never beyond its demand (max
// already caps demand); t rises until a dimension of the parent's share
// runs out, the children using that dimension stop there, and the rest go
// on. If the mins alone do not fit they are scaled down together. Pools
// without demand get zero.
func (c *Cluster) FairShares() map[string]resource.Vector {
	for _, a := range c.apps {
		a.missing = c.wanted(a) - a.cnt.live
	}
	c.prepareDemand()
	c.computeFair()
	out := make(map[string]resource.Vector, len(c.pools))
	for name, p := range c.pools {
		out[name] = p.fair
	}
	return out
}

// wanted is how many instances an app asks for now.
func (c *Cluster) wanted(a *app) int {
	if a.stub || a.m.State == model.AppStopped {
		return 0
	}
	return a.m.Spec.Instances
}

func (c *Cluster) computeFair() {
	for _, p := range c.pools {
		p.fair = resource.Vector{}
	}
	c.root.fair = c.total.Min(c.root.sk.demand)
	c.divide(c.root)
}

func (c *Cluster) divide(p *pool) {
	if len(p.children) == 0 {
		return
	}
	kids := make([]*pool, 0, len(p.children))
	for _, ch := range p.children {
		kids = append(kids, ch)
	}
	sort.Slice(kids, func(i, j int) bool { return kids[i].sk.name < kids[j].sk.name })
	m := maskOf(p.m.EffectivePolicy())
	capacity := p.fair
	// what the parent's own apps (if any) take comes off first
	for _, a := range p.apps {
		capacity = capacity.Sub(a.sk.demand).Max(resource.Vector{})
	}
	allocs := waterfill(kids, capacity, c.total, &m)
	for j, ch := range kids {
		ch.fair = allocs[j]
		c.divide(ch)
	}
}

type fvec [resource.NumDims]float64

func waterfill(kids []*pool, capacity, total resource.Vector, m *dimMask) []resource.Vector {
	n := len(kids)
	ds := make([]float64, n)
	ms := make([]float64, n)
	w := make([]float64, n)
	frozen := make([]bool, n)
	alloc := make([]fvec, n)
	for j, k := range kids {
		ds[j] = share(k.sk.demand, total, m)
		ms[j] = math.Min(share(k.sk.minT, total, m), ds[j])
		w[j] = k.sk.weight
		if ds[j] == 0 {
			frozen[j] = true
		}
	}
	at := func(j int, s float64) fvec {
		var v fvec
		if ds[j] == 0 {
			return v
		}
		f := math.Min(s, ds[j]) / ds[j]
		for d := range v {
			v[d] = float64(kids[j].sk.demand[d]) * f
		}
		return v
	}
	fits := func(level func(j int) float64) bool {
		var sum fvec
		for j := range kids {
			var v fvec
			if frozen[j] {
				v = alloc[j]
			} else {
				v = at(j, level(j))
			}
			for d := range sum {
				sum[d] += v[d]
			}
		}
		for d := range sum {
			if sum[d] > float64(capacity[d])*(1+1e-12) {
				return false
			}
		}
		return true
	}
	for {
		active := 0
		hi := 0.0
		for j := range kids {
			if !frozen[j] {
				active++
				hi = math.Max(hi, ds[j]/w[j])
			}
		}
		if active == 0 {
			break
		}
		atMin := func(j int) float64 { return ms[j] }
		if !fits(atMin) {
			// the mins do not fit: scale them down together
			lo, up := 0.0, 1.0
			for it := 0; it < 60; it++ {
				mid := (lo + up) / 2
				if fits(func(j int) float64 { return ms[j] * mid }) {
					lo = mid
				} else {
					up = mid
				}
			}
			for j := range kids {
				if !frozen[j] {
					alloc[j] = at(j, ms[j]*lo)
					frozen[j] = true
				}
			}
			break
		}
		level := func(t float64) func(j int) float64 {
			return func(j int) float64 { return math.Max(ms[j], w[j]*t) }
		}
		if fits(level(hi)) {
			for j := range kids {
				if !frozen[j] {
					alloc[j] = at(j, level(hi)(j))
					frozen[j] = true
				}
			}
			break
		}
		lo, up := 0.0, hi
		for it := 0; it < 60; it++ {
			mid := (lo + up) / 2
			if fits(level(mid)) {
				lo = mid
			} else {
				up = mid
			}
		}
		var sum fvec
		for j := range kids {
			if !frozen[j] {
				alloc[j] = at(j, level(lo)(j))
			}
			for d := range sum {
				sum[d] += alloc[j][d]
			}
		}
		// the dimensions that ran out (within what one more step of the
		// search would add) stop every active child that uses them
		var sat [resource.NumDims]bool
		up2 := level(up)
		var next fvec
		for j := range kids {
			v := alloc[j]
			if !frozen[j] {
				v = at(j, up2(j))
			}
			for d := range next {
				next[d] += v[d]
			}
		}
		for d := range sum {
			if next[d] > float64(capacity[d])*(1+1e-12) || sum[d] >= float64(capacity[d])*(1-1e-9) {
				sat[d] = capacity[d] > 0 || sum[d] > 0
			}
		}
		progressed := false
		for j := range kids {
			if frozen[j] {
				continue
			}
			for d := range sat {
				if sat[d] && kids[j].sk.demand[d] > 0 {
					frozen[j] = true
					progressed = true
					break
				}
			}
		}
		if !progressed {
			for j := range kids {
				frozen[j] = true
			}
		}
	}
	out := make([]resource.Vector, n)
	for j := range kids {
		for d := range out[j] {
			x := alloc[j][d]
			if r := math.Round(x); math.Abs(x-r) < 1e-3 {
				x = r
			}
			out[j][d] = int64(x)
		}
	}
	return out
}
