package dnsfwd

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"strings"
)

// DefaultResolvConf is read when Config.Upstreams is empty and
// Config.ResolvConf is "".
const DefaultResolvConf = "/etc/resolv.conf"

// ParseResolvConf returns the nameservers of a resolv.conf file as
// "ip:port" (port 53, IPv6 in brackets, zones kept), in file order and
// without duplicates. Comments (# or ;, whole-line or trailing) and every
// other keyword (search, domain, options, sortlist) are ignored, as are
// nameserver lines whose address does not parse; glibc skips those too.
func ParseResolvConf(data []byte) []string {
	return parseResolvConf(data, 53)
}

// resolvConfPort is the port of resolv.conf nameservers; tests change it
// to reach fake upstreams on unprivileged ports.
var resolvConfPort uint16 = 53

func parseResolvConf(data []byte, port uint16) []string {
	var out []string
	seen := make(map[string]bool)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		addr, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue
		}
		up := netip.AddrPortFrom(addr, port).String()
		if !seen[up] {
			seen[up] = true
			out = append(out, up)
		}
	}
	return out
}

// normalizeUpstream accepts "ip:port", "[ipv6]:port" or a bare address
// (port 53) and returns the canonical "ip:port".
func normalizeUpstream(s string) (string, error) {
	s = strings.TrimSpace(s)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return "", fmt.Errorf("dnsfwd: upstream %q: port 0", s)
		}
		return ap.String(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 53).String(), nil
	}
	return "", fmt.Errorf("dnsfwd: upstream %q is not an ip:port (for example 1.1.1.1:53 or [2606:4700::1111]:53)", s)
}
