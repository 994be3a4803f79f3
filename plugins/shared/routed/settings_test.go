package routed

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseAddressing(t *testing.T) {
	shared := &Network{DefaultStart: "192.168.64.2", DefaultEnd: "192.168.64.254", DefaultMask: "255.255.255.0"}
	host := &Network{KeyPrefix: "host_", DefaultStart: "192.168.128.2", DefaultEnd: "192.168.128.254", DefaultMask: "255.255.255.0"}
	for _, c := range []struct {
		name     string
		n        *Network
		settings map[string]string
		want     Addressing
		err      string
	}{
		{name: "defaults", n: shared, want: Addressing{
			Prefix: netip.MustParsePrefix("192.168.64.0/24"), Gateway: netip.MustParseAddr("192.168.64.1"),
			Start: netip.MustParseAddr("192.168.64.2"), End: netip.MustParseAddr("192.168.64.254"), LeaseTime: 24 * time.Hour, MTU: 1500}},
		{name: "host keys", n: host, settings: map[string]string{"start_address": "10.0.0.2", "host_start_address": "192.168.128.100", "lease_time": "3600", "mtu": "65520"},
			want: Addressing{Prefix: netip.MustParsePrefix("192.168.128.0/24"), Gateway: netip.MustParseAddr("192.168.128.1"),
				Start: netip.MustParseAddr("192.168.128.100"), End: netip.MustParseAddr("192.168.128.254"), LeaseTime: time.Hour, MTU: 65520}},
		{name: "wide mask", n: shared, settings: map[string]string{"start_address": "10.77.1.10", "end_address": "10.77.2.20", "subnet_mask": "255.255.0.0", "lease_time": "90m"},
			want: Addressing{Prefix: netip.MustParsePrefix("10.77.0.0/16"), Gateway: netip.MustParseAddr("10.77.0.1"),
				Start: netip.MustParseAddr("10.77.1.10"), End: netip.MustParseAddr("10.77.2.20"), LeaseTime: 90 * time.Minute, MTU: 1500}},
		{name: "bad address", n: shared, settings: map[string]string{"start_address": "192.168.64"}, err: `start_address "192.168.64" is not an IPv4 address`},
		{name: "bad mask", n: shared, settings: map[string]string{"subnet_mask": "255.0.255.0"}, err: "subnet_mask 255.0.255.0 is not a netmask"},
		{name: "two subnets", n: shared, settings: map[string]string{"end_address": "192.168.65.10"}, err: "not in one subnet"},
		{name: "reversed", n: shared, settings: map[string]string{"start_address": "192.168.64.100", "end_address": "192.168.64.50"}, err: "is after end_address"},
		{name: "gateway in range", n: host, settings: map[string]string{"host_start_address": "192.168.128.1"}, err: "host_start_address 192.168.128.1 is the network address or the gateway"},
		{name: "broadcast", n: shared, settings: map[string]string{"end_address": "192.168.64.255"}, err: "broadcast address"},
		{name: "short lease", n: shared, settings: map[string]string{"lease_time": "30s"}, err: `lease_time "30s" is shorter than 60s`},
		{name: "MTU", n: shared, settings: map[string]string{"mtu": "70000"}, err: `mtu "70000" is not a number from 576 to 65520`},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseAddressing(c.settings, c.n)
			switch {
			case c.err != "":
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Errorf("%v; want an error containing %q", err, c.err)
				}
			case err != nil:
				t.Error(err)
			case got != c.want:
				t.Errorf("%+v\nwant %+v", got, c.want)
			}
		})
	}
}

func TestCheckRule(t *testing.T) {
	r, err := checkRule(sdkRule("ssh", "", "", 2222, 22))
	if err != nil || r.Protocol != "tcp" || r.HostIP != "0.0.0.0" {
		t.Errorf("%+v %v", r, err)
	}
	for _, c := range []struct {
		name, proto, ip string
		hp, gp          int
		want            string
	}{
		{"", "tcp", "", 1, 1, "needs a name"},
		{"a/b", "tcp", "", 1, 1, "needs a name"},
		{"x", "sctp", "", 1, 1, `protocol "sctp"`},
		{"x", "udp", "localhost", 1, 1, "not an IP address"},
		{"x", "udp", "", 0, 1, "host port 0"},
		{"x", "udp", "", 1, 70000, "guest port 70000"},
	} {
		if _, err := checkRule(sdkRule(c.name, c.proto, c.ip, c.hp, c.gp)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v; want %q", c, err, c.want)
		}
	}
	a, _ := checkRule(sdkRule("a", "tcp", "127.0.0.1", 80, 80))
	b, _ := checkRule(sdkRule("b", "tcp", "", 80, 80))
	u, _ := checkRule(sdkRule("u", "udp", "", 80, 80))
	o, _ := checkRule(sdkRule("o", "tcp", "127.0.0.2", 80, 80))
	if !overlaps(a, b) || overlaps(a, u) || overlaps(a, o) {
		t.Error("overlaps is wrong")
	}
}
