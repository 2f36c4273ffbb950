package enforce

import (
	"encoding/binary"
	"fmt"
	"net"
	"sort"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/gaia-registry/gaia/scheduler/resource"
)

// Network shaping: one HTB tree per direction on an IFB device the agent
// creates, so that every instance's class is a sibling of every other's
// (borrowing needs one tree). Each instance's host-side veth redirects its
// traffic to the trees:
//
//	out (instance → world): ingress qdisc on the veth, u32 match-all,
//	    mirred egress redirect to IFBOut; classified there by ip src.
//	in  (world → instance): HTB root on the veth, u32 match-all, mirred
//	    egress redirect to IFBIn; classified there by ip dst.
//
// Root class 1:1 rate = ceil = the link; a class 1:<n> per instance with
// rate = its netout/netin, ceil = the link, prio = the rank of its app's
// priority on the node (highest = 0), quantum proportional to its rate (so
// that equal-priority classes share spare bandwidth in proportion to their
// allocations). Unclassified traffic (ARP, IPv6, other hosts) passes
// unshaped (HTB direct). Only u32 filters, the mirred action and htb and
// ingress qdiscs are used (node-facts.md: what the kernel has).

const (
	htbRoot     = 0x10000 // 1:
	htbRootCls  = 0x10001 // 1:1
	ingressHdl  = 0xffff0000
	u32HashRoot = 0x80000000 // u32 handle 800::
)

type netInst struct {
	in    Instance
	ip    net.IP
	veth  int // host-side ifindex
	minor uint16
}

type tree struct {
	name string
	rate uint64 // bits/s
	ifb  netlink.Link
	out  bool // classify by ip src (out) or dst (in)
}

type netTrees struct {
	mu       sync.Mutex
	out, in  tree
	inst     map[string]*netInst
	next     uint16
	prioRank map[int]uint32
}

func (t *netTrees) init(cfg Config) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.inst = map[string]*netInst{}
	t.next = 2
	t.out = tree{name: cfg.IFBOut, rate: uint64(cfg.LinkOut), out: true}
	t.in = tree{name: cfg.IFBIn, rate: uint64(cfg.LinkIn)}
	for _, tr := range []*tree{&t.out, &t.in} {
		if tr.rate == 0 {
			tr.rate = 10_000_000_000
		}
		if err := tr.setup(); err != nil {
			return err
		}
	}
	return nil
}

// reset rebuilds both trees empty (agent restart: Rebuild adds the
// running instances back).
func (t *netTrees) reset(cfg Config) error {
	return t.init(cfg)
}

func (tr *tree) setup() error {
	l, err := netlink.LinkByName(tr.name)
	if err == nil && l.Type() != "ifb" {
		return fmt.Errorf("enforce: %s exists and is a %s, not the agent's IFB: not touching it", tr.name, l.Type())
	}
	if err != nil {
		if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: tr.name, TxQLen: 1000}}); err != nil {
			return missing("IFB devices (ip link add %s type ifb): %v", tr.name, err)
		}
		if l, err = netlink.LinkByName(tr.name); err != nil {
			return err
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return err
	}
	tr.ifb = l
	// Start from an empty tree.
	_ = netlink.QdiscDel(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_ROOT, Handle: htbRoot}})
	q := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_ROOT, Handle: htbRoot})
	if err := netlink.QdiscAdd(q); err != nil {
		return missing("HTB qdisc on %s: %v", tr.name, err)
	}
	root := netlink.NewHtbClass(netlink.ClassAttrs{LinkIndex: l.Attrs().Index, Parent: htbRoot, Handle: htbRootCls},
		netlink.HtbClassAttrs{Rate: tr.rate, Ceil: tr.rate, Quantum: quantum(tr.rate, tr.rate)})
	if err := netlink.ClassAdd(root); err != nil {
		return fmt.Errorf("enforce: HTB root class on %s: %w", tr.name, err)
	}
	return nil
}

// quantum is proportional to the class's rate (HTB shares spare bandwidth
// among equal-priority classes by quantum), at most 200000 bytes for a
// class at the link's rate.
func quantum(rate, link uint64) uint32 {
	q := rate * 200000 / link
	if q < 100 {
		q = 100
	}
	return uint32(q)
}

func (t *netTrees) rankPrios() {
	var ps []int
	seen := map[int]bool{}
	for _, ni := range t.inst {
		if !seen[ni.in.Priority] {
			seen[ni.in.Priority] = true
			ps = append(ps, ni.in.Priority)
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(ps)))
	t.prioRank = map[int]uint32{}
	for i, p := range ps {
		r := uint32(i)
		if r > 7 {
			r = 7
		}
		t.prioRank[p] = r
	}
}

