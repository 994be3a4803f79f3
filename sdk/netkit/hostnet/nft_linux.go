//go:build linux

package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

const (
	netlinkRoute = unix.NETLINK_ROUTE
	mainTable    = unix.RT_TABLE_MAIN

	// iptables-nft's filter table and forward chain.
	iptTable   = "filter"
	iptForward = "FORWARD"
)

var (
	acceptPolicy = nftables.ChainPolicyAccept
	iptFilter    = &nftables.Table{Name: iptTable, Family: nftables.TableFamilyIPv4}
	iptFwdChain  = &nftables.Chain{Name: iptForward, Table: iptFilter}
)

// install adds the network's table and, in NAT mode, the accept rules in
// iptables-nft's FORWARD chain, in one batch: all of it or none.
func (e *env) install(cfg *Config, tag string, log *slog.Logger) error {
	hasIPT, err := e.queueInstall(cfg, tag)
	if err != nil {
		return err
	}
	if err := e.nft.Flush(); err != nil {
		return fmt.Errorf("hostnet: installing nftables table inet %s: %w", tag, err)
	}
	if hasIPT {
		log.Info("hostnet: iptables-nft FORWARD chain found; inserted accept rules for the subnet", "comment", tag)
	}
	return nil
}

// queueInstall queues what install sends, without sending it, and says
// whether it inserts rules into iptables-nft's FORWARD chain.
func (e *env) queueInstall(cfg *Config, tag string) (hasIPT bool, err error) {
	c := e.nft
	t := c.AddTable(&nftables.Table{Name: tag, Family: nftables.TableFamilyINet})
	fwd := c.AddChain(&nftables.Chain{
		Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &acceptPolicy,
	})
	from := ip4Match(offSaddr, cfg.Prefix, expr.CmpOpEq)
	to := ip4Match(offDaddr, cfg.Prefix, expr.CmpOpEq)
	rule := func(ch *nftables.Chain, parts ...[]expr.Any) {
		ex := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		}
		for _, p := range parts {
			ex = append(ex, p...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: ex})
	}
	if cfg.Bridge {
		// With br_netfilter loaded (Docker loads it), frames the bridge
		// passes between its ports also cross the IPv4 forward hook, in
		// and out through the bridge: VM to VM traffic, never routed, is
		// none of this table's business.
		rule(fwd, bridged(cfg.TAP), counted(accept()))
	}
	switch cfg.Mode {
	case NAT:
		post := c.AddChain(&nftables.Chain{
			Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &acceptPolicy,
		})
		rule(post, from, ip4Match(offDaddr, cfg.Prefix, expr.CmpOpNeq), counted(&expr.Masq{}))
		rule(fwd, from, counted(accept()))
		rule(fwd, to, ctEstablishedRelated(), counted(accept()))
		rule(fwd, to, counted(&expr.Verdict{Kind: expr.VerdictDrop}))

		if hasIPT, err = e.hasIPTablesForward(); err != nil {
			return false, err
		}
		if hasIPT {
			// InsertRule puts each at the top: the last inserted comes first.
			ud := userdata.AppendString(nil, userdata.TypeComment, tag)
			c.InsertRule(&nftables.Rule{Table: iptFilter, Chain: iptFwdChain, UserData: ud,
				Exprs: join(to, ctEstablishedRelated(), counted(accept()))})
			c.InsertRule(&nftables.Rule{Table: iptFilter, Chain: iptFwdChain, UserData: ud,
				Exprs: join(from, counted(accept()))})
		}
	case Isolated:
		rule(fwd, from, counted(&expr.Verdict{Kind: expr.VerdictDrop}))
		rule(fwd, to, counted(&expr.Verdict{Kind: expr.VerdictDrop}))
		if cfg.Bridge {
			if hasIPT, err = e.hasIPTablesForward(); err != nil {
				return false, err
			}
			if hasIPT {
				// A drop policy there would cut VM from VM once
				// br_netfilter hands bridged frames to it.
				c.InsertRule(&nftables.Rule{Table: iptFilter, Chain: iptFwdChain,
					UserData: userdata.AppendString(nil, userdata.TypeComment, tag),
					Exprs:    join(bridged(cfg.TAP), counted(accept()))})
			}
		}
	}
	return hasIPT, nil
}

// hasIPTablesForward reports whether iptables-nft's table ip filter has a
// FORWARD chain.
func (e *env) hasIPTablesForward() (bool, error) {
	chains, err := e.nft.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, fmt.Errorf("hostnet: listing nftables chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == iptTable && ch.Name == iptForward {
			return true, nil
		}
	}
	return false, nil
}

// removeTable deletes the inet table name if it exists.
func (e *env) removeTable(name string) (bool, error) {
	return e.removeTableOf(nftables.TableFamilyINet, name)
}

