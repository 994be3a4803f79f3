//go:build linux

package hostnet

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables/userdata"
)

func TestNormalize(t *testing.T) {
	ok := Config{Name: "shared", Prefix: netip.MustParsePrefix("192.168.64.0/24"), Gateway: netip.MustParseAddr("192.168.64.1")}
	tests := []struct {
		name  string
		edit  func(*Config)
		want  string // error substring; "" means valid
		check func(*testing.T, Config)
	}{
		{name: "defaults", check: func(t *testing.T, c Config) {
			if c.TAP != "anka-shared0" || c.MTU != 1500 || c.Mode != NAT {
				t.Errorf("got TAP %q MTU %d mode %v", c.TAP, c.MTU, c.Mode)
			}
		}},
		{name: "unmasked prefix", edit: func(c *Config) { c.Prefix = netip.MustParsePrefix("192.168.64.77/24") },
			check: func(t *testing.T, c Config) {
				if c.Prefix.String() != "192.168.64.0/24" {
					t.Errorf("prefix %v", c.Prefix)
				}
			}},
		{name: "custom TAP", edit: func(c *Config) { c.Name = "averyveryverylongname"; c.TAP = "vmnet1" }},
		{name: "no name", edit: func(c *Config) { c.Name = "" }, want: "needs a name"},
		{name: "bad name", edit: func(c *Config) { c.Name = "a b" }, want: "letters, digits"},
		{name: "TAP too long", edit: func(c *Config) { c.Name = "sharednet1" }, want: "longer than 15"},
		{name: "bad TAP", edit: func(c *Config) { c.TAP = "a/b" }, want: "not a usable interface name"},
		{name: "mode", edit: func(c *Config) { c.Mode = 7 }, want: "unknown mode"},
		{name: "MTU low", edit: func(c *Config) { c.MTU = 20 }, want: "MTU 20"},
		{name: "MTU high", edit: func(c *Config) { c.MTU = 65521 }, want: "MTU 65521"},
		{name: "MTU max", edit: func(c *Config) { c.MTU = 65520 }},
		{name: "IPv6", edit: func(c *Config) { c.Prefix = netip.MustParsePrefix("fd00::/64") }, want: "not an IPv4 prefix"},
		{name: "no prefix", edit: func(c *Config) { c.Prefix = netip.Prefix{} }, want: "not an IPv4 prefix"},
		{name: "too small", edit: func(c *Config) { c.Prefix = netip.MustParsePrefix("192.168.64.0/31") }, want: "prefix length"},
		{name: "loopback", edit: func(c *Config) {
			c.Prefix = netip.MustParsePrefix("127.0.0.0/24")
			c.Gateway = netip.MustParseAddr("127.0.0.1")
		}, want: "reserved"},
		{name: "gateway outside", edit: func(c *Config) { c.Gateway = netip.MustParseAddr("192.168.65.1") }, want: "not in subnet"},
		{name: "gateway missing", edit: func(c *Config) { c.Gateway = netip.Addr{} }, want: "not in subnet"},
		{name: "gateway network", edit: func(c *Config) { c.Gateway = netip.MustParseAddr("192.168.64.0") }, want: "network or broadcast"},
		{name: "gateway broadcast", edit: func(c *Config) { c.Gateway = netip.MustParseAddr("192.168.64.255") }, want: "network or broadcast"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			if tt.edit != nil {
				tt.edit(&c)
			}
			err := c.normalize()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && err == nil:
				t.Fatalf("no error, want one containing %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestCommentOf(t *testing.T) {
	tests := []struct {
		ud   []byte
		want string
	}{
		{userdata.AppendString(nil, userdata.TypeComment, "anka-shared"), "anka-shared"},
		{userdata.AppendString(userdata.AppendUint32(nil, userdata.TypeEbtablesPolicy, 1), userdata.TypeComment, "x"), "x"},
		{nil, ""},
		{[]byte{0}, ""},
		{[]byte{0, 200, 'a'}, ""}, // length past the end
		{[]byte{1, 0, 0, 2, 'a', 0}, "a"},
	}
	for _, tt := range tests {
		if got := commentOf(tt.ud); got != tt.want {
			t.Errorf("commentOf(%v) = %q, want %q", tt.ud, got, tt.want)
		}
	}
}

func FuzzCommentOf(f *testing.F) {
	f.Add(userdata.AppendString(nil, userdata.TypeComment, "anka-shared"))
	f.Fuzz(func(t *testing.T, b []byte) { commentOf(b) })
}
