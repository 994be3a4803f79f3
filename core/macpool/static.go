package macpool

import (
	"net"
	"strings"

	"github.com/anka-net/anka/core/errs"
)

const staticExample = "52:54:00:12:34:56"

// ParseStaticMAC checks a user-given static internal MAC (`-m`). Only the
// two spellings people type are accepted (net.ParseMAC also takes dotted
// and 20-byte InfiniBand forms, which no VM card can use). Globally
// administered addresses are allowed: cloning a real machine's identity is
// a reason to set one. Multicast and all-zero are refused because no NIC
// may send from them.
func ParseStaticMAC(s string) (net.HardwareAddr, error) {
	s = strings.TrimSpace(s)
	if len(s) != 17 {
		return nil, badFormat(s)
	}
	sep := s[2]
	if sep != ':' && sep != '-' {
		return nil, badFormat(s)
	}
	hw := make(net.HardwareAddr, 6)
	for i := 0; i < 6; i++ {
		if i > 0 && s[3*i-1] != sep {
			return nil, badFormat(s)
		}
		hi, ok1 := unhex(s[3*i])
		lo, ok2 := unhex(s[3*i+1])
		if !ok1 || !ok2 {
			return nil, badFormat(s)
		}
		hw[i] = hi<<4 | lo
	}
	switch {
	case isBroadcast(hw):
		return nil, errs.Invalidf("MAC address %s is the broadcast address; a network card needs a unicast MAC (first octet even), e.g. %s", hw, staticExample)
	case hw[0]&0x01 != 0:
		return nil, errs.Invalidf("MAC address %s is multicast (bit 0x01 of the first octet is set); a network card needs a unicast MAC (first octet even), e.g. %s", hw, staticExample)
	case isZero(hw):
		return nil, errs.Invalidf("MAC address %s is all zeros, which no network card may use; give a unicast MAC, e.g. %s", hw, staticExample)
	}
	return hw, nil
}

func badFormat(s string) error {
	return errs.Invalidf("invalid MAC address %q: give six two-digit hex bytes separated by ':' or '-', e.g. %s or %s",
		s, staticExample, strings.ReplaceAll(staticExample, ":", "-"))
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func isBroadcast(hw net.HardwareAddr) bool {
	for _, b := range hw {
		if b != 0xff {
			return false
		}
	}
	return true
}

func isZero(hw net.HardwareAddr) bool {
	for _, b := range hw {
		if b != 0 {
			return false
		}
	}
	return true
}
