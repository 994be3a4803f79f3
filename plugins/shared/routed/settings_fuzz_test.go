package routed_test

import (
	"strings"
	"testing"

	"github.com/anka-net/anka/core/config"
	"github.com/anka-net/anka/plugins/shared/routed"
)

// FuzzAddressing feeds arbitrary network settings to both readers: the
// core's configuration check and the plugin's ParseAddressing. Whatever
// the core accepts (and so hands a plugin), the plugin accepts and reads
// the same way; a plugin's refusal names the key at fault.
func FuzzAddressing(f *testing.F) {
	f.Add("192.168.64.2", "192.168.64.254", "255.255.255.0", "86400", "1500")
	f.Add("10.0.0.10", "10.0.3.200", "255.255.252.0", "24h", "9000")
	f.Add("172.16.0.2", "172.16.0.2", "255.255.255.252", "60s", "576")
	f.Add("192.168.64.1", "192.168.64.255", "255.255.255.0", "59", "65521")
	f.Add("192.168.64.2", "192.168.65.9", "255.255.254.0", "1h0m0.5s", "1500")
	f.Add("::1", "1.2.3", "255.0.255.0", "4294967296", "x")
	shared := &routed.Network{DefaultStart: "192.168.64.2", DefaultEnd: "192.168.64.254", DefaultMask: "255.255.255.0"}
	f.Fuzz(func(t *testing.T, start, end, mask, lease, mtu string) {
		vals := map[string]string{"start_address": start, "end_address": end, "subnet_mask": mask, "lease_time": lease, "mtu": mtu}
		var entries []config.Entry
		for k, v := range vals {
			entries = append(entries, config.Entry{Key: k, Value: v, Source: config.SourceUser, File: "/u.yaml"})
		}
		a, perr := routed.ParseAddressing(vals, shared)
		if perr != nil {
			named := false
			for k := range vals {
				named = named || strings.Contains(perr.Error(), k)
			}
			if !named {
				t.Fatalf("plugin error names no key: %v", perr)
			}
		}
		c, err := config.FromSnapshot(config.Snapshot{Entries: entries})
		if err != nil {
			return
		}
		a, perr = routed.ParseAddressing(c.Settings(), shared)
		if perr != nil {
			t.Fatalf("the core accepted %v, the plugin refuses: %v", vals, perr)
		}
		if a.Prefix != c.Shared.Prefix || a.Start != c.Shared.Start || a.End != c.Shared.End || a.Gateway != c.Shared.Gateway || a.LeaseTime != c.LeaseTime || a.MTU != c.MTU {
			t.Fatalf("core and plugin disagree on %v:\ncore   %v %v-%v gw %v lease %v mtu %d\nplugin %v %v-%v gw %v lease %v mtu %d", vals,
				c.Shared.Prefix, c.Shared.Start, c.Shared.End, c.Shared.Gateway, c.LeaseTime, c.MTU,
				a.Prefix, a.Start, a.End, a.Gateway, a.LeaseTime, a.MTU)
		}
	})
}
