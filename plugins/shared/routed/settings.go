package routed

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"strconv"
	"time"
)

// Addressing is a network's layout, from the plugin's settings.
type Addressing struct {
	Prefix     netip.Prefix
	Gateway    netip.Addr // the first host address, .1 of a /24
	Start, End netip.Addr // the DHCP range
	LeaseTime  time.Duration
	MTU        int
}

// Setting keys shared by both networks; the address keys carry the
// network's KeyPrefix ("" for shared, "host_" for host).
const (
	KeyStart     = "start_address"
	KeyEnd       = "end_address"
	KeyMask      = "subnet_mask"
	KeyLeaseTime = "lease_time"
	KeyMTU       = "mtu"
)

// Defaults of the keys that are not per network (anka's own defaults).
const (
	DefaultLeaseTime = 86400 * time.Second
	DefaultMTU       = 1500
	maxMTU           = 65520
	minMTU           = 576
	maxLease         = (1<<32 - 1) * time.Second
)

// ParseAddressing reads the layout from settings (the core's resolved
// configuration), with defaults for keys it does not carry. The errors
// name the key and say what is wrong, as the core would.
func ParseAddressing(settings map[string]string, n *Network) (Addressing, error) {
	get := func(key, def string) (string, string) {
		if v, ok := settings[key]; ok && v != "" {
			return key, v
		}
		return key, def
	}
	var a Addressing
	ks, vs := get(n.KeyPrefix+KeyStart, n.DefaultStart)
	ke, ve := get(n.KeyPrefix+KeyEnd, n.DefaultEnd)
	km, vm := get(n.KeyPrefix+KeyMask, n.DefaultMask)
	var err error
	if a.Start, err = parseIPv4(ks, vs); err != nil {
		return a, err
	}
	if a.End, err = parseIPv4(ke, ve); err != nil {
		return a, err
	}
	mask, err := parseIPv4(km, vm)
	if err != nil {
		return a, err
	}
	m := binary.BigEndian.Uint32(mask.AsSlice())
	ones := bits.LeadingZeros32(^m)
	if m<<ones != 0 || ones < 8 || ones > 30 {
		return a, fmt.Errorf("%s %s is not a netmask from 255.0.0.0 to 255.255.255.252", km, vm)
	}
	a.Prefix = netip.PrefixFrom(a.Start, ones).Masked()
	a.Gateway = a.Prefix.Addr().Next()
	bcast := broadcast(a.Prefix)
	switch {
	case !a.Prefix.Contains(a.End):
		return a, fmt.Errorf("%s %s and %s %s are not in one subnet under %s %s: put both in %s or widen the mask", ks, vs, ke, ve, km, vm, a.Prefix)
	case a.Start.Compare(a.End) > 0:
		return a, fmt.Errorf("%s %s is after %s %s", ks, vs, ke, ve)
	case a.Start.Compare(a.Gateway) <= 0:
		return a, fmt.Errorf("%s %s is the network address or the gateway %s of %s: start the range at %s or later", ks, vs, a.Gateway, a.Prefix, a.Gateway.Next())
	case a.End == bcast:
		return a, fmt.Errorf("%s %s is the broadcast address of %s: end the range at %s or earlier", ke, ve, a.Prefix, bcast.Prev())
	}

	kl, vl := get(KeyLeaseTime, "")
	a.LeaseTime = DefaultLeaseTime
	if vl != "" {
		if a.LeaseTime, err = parseLease(vl); err != nil {
			return a, fmt.Errorf("%s %q %v", kl, vl, err)
		}
	}
	kt, vt := get(KeyMTU, "")
	a.MTU = DefaultMTU
	if vt != "" {
		a.MTU, err = strconv.Atoi(vt)
		if err != nil || a.MTU < minMTU || a.MTU > maxMTU {
			return a, fmt.Errorf("%s %q is not a number from %d to %d", kt, vt, minMTU, maxMTU)
		}
	}
	return a, nil
}

func parseIPv4(key, v string) (netip.Addr, error) {
	a, err := netip.ParseAddr(v)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%s %q is not an IPv4 address", key, v)
	}
	return a, nil
}

// parseLease takes what the core's lease_time takes: seconds or a Go
// duration, whole seconds, at least a minute.
func parseLease(v string) (time.Duration, error) {
	var d time.Duration
	if n, err := strconv.ParseUint(v, 10, 64); err == nil {
		if n > uint64(maxLease/time.Second) {
			return 0, fmt.Errorf("is longer than DHCP allows")
		}
		d = time.Duration(n) * time.Second
	} else if d, err = time.ParseDuration(v); err != nil {
		return 0, fmt.Errorf("is not a duration like 24h or 86400 (seconds)")
	}
	switch {
	case d < time.Minute:
		return 0, fmt.Errorf("is shorter than 60s")
	case d > maxLease:
		return 0, fmt.Errorf("is longer than DHCP allows")
	case d%time.Second != 0:
		return 0, fmt.Errorf("is not whole seconds")
	}
	return d, nil
}

func broadcast(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	u := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], u)
	return netip.AddrFrom4(a)
}
