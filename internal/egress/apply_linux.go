package egress

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TableName is the inet table the guard owns. Nothing else may put rules
// in it: Apply replaces it whole.
const TableName = "kars"

// Apply replaces the guard table in the network namespace referred to by
// netnsFD (or the caller's own namespace when netnsFD < 0) with rules. The
// replacement is one netlink transaction: there is no moment in which the
// old table is gone and the new one not yet in place.
func Apply(netnsFD int, rules []Rule) error {
	c := conn(netnsFD)
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	if err := replaceTable(c, t); err != nil {
		return fmt.Errorf("egress: %w", err)
	}
	policy := nftables.ChainPolicyAccept
	chains := map[Chain]*nftables.Chain{}
	chainFor := func(k Chain) *nftables.Chain {
		if ch, ok := chains[k]; ok {
			return ch
		}
		spec := &nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &policy}
		switch k {
		case ChainNAT:
			// Before the filter chain, which then sees the redirected
			// destination (127.0.0.1 and the router's port).
			spec = &nftables.Chain{Name: "nat_output", Table: t, Type: nftables.ChainTypeNAT,
				Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &policy}
		case ChainInput:
			spec = &nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
				Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &policy}
		}
		chains[k] = c.AddChain(spec)
		return chains[k]
	}
	chainFor(ChainOutput)
	for i, r := range rules {
		exprs, err := r.exprs()
		if err != nil {
			return fmt.Errorf("egress: rule %d (%s): %w", i, r, err)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: chainFor(r.Chain), Exprs: exprs, UserData: userdata.AppendString(nil, userdata.TypeComment, r.Comment)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("egress: install table inet %s: %w", TableName, err)
	}
	return nil
}

// replaceTable queues the creation of t in c's batch, preceded by the
// deletion of an existing table of that name. Deleting waits for an RCU
// grace period in the kernel (tens of milliseconds on a busy machine), so
// it is queued only when there is something to delete; either way the
// batch commits as one transaction.
func replaceTable(c *nftables.Conn, t *nftables.Table) error {
	tables, err := c.ListTablesOfFamily(t.Family)
	if err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	for _, old := range tables {
		if old.Name == t.Name {
			c.DelTable(t)
			break
		}
	}
	c.AddTable(t)
	return nil
}

// ReplaceTable exposes replaceTable to other kars packages that own their
// own nftables tables (the local substrate's host NAT table).
func ReplaceTable(c *nftables.Conn, t *nftables.Table) error { return replaceTable(c, t) }

// Remove deletes the guard table; a missing table is not an error.
func Remove(netnsFD int) error {
	c := conn(netnsFD)
	c.DelTable(&nftables.Table{Name: TableName, Family: nftables.TableFamilyINet})
	if err := c.Flush(); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("egress: remove table inet %s: %w", TableName, err)
	}
	return nil
}

func conn(netnsFD int) *nftables.Conn {
	var opts []nftables.ConnOption
	if netnsFD >= 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFD))
	}
	c, _ := nftables.New(opts...) // cannot fail without AsLasting
	return c
}

// exprs translates r into nftables expressions, matching in the order a
// human would write the rule.
func (r Rule) exprs() ([]expr.Any, error) {
	var e []expr.Any
	if r.Chain != ChainInput {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(r.UID)},
		)
	}
	if r.InIface != "" {
		if len(r.InIface) >= unix.IFNAMSIZ {
			return nil, fmt.Errorf("interface name %q too long", r.InIface)
		}
		name := make([]byte, unix.IFNAMSIZ)
		copy(name, r.InIface)
		e = append(e, &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name})
	}
	if r.Established {
		e = append(e,
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
				Xor:  binaryutil.NativeEndian.PutUint32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		)
	}
	if r.OutIface != "" {
		if len(r.OutIface) >= unix.IFNAMSIZ {
			return nil, fmt.Errorf("interface name %q too long", r.OutIface)
		}
		name := make([]byte, unix.IFNAMSIZ)
		copy(name, r.OutIface)
		e = append(e, &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name})
	}
	switch r.Family {
	case IPv4:
		e = append(e, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}})
	case IPv6:
		e = append(e, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}})
	}
	if r.Daddr.IsValid() {
		switch {
		case r.Family == IPv4 && r.Daddr.Is4():
			e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4})
		case r.Family == IPv6 && r.Daddr.Is6():
			e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16})
		default:
			return nil, fmt.Errorf("destination %s needs a matching family", r.Daddr)
		}
		e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: r.Daddr.AsSlice()})
	}
	for _, p := range r.NotDaddr {
		if r.Family != IPv4 || !p.Addr().Is4() {
			return nil, fmt.Errorf("excluded destination %s needs the IPv4 family", p)
		}
		mask := net.CIDRMask(p.Bits(), 32)
		e = append(e,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: p.Masked().Addr().AsSlice()},
		)
	}
	switch r.Proto {
	case TCP:
		e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}})
	case UDP:
		e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}})
	case ICMP:
		e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}})
	case ICMPv6:
		e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}})
	}
	if r.Dport != 0 {
		if r.Proto == AnyProto {
			return nil, fmt.Errorf("a destination port needs a protocol")
		}
		e = append(e,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(r.Dport)},
		)
	}
	e = append(e, &expr.Counter{})
	switch r.Verdict {
	case Accept:
		e = append(e, &expr.Verdict{Kind: expr.VerdictAccept})
	case RejectReset:
		if r.Proto != TCP {
			return nil, fmt.Errorf("a TCP reset needs a TCP match")
		}
		e = append(e, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
	case RejectAdminProhibited:
		e = append(e, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED})
	case Redirect:
		if r.Chain != ChainNAT || r.RedirectPort == 0 || (r.Proto != TCP && r.Proto != UDP) {
			return nil, fmt.Errorf("a redirect needs the NAT chain, a port and TCP or UDP")
		}
		e = append(e,
			&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(r.RedirectPort)},
			&expr.Redir{RegisterProtoMin: 1},
		)
	}
	if r.Chain == ChainNAT && r.Verdict != Redirect {
		return nil, fmt.Errorf("the NAT chain only redirects")
	}
	return e, nil
}