func (tr *tree) class(ni *netInst, rate uint64, prio uint32) *netlink.HtbClass {
	if rate == 0 {
		rate = 8000 // no allocation: nothing guaranteed, borrowing only
	}
	if rate > tr.rate {
		rate = tr.rate
	}
	return netlink.NewHtbClass(netlink.ClassAttrs{LinkIndex: tr.ifb.Attrs().Index, Parent: htbRootCls, Handle: htbRoot | uint32(ni.minor)},
		netlink.HtbClassAttrs{Rate: rate, Ceil: tr.rate, Prio: prio, Quantum: quantum(rate, tr.rate)})
}

func (tr *tree) filter(ni *netInst) *netlink.U32 {
	off := int32(16) // ip dst
	if tr.out {
		off = 12 // ip src
	}
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: tr.ifb.Attrs().Index, Parent: htbRoot, Priority: 1,
			Protocol: unix.ETH_P_IP, Handle: u32HashRoot | uint32(ni.minor)},
		ClassId: htbRoot | uint32(ni.minor),
		Sel: &netlink.TcU32Sel{Flags: u32Terminal, Nkeys: 1,
			Keys: []netlink.TcU32Key{{Mask: 0xffffffff, Val: binary.BigEndian.Uint32(ni.ip.To4()), Off: off}}},
	}
}

const u32Terminal = 1

// add gives the instance its classes and redirects its veth.
func (t *netTrees) add(in Instance, nsPath string) error {
	ip, veth, err := containerVeth(nsPath)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if old := t.inst[in.ID]; old != nil {
		t.removeLocked(in.ID)
	}
	ni := &netInst{in: in, ip: ip, veth: veth.Attrs().Index, minor: t.alloc()}
	t.inst[in.ID] = ni
	old := t.prioRank
	t.rankPrios()
	for _, tr := range []*tree{&t.out, &t.in} {
		rate := uint64(in.Request[resource.NetIn])
		if tr.out {
			rate = uint64(in.Request[resource.NetOut])
		}
		if err := netlink.ClassAdd(tr.class(ni, rate, t.prioRank[in.Priority])); err != nil {
			return fmt.Errorf("enforce: HTB class for %s on %s: %w", in.ID, tr.name, err)
		}
		if err := netlink.FilterAdd(tr.filter(ni)); err != nil {
			return missing("u32 filter on %s: %v", tr.name, err)
		}
	}
	if err := t.redirect(veth); err != nil {
		return err
	}
	// A new priority rank moves other instances' classes.
	for id, o := range t.inst {
		if id != in.ID && old[o.in.Priority] != t.prioRank[o.in.Priority] {
			for _, tr := range []*tree{&t.out, &t.in} {
				rate := uint64(o.in.Request[resource.NetIn])
				if tr.out {
					rate = uint64(o.in.Request[resource.NetOut])
				}
				_ = netlink.ClassChange(tr.class(o, rate, t.prioRank[o.in.Priority]))
			}
		}
	}
	return nil
}

func (t *netTrees) alloc() uint16 {
	used := map[uint16]bool{}
	for _, ni := range t.inst {
		used[ni.minor] = true
	}
	for {
		m := t.next
		t.next++
		if t.next >= 0xfff {
			t.next = 2
		}
		if !used[m] {
			return m
		}
	}
}

// redirect sends the veth's traffic in both directions to the IFBs.
func (t *netTrees) redirect(veth netlink.Link) error {
	idx := veth.Attrs().Index
	_ = netlink.QdiscDel(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Parent: netlink.HANDLE_INGRESS, Handle: ingressHdl}})
	_ = netlink.QdiscDel(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Parent: netlink.HANDLE_ROOT, Handle: htbRoot}})
	if err := netlink.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Parent: netlink.HANDLE_INGRESS, Handle: ingressHdl}}); err != nil {
		return missing("ingress qdisc on %s: %v", veth.Attrs().Name, err)
	}
	if err := netlink.FilterAdd(matchAllRedirect(idx, ingressHdl, t.out.ifb.Attrs().Index)); err != nil {
		return missing("u32 + mirred redirect on %s ingress: %v", veth.Attrs().Name, err)
	}
	if err := netlink.QdiscAdd(netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: idx, Parent: netlink.HANDLE_ROOT, Handle: htbRoot})); err != nil {
		return missing("HTB root qdisc on %s: %v", veth.Attrs().Name, err)
	}
	if err := netlink.FilterAdd(matchAllRedirect(idx, htbRoot, t.in.ifb.Attrs().Index)); err != nil {
		return missing("u32 + mirred redirect on %s egress: %v", veth.Attrs().Name, err)
	}
	return nil
}

