// Package arp answers ARP for the addresses a plugin owns: the gateway,
// and any virtual address it serves, none of which has a kernel
// interface behind it on the switch. Guests cannot reach the gateway
// until it answers, so this runs on every frame and never allocates.
package arp

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// ReplyLen is the size of a reply: an untagged Ethernet header and an
// ARP packet for IPv4 over Ethernet, without padding (the port pads if its
// medium needs it).
const ReplyLen = 14 + 28

const (
	etherTypeARP = 0x0806
	opRequest    = 1
	opReply      = 2
)

// Responder holds the owned addresses and answers requests for them. The
// zero value owns nothing and is ready to use; it is safe for concurrent
// use. Reads take no lock: the set is replaced, never changed, so the
// switch never waits for a plugin adding an address.
type Responder struct {
	mu    sync.Mutex // serialises writers
	owned atomic.Pointer[map[[4]byte][6]byte]
}

// Add makes r answer for ip with mac, replacing an earlier MAC for ip.
func (r *Responder) Add(ip netip.Addr, mac net.HardwareAddr) error {
	if !ip.Is4() {
		return fmt.Errorf("arp: %v is not an IPv4 address", ip)
	}
	if len(mac) != 6 || mac[0]&1 != 0 || [6]byte(mac) == ([6]byte{}) {
		return fmt.Errorf("arp: %v is not a unicast Ethernet address", mac)
	}
	r.update(func(m map[[4]byte][6]byte) { m[ip.As4()] = [6]byte(mac) })
	return nil
}

// Remove stops answering for ip.
func (r *Responder) Remove(ip netip.Addr) {
	if ip.Is4() {
		r.update(func(m map[[4]byte][6]byte) { delete(m, ip.As4()) })
	}
}

// Lookup returns the MAC r answers with for ip.
func (r *Responder) Lookup(ip netip.Addr) (net.HardwareAddr, bool) {
	if !ip.Is4() {
		return nil, false
	}
	mac, ok := r.lookup(ip.As4())
	if !ok {
		return nil, false
	}
	return net.HardwareAddr(mac[:]), true
}

func (r *Responder) lookup(ip [4]byte) ([6]byte, bool) {
	m := r.owned.Load()
	if m == nil {
		return [6]byte{}, false
	}
	mac, ok := (*m)[ip]
	return mac, ok
}

func (r *Responder) update(f func(map[[4]byte][6]byte)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	next := make(map[[4]byte][6]byte)
	if cur := r.owned.Load(); cur != nil {
		for k, v := range *cur {
			next[k] = v
		}
	}
	f(next)
	r.owned.Store(&next)
}

// HandleFrame answers frame if it is an ARP request (or probe) for an
// owned address, writing the reply into reply and returning its length.
// ok is false, and reply untouched, for everything else: other frames,
// other targets, requests sent to another MAC, requests from a broadcast
// or zero sender, our own requests, and a reply buffer shorter than
// ReplyLen. A gratuitous request claiming an owned address is answered
// too, which tells the claimant the address is taken.
func (r *Responder) HandleFrame(frame, reply []byte) (n int, ok bool) {
	if len(frame) < ReplyLen || len(reply) < ReplyLen ||
		binary.BigEndian.Uint16(frame[12:]) != etherTypeARP {
		return 0, false
	}
	a := frame[14:]
	// Ethernet, IPv4, 6-byte and 4-byte addresses, a request.
	if binary.BigEndian.Uint16(a[0:]) != 1 || binary.BigEndian.Uint16(a[2:]) != 0x0800 ||
		a[4] != 6 || a[5] != 4 || binary.BigEndian.Uint16(a[6:]) != opRequest {
		return 0, false
	}
	sha, spa, tpa := a[8:14], a[14:18], a[24:28]
	mac, owned := r.lookup([4]byte(tpa))
	if !owned {
		return 0, false
	}
	if sha[0]&1 != 0 || [6]byte(sha) == ([6]byte{}) || [6]byte(sha) == mac {
		return 0, false
	}
	if dst := [6]byte(frame[0:6]); dst != [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} && dst != mac {
		return 0, false
	}
	// Copy the request's addresses before writing: reply may be frame.
	var reqSHA [6]byte
	var reqSPA [4]byte
	copy(reqSHA[:], sha)
	copy(reqSPA[:], spa)
	target := [4]byte(tpa)

	copy(reply[0:6], reqSHA[:])
	copy(reply[6:12], mac[:])
	binary.BigEndian.PutUint16(reply[12:], etherTypeARP)
	p := reply[14:ReplyLen]
	binary.BigEndian.PutUint16(p[0:], 1)
	binary.BigEndian.PutUint16(p[2:], 0x0800)
	p[4], p[5] = 6, 4
	binary.BigEndian.PutUint16(p[6:], opReply)
	copy(p[8:14], mac[:])
	copy(p[14:18], target[:])
	copy(p[18:24], reqSHA[:])
	copy(p[24:28], reqSPA[:]) // 0.0.0.0 for a probe: RFC 5227 defends that way
	return ReplyLen, true
}
