package sdk

import (
	"net"
	"slices"
)

// CheckMACs refuses a card whose internal or dynamic MAC no NIC can have
// (malformed, multicast, all zeros); an empty one is allowed, since the
// core may validate a card before its pool assigns the dynamic MAC.
func (c Card) CheckMACs() error {
	if err := checkMAC("internal", c.InternalMAC); err != nil {
		return err
	}
	return checkMAC("dynamic", c.DynamicMAC)
}

func checkMAC(what, s string) error {
	if s == "" {
		return nil
	}
	m, err := net.ParseMAC(s)
	switch {
	case err != nil || len(m) != 6:
		return Errorf(CodeInvalid, "%s MAC %q is not an Ethernet address like 02:a4:6b:00:00:01", what, s)
	case m[0]&1 != 0:
		return Errorf(CodeInvalid, "%s MAC %s is a multicast address; a NIC needs a unicast one", what, s)
	case string(m) == "\x00\x00\x00\x00\x00\x00":
		return Errorf(CodeInvalid, "%s MAC %s is all zeros", what, s)
	}
	return nil
}

// GuestMAC is the MAC to give the VM's NIC: the internal one when the
// card has it (-m), else the dynamic one.
func (c Card) GuestMAC() string {
	if c.InternalMAC != "" {
		return c.InternalMAC
	}
	return c.DynamicMAC
}

// MinMTU and MaxMTU bound AttachRequest.MTU (MaxMTU is QEMU's and passt's
// limit); DefaultMTU applies when it is zero.
const (
	MinMTU     = 68
	MaxMTU     = 65520
	DefaultMTU = 1500
)

// CheckDgram checks what every plugin handing out a datagram endpoint
// needs from an Attach request (a dynamic MAC, dgram offered, a run
// folder, an MTU in range) and returns the MTU to use.
func (r *AttachRequest) CheckDgram(typ string) (mtu int, err error) {
	if r.Card.DynamicMAC == "" {
		return 0, Errorf(CodeInvalid, "the card of VM %s has no dynamic MAC: the core assigns one before Attach", r.VM.Name)
	}
	if len(r.Endpoints) > 0 && !slices.Contains(r.Endpoints, EndpointDgram) {
		return 0, Errorf(CodeUnsupported, "type %s hands out dgram endpoints only; the runtime offered %v", typ, r.Endpoints)
	}
	if r.RunDir == "" {
		return 0, Errorf(CodeInvalid, "no run folder for the sockets of VM %s", r.VM.Name)
	}
	mtu = r.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}
	if mtu < MinMTU || mtu > MaxMTU {
		return 0, Errorf(CodeInvalid, "MTU %d is out of range: use %d to %d", mtu, MinMTU, MaxMTU)
	}
	return mtu, nil
}