func matchAllRedirect(link int, parent uint32, to int) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: link, Parent: parent, Priority: 1, Protocol: unix.ETH_P_ALL},
		ClassId:     htbRoot, // = the qdisc itself: HTB direct when the IFB re-injects it
		Sel:         &netlink.TcU32Sel{Flags: u32Terminal, Nkeys: 1, Keys: []netlink.TcU32Key{{}}},
		Actions:     []netlink.Action{netlink.NewMirredAction(to)},
	}
}

func (t *netTrees) remove(id string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.removeLocked(id)
}

func (t *netTrees) removeLocked(id string) error {
	ni := t.inst[id]
	if ni == nil {
		return nil
	}
	delete(t.inst, id)
	var errs []error
	for _, tr := range []*tree{&t.out, &t.in} {
		if err := netlink.FilterDel(tr.filter(ni)); err != nil {
			errs = append(errs, fmt.Errorf("enforce: filter of %s on %s: %w", id, tr.name, err))
		}
		if err := netlink.ClassDel(tr.class(ni, 0, 0)); err != nil {
			errs = append(errs, fmt.Errorf("enforce: class of %s on %s: %w", id, tr.name, err))
		}
	}
	// The veth usually went with its container; if not, and it is still
	// the same veth, undo the redirect.
	if l, err := netlink.LinkByIndex(ni.veth); err == nil && l.Type() == "veth" {
		_ = netlink.QdiscDel(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ni.veth, Parent: netlink.HANDLE_INGRESS, Handle: ingressHdl}})
		_ = netlink.QdiscDel(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ni.veth, Parent: netlink.HANDLE_ROOT, Handle: htbRoot}})
	}
	return joinErrs(errs)
}

type classStats struct {
	outBytes, outDrops, outOverlimits uint64
	inBytes, inDrops, inOverlimits    uint64
}

func (t *netTrees) stats() map[string]classStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	byMinor := map[uint16]string{}
	for id, ni := range t.inst {
		byMinor[ni.minor] = id
	}
	out := map[string]classStats{}
	for _, tr := range []*tree{&t.out, &t.in} {
		cls, err := netlink.ClassList(tr.ifb, htbRoot)
		if err != nil {
			continue
		}
		for _, c := range cls {
			id, ok := byMinor[uint16(c.Attrs().Handle&0xffff)]
			st := c.Attrs().Statistics
			if !ok || st == nil || st.Basic == nil || st.Queue == nil {
				continue
			}
			s := out[id]
			if tr.out {
				s.outBytes, s.outDrops, s.outOverlimits = st.Basic.Bytes, uint64(st.Queue.Drops), uint64(st.Queue.Overlimits)
			} else {
				s.inBytes, s.inDrops, s.inOverlimits = st.Basic.Bytes, uint64(st.Queue.Drops), uint64(st.Queue.Overlimits)
			}
			out[id] = s
		}
	}
	return out
}

// containerVeth finds, in the network namespace at nsPath, the interface
// with an IPv4 address that is one end of a veth, and the other end in the
// agent's namespace. It refuses anything that is not a veth: the agent
// never shapes a device that is not an instance's.
func containerVeth(nsPath string) (net.IP, netlink.Link, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, nil, fmt.Errorf("enforce: netns %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, nil, err
	}
	for _, l := range links {
		if l.Type() != "veth" {
			continue
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil || len(addrs) == 0 {
			continue
		}
		peer, err := netlink.LinkByIndex(l.Attrs().ParentIndex)
		if err != nil {
			return nil, nil, fmt.Errorf("enforce: host end of %s in %s: %w", l.Attrs().Name, nsPath, err)
		}
		if peer.Type() != "veth" {
			return nil, nil, fmt.Errorf("enforce: ifindex %d (%s) is a %s, not a veth: not touching it", l.Attrs().ParentIndex, peer.Attrs().Name, peer.Type())
		}
		return addrs[0].IP.To4(), peer, nil
	}
	return nil, nil, fmt.Errorf("enforce: no veth with an IPv4 address in %s", nsPath)
}