// removeTableOf deletes the table name of family if it exists.
func (e *env) removeTableOf(family nftables.TableFamily, name string) (bool, error) {
	tables, err := e.nft.ListTablesOfFamily(family)
	if err != nil {
		return false, fmt.Errorf("listing nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name != name {
			continue
		}
		e.nft.DelTable(t)
		if err := e.nft.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("removing nftables table %s %s: %w", familyName(family), name, err)
		}
		return true, nil
	}
	return false, nil
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyIPv4:
		return "ip"
	}
	return fmt.Sprintf("family %d", f)
}

// removeRules deletes the rules commented tag from iptables-nft's FORWARD
// chain and says how many there were.
func (e *env) removeRules(tag string) (int, error) {
	ok, err := e.hasIPTablesForward()
	if err != nil || !ok {
		return 0, err
	}
	handles, err := e.taggedRules(iptFilter, iptForward, tag)
	if err != nil {
		return 0, err
	}
	if len(handles) == 0 {
		return 0, nil
	}
	for _, h := range handles {
		if err := e.nft.DelRule(&nftables.Rule{Table: iptFilter, Chain: iptFwdChain, Handle: h}); err != nil {
			return 0, err
		}
	}
	if err := e.nft.Flush(); err != nil {
		return 0, fmt.Errorf("removing our rules from ip filter FORWARD: %w", err)
	}
	return len(handles), nil
}

// taggedRules lists the handles of the rules in table t, chain whose
// comment is tag. It reads only handles and user data, so rules of other
// tools (xtables matches and all) never fail the listing.
func (e *env) taggedRules(t *nftables.Table, chain, tag string) ([]uint64, error) {
	conn, err := mnl.Dial(unix.NETLINK_NETFILTER, &mnl.Config{NetNS: e.netNS()})
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer conn.Close()
	attrs, err := mnl.MarshalAttributes([]mnl.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(t.Name + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
	})
	if err != nil {
		return nil, err
	}
	msgs, err := conn.Execute(mnl.Message{
		Header: mnl.Header{
			Type:  mnl.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: mnl.Request | mnl.Dump,
		},
		Data: append([]byte{byte(t.Family), unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("listing rules of %s %s: %w", t.Name, chain, err)
	}
	var handles []uint64
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := mnl.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		ad.ByteOrder = binary.BigEndian
		var (
			h  uint64
			ud []byte
		)
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_HANDLE:
				h = ad.Uint64()
			case unix.NFTA_RULE_USERDATA:
				ud = ad.Bytes()
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		if h != 0 && commentOf(ud) == tag {
			handles = append(handles, h)
		}
	}
	return handles, nil
}

// commentOf finds the comment in nftables rule user data (libnftnl's
// TLVs), tolerating anything malformed.
func commentOf(ud []byte) string {
	for len(ud) >= 2 {
		typ, n := userdata.Type(ud[0]), int(ud[1])
		if len(ud) < 2+n {
			return ""
		}
		if typ == userdata.TypeComment {
			v := ud[2 : 2+n]
			if len(v) > 0 && v[len(v)-1] == 0 {
				v = v[:len(v)-1]
			}
			return string(v)
		}
		ud = ud[2+n:]
	}
	return ""
}

const (
	offSaddr = 12
	offDaddr = 16
)

// ip4Match compares the IPv4 address at offset of the network header with
// p, as iptables-nft writes `-s p`: load, mask, compare.
func ip4Match(offset uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	a := p.Masked().Addr().As4()
	ex := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}}
	if p.Bits() < 32 {
		ex = append(ex, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: net.CIDRMask(p.Bits(), 32), Xor: []byte{0, 0, 0, 0}})
	}
	return append(ex, &expr.Cmp{Op: op, Register: 1, Data: a[:]})
}

// ctEstablishedRelated is `ct state established,related`.
func ctEstablishedRelated() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func accept() expr.Any { return &expr.Verdict{Kind: expr.VerdictAccept} }

// bridged is `iifname br oifname br`: a frame the bridge passes between
// two of its ports, as br_netfilter shows it to the IP hooks.
func bridged(br string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(br)},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(br)},
	}
}

// ifname is an interface name as nftables compares it: 16 bytes, zero
// padded.
func ifname(name string) []byte {
	b := make([]byte, 16)
	copy(b, name)
	return b
}

// counted puts a counter before the statement, so `nft list ruleset`
// shows what each rule did.
func counted(e expr.Any) []expr.Any { return []expr.Any{&expr.Counter{}, e} }

func join(parts ...[]expr.Any) []expr.Any {
	var ex []expr.Any
	for _, p := range parts {
		ex = append(ex, p...)
	}
	return ex
}
