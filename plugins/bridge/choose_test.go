package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// fakeIf is an interface in a fake sysfs.
type fakeIf struct {
	typ   int
	wifi  string // "wireless", "phy80211" or ""
	flags string
	oper  string
}

var (
	ethUp = fakeIf{typ: 1, flags: "0x1003", oper: "up"}
	fakes = map[string]fakeIf{
		"eth0":    ethUp,
		"br0":     {typ: 1, flags: "0x1003", oper: "up"},
		"bond0":   {typ: 1, flags: "0x1403", oper: "up"},
		"dummy0":  {typ: 1, flags: "0x83", oper: "unknown"},
		"wlan0":   {typ: 1, wifi: "wireless", flags: "0x1003", oper: "up"},
		"wlp2s0":  {typ: 1, wifi: "phy80211", flags: "0x1003", oper: "up"},
		"lo":      {typ: 772, flags: "0x9", oper: "unknown"},
		"tun0":    {typ: 65534, flags: "0x1091", oper: "unknown"},
		"down0":   {typ: 1, flags: "0x1002", oper: "down"},
		"nolink0": {typ: 1, flags: "0x1003", oper: "down"},
	}
	usableFakes = "usable interfaces: bond0, br0, dummy0, eth0"
)

// fakeHost is a sysfs root with ifs and a routing table whose default
// routes go through defaults, lowest metric first.
func fakeHost(t *testing.T, ifs map[string]fakeIf, defaults ...string) hostView {
	t.Helper()
	root := t.TempDir()
	for name, f := range ifs {
		dir := filepath.Join(root, "class", "net", name)
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "type"), []byte(fmt.Sprintf("%d\n", f.typ)), 0o644)
		os.WriteFile(filepath.Join(dir, "flags"), []byte(f.flags+"\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "operstate"), []byte(f.oper+"\n"), 0o644)
		switch f.wifi {
		case "wireless":
			os.Mkdir(filepath.Join(dir, "wireless"), 0o755)
		case "phy80211":
			os.Symlink("../../ieee80211/phy0", filepath.Join(dir, "phy80211"))
		}
	}
	route := "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
		"eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
	for i, d := range defaults {
		route += fmt.Sprintf("%s\t00000000\t0100000A\t0003\t0\t0\t%d\t00000000\t0\t0\t0\n", d, 100*(i+1))
	}
	rf := filepath.Join(root, "route")
	os.WriteFile(rf, []byte(route), 0o644)
	return hostView{sysfs: root, route: rf}
}

func origin(v, from string) map[string]string {
	return map[string]string{settingKey: v, sdk.OriginKey(settingKey): from}
}

// TestChoose: the card's -b beats the setting of the call, which beats
// the one at launch, which beats the default route; "auto" and "" at any
// level mean the default route's interface. The reason names the layer.
func TestChoose(t *testing.T) {
	h := fakeHost(t, fakes, "br0", "eth0")
	for _, c := range []struct {
		name         string
		card         string
		call, launch map[string]string
		want         string
	}{
		{"card beats everything", "eth0", origin("bond0", "flag --bridge-name"), origin("br0", "system config /etc/anka/config.yaml"), "eth0 (card -b)"},
		{"flag", "", origin("bond0", "flag --bridge-name"), nil, "bond0 (flag --bridge-name)"},
		{"env", "", origin("bond0", "env ANKA_BRIDGE_NAME"), nil, "bond0 (env ANKA_BRIDGE_NAME)"},
		{"user config", "", origin("dummy0", "user config /root/.config/anka/config.yaml"), nil, "dummy0 (user config /root/.config/anka/config.yaml)"},
		{"the call beats launch", "", origin("bond0", "env ANKA_BRIDGE_NAME"), origin("eth0", "system config /etc/anka/config.yaml"), "bond0 (env ANKA_BRIDGE_NAME)"},
		{"launch when the call has none", "", map[string]string{"mtu": "1500"}, origin("eth0", "system config /etc/anka/config.yaml"), "eth0 (system config /etc/anka/config.yaml)"},
		{"no origin", "", map[string]string{settingKey: "eth0"}, nil, "eth0 (setting bridge_name)"},
		{"nothing: automatic", "", nil, nil, "br0 (automatic: default route)"},
		{"built-in default: automatic", "", origin("", "built-in default"), origin("eth0", "system config /etc/anka/config.yaml"), "br0 (automatic: default route)"},
		{"card -b auto beats the setting", "auto", origin("eth0", "env ANKA_BRIDGE_NAME"), nil, "br0 (automatic: default route, card -b auto)"},
		{"setting auto", "", origin("auto", "flag --bridge-name"), origin("eth0", "system config /etc/anka/config.yaml"), `br0 (automatic: default route, bridge_name "auto" from flag --bridge-name)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := h.choose(sdk.Card{Type: typeName, Bridge: c.card}, c.call, c.launch)
			if err != nil || got.String() != c.want {
				t.Errorf("got %v, %v; want %s", got, err, c.want)
			}
		})
	}
}

// TestRefusals: Wi-Fi (wireless or phy80211 in sysfs), loopback, other
// link types, missing and down interfaces and bad names are refused by
// Validate and Attach alike, naming the layer the name came from and the
// interfaces that would do. Nothing is left in the run folder.
func TestRefusals(t *testing.T) {
	p, err := newPlugin(sdk.Env{Logger: quiet}, fakeHost(t, fakes, "wlan0"), kernelOffloads{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, c := range []struct {
		bridge   string
		settings map[string]string
		code     sdk.Code
		says     string
	}{
		{"wlan0", nil, sdk.CodeInvalid, "interface wlan0 (card -b) is Wi-Fi; bridge mode needs an Ethernet interface"},
		{"wlp2s0", nil, sdk.CodeInvalid, "wlp2s0 (card -b) is Wi-Fi"},
		{"", origin("wlan0", "env ANKA_BRIDGE_NAME"), sdk.CodeInvalid, "interface wlan0 (env ANKA_BRIDGE_NAME) is Wi-Fi"},
		{"", nil, sdk.CodeInvalid, "interface wlan0 (automatic: default route) is Wi-Fi"},
		{"lo", nil, sdk.CodeInvalid, "interface lo (card -b) is the loopback interface"},
		{"tun0", nil, sdk.CodeInvalid, "interface tun0 (card -b) is not Ethernet (link type 65534)"},
		{"eth9", nil, sdk.CodeInvalid, "interface eth9 (card -b) does not exist on this host"},
		{"", origin("eth9", "user config /root/.config/anka/config.yaml"), sdk.CodeInvalid, "interface eth9 (user config /root/.config/anka/config.yaml) does not exist"},
		{"down0", nil, sdk.CodeUnavailable, "interface down0 (card -b) is down: bring it up (ip link set down0 up)"},
		{"nolink0", nil, sdk.CodeUnavailable, "interface nolink0 (card -b) has no link"},
		{"../../../etc", nil, sdk.CodeInvalid, `"../../../etc" (card -b) cannot name a network interface`},
		{"eth0:1", nil, sdk.CodeInvalid, "cannot name a network interface"},
		{"a-very-long-name0", nil, sdk.CodeInvalid, "cannot name a network interface"},
	} {
		t.Run(c.bridge+c.settings[settingKey], func(t *testing.T) {
			cd := sdk.Card{Type: typeName, Bridge: c.bridge, DynamicMAC: dyn(1)}
			_, err := p.Validate(t.Context(), &sdk.ValidateRequest{VM: vmRef("vm1"), Card: cd, Settings: c.settings})
			wantRefusal(t, "Validate", err, c.code, c.says, usableFakes)
			dir := t.TempDir()
			_, err = p.Attach(t.Context(), &sdk.AttachRequest{VM: vmRef("vm1"), Card: cd, Settings: c.settings, RunDir: dir})
			wantRefusal(t, "Attach", err, c.code, c.says, usableFakes)
			if ents, _ := os.ReadDir(dir); len(ents) > 0 {
				t.Errorf("a refused Attach left %s", ents[0].Name())
			}
		})
	}

	// No default route, and no usable interface at all.
	h := fakeHost(t, fakes)
	_, err = h.choose(sdk.Card{Type: typeName}, nil, nil)
	wantRefusal(t, "automatic without a default route", err, sdk.CodeUnavailable, "no IPv4 default route", usableFakes)
	h = fakeHost(t, map[string]fakeIf{"wlan0": fakes["wlan0"], "lo": fakes["lo"]}, "wlan0")
	_, err = h.choose(sdk.Card{Type: typeName}, nil, nil)
	wantRefusal(t, "automatic on a Wi-Fi-only host", err, sdk.CodeInvalid, "is Wi-Fi", "this host has no usable interface")
}

func wantRefusal(t *testing.T, what string, err error, code sdk.Code, says ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s succeeded; want %s", what, code)
		return
	}
	if sdk.CodeOf(err) != code {
		t.Errorf("%s: code %s (%v); want %s", what, sdk.CodeOf(err), err, code)
	}
	for _, s := range says {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s: %q does not say %q", what, err, s)
		}
	}
}

// TestChooseOnTheHost: the same on real interfaces, through Attach and
// Status: the interface in use and why, the default route followed when
// it moves, and the refusals listing the namespace's usable interfaces.
func TestChooseOnTheHost(t *testing.T) {
	newLAN(t, false)
	for _, d := range []string{"other0", "down0"} {
		run(t, "ip", "link", "add", d, "type", "veth", "peer", "name", d+"p")
		t.Cleanup(func() { run(t, "ip", "link", "del", d) })
		run(t, "ip", "link", "set", d+"p", "up")
	}
	run(t, "ip", "link", "set", "other0", "up")
	p := start(t, origin("other0", "system config /etc/anka/config.yaml"))
	uses := func(c sdk.Card, settings map[string]string, want string) {
		t.Helper()
		vm := vmRef("vm1")
		if _, err := p.Validate(t.Context(), &sdk.ValidateRequest{VM: vm, Card: sdk.Card{Type: typeName, Bridge: c.Bridge}, Settings: settings}); err != nil {
			t.Errorf("Validate: %v", err)
		}
		if _, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: vm, Card: c, Settings: settings, RunDir: frameiotest.TempDir(t)}); err != nil {
			t.Fatalf("Attach: %v", err)
		}
		st := status(t, p, vm)
		if got := st.Details["interface"]; got != want || !strings.Contains(st.Path, strings.Fields(want)[0]) {
			t.Errorf("interface %q, path %q; want %s", got, st.Path, want)
		}
		p.Release(t.Context(), &sdk.ReleaseRequest{VM: vm})
	}
	uses(card("uplink0", 1), origin("other0", "env ANKA_BRIDGE_NAME"), "uplink0 (card -b)")
	uses(card("", 1), origin("other0", "flag --bridge-name"), "other0 (flag --bridge-name)")
	uses(card("", 1), origin("uplink0", "env ANKA_BRIDGE_NAME"), "uplink0 (env ANKA_BRIDGE_NAME)")
	uses(card("", 1), nil, "other0 (system config /etc/anka/config.yaml)")
	uses(card("", 1), origin("", "built-in default"), "uplink0 (automatic: default route)")
	uses(card("auto", 1), origin("other0", "env ANKA_BRIDGE_NAME"), "uplink0 (automatic: default route, card -b auto)")
	run(t, "ip", "route", "replace", "default", "dev", "other0")
	uses(card("auto", 1), nil, "other0 (automatic: default route, card -b auto)")

	usable := "usable interfaces: other0, other0p, uplink0 ("
	for _, c := range []struct {
		bridge string
		code   sdk.Code
		says   string
	}{
		{"lo", sdk.CodeInvalid, "interface lo (card -b) is the loopback interface"},
		{"nosuch0", sdk.CodeInvalid, "interface nosuch0 (card -b) does not exist"},
		{"down0", sdk.CodeUnavailable, "interface down0 (card -b) is down"},
	} {
		_, err := p.Validate(t.Context(), &sdk.ValidateRequest{Card: sdk.Card{Type: typeName, Bridge: c.bridge}})
		wantRefusal(t, "Validate of "+c.bridge, err, c.code, c.says, usable)
		_, err = p.Attach(t.Context(), &sdk.AttachRequest{VM: vmRef("x"), Card: card(c.bridge, 9), RunDir: frameiotest.TempDir(t)})
		wantRefusal(t, "Attach of "+c.bridge, err, c.code, c.says, usable)
	}
	run(t, "ip", "route", "del", "default")
	_, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: vmRef("x"), Card: card("auto", 9), RunDir: frameiotest.TempDir(t)})
	wantRefusal(t, "Attach without a default route", err, sdk.CodeUnavailable, "no IPv4 default route", usable)
}
