package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/anka-net/anka/sdk"
)

// settingKey names the interface in anka's configuration (`anka config
// bridge_name`, ANKA_BRIDGE_NAME, --bridge-name).
const settingKey = "bridge_name"

// auto asks for the interface of the IPv4 default route.
const auto = "auto"

// Link types from /sys/class/net/IF/type (include/uapi/linux/if_arp.h).
const (
	arphrdEther    = 1
	arphrdLoopback = 772
)

// choice is the interface a card bridges to and why that one.
type choice struct {
	iface string
	why   string // "card -b", "env ANKA_BRIDGE_NAME", "automatic: default route", ...
}

func (c choice) String() string { return fmt.Sprintf("%s (%s)", c.iface, c.why) }

// hostView reads the host's interfaces and routes; the roots are
// replaceable so tests can show a host with Wi-Fi.
type hostView struct {
	sysfs string // "/sys"
	route string // "/proc/net/route"
}

// choose picks the card's interface, highest first: the card's -b, the
// bridge_name setting of this call (which the core resolved from flag,
// env, user and system config), the one at launch, then the default
// route's. "auto" or "" at any level means automatic.
func (h hostView) choose(card sdk.Card, call, launch map[string]string) (choice, error) {
	var c choice
	switch {
	case card.Bridge != "" && card.Bridge != auto:
		c = choice{iface: card.Bridge, why: "card -b"}
	case card.Bridge == auto:
		return h.automatic("card -b auto")
	default:
		v, origin, ok := setting(call, launch)
		if !ok || v == "" || v == auto {
			asked := ""
			if ok && origin != "built-in default" && !strings.HasPrefix(origin, "setting ") {
				asked = fmt.Sprintf("%s %q from %s", settingKey, v, origin)
			}
			return h.automatic(asked)
		}
		c = choice{iface: v, why: origin}
	}
	if err := h.check(c.iface, c.why); err != nil {
		return choice{}, err
	}
	return c, nil
}

// setting is bridge_name and where it came from: this call's settings
// when they have it, else those at launch.
func setting(call, launch map[string]string) (value, origin string, ok bool) {
	for _, s := range []map[string]string{call, launch} {
		if v, ok := s[settingKey]; ok {
			origin := s[sdk.OriginKey(settingKey)]
			if origin == "" {
				origin = "setting " + settingKey
			}
			return strings.TrimSpace(v), origin, true
		}
	}
	return "", "", false
}

// automatic is the interface of the IPv4 default route with the lowest
// metric; asked says who asked for automatic, if anyone did.
func (h hostView) automatic(asked string) (choice, error) {
	why := "automatic: default route"
	if asked != "" {
		why += ", " + asked
	}
	name, err := h.defaultRoute()
	if err != nil {
		return choice{}, sdk.Errorf(sdk.CodeUnavailable, "cannot choose an interface automatically: %v%s", err, h.usableList())
	}
	if err := h.check(name, why); err != nil {
		return choice{}, err
	}
	return choice{iface: name, why: why}, nil
}

func (h hostView) defaultRoute() (string, error) {
	f, err := os.Open(h.route)
	if err != nil {
		return "", fmt.Errorf("reading the routing table: %w", err)
	}
	defer f.Close()
	best, bestMetric := "", uint64(1<<63)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Iface Destination Gateway Flags RefCnt Use Metric Mask ...
		fs := strings.Fields(sc.Text())
		if len(fs) < 8 || fs[1] != "00000000" || fs[7] != "00000000" {
			continue
		}
		flags, err1 := strconv.ParseUint(fs[3], 16, 32)
		metric, err2 := strconv.ParseUint(fs[6], 10, 64)
		if err1 != nil || err2 != nil || flags&1 == 0 { // RTF_UP
			continue
		}
		if metric < bestMetric {
			best, bestMetric = fs[0], metric
		}
	}
	if best == "" {
		return "", fmt.Errorf("this host has no IPv4 default route")
	}
	return best, nil
}

// ifaceInfo is what sysfs says of an interface.
type ifaceInfo struct {
	name     string
	exists   bool
	linkType int
	wifi     bool
	up       bool   // IFF_UP: administratively up
	oper     string // operstate: up, down, lowerlayerdown, unknown, ...
}

func (h hostView) inspect(name string) ifaceInfo {
	dir := filepath.Join(h.sysfs, "class", "net", name)
	info := ifaceInfo{name: name}
	if _, err := os.Stat(dir); err != nil {
		return info
	}
	info.exists = true
	info.linkType, _ = strconv.Atoi(readTrim(filepath.Join(dir, "type")))
	for _, w := range []string{"wireless", "phy80211"} {
		if _, err := os.Lstat(filepath.Join(dir, w)); err == nil {
			info.wifi = true
		}
	}
	if flags, err := strconv.ParseUint(strings.TrimPrefix(readTrim(filepath.Join(dir, "flags")), "0x"), 16, 32); err == nil {
		info.up = flags&1 != 0
	}
	info.oper = readTrim(filepath.Join(dir, "operstate"))
	return info
}

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// problem says why an interface cannot be bridged, "" when it can, and
// the error code.
func (i ifaceInfo) problem() (string, sdk.Code) {
	switch {
	case !i.exists:
		return "does not exist on this host", sdk.CodeInvalid
	case i.linkType == arphrdLoopback:
		return "is the loopback interface; bridge mode needs an Ethernet interface", sdk.CodeInvalid
	case i.wifi:
		return "is Wi-Fi; bridge mode needs an Ethernet interface (a Wi-Fi access point takes frames from one MAC per station, so VMs cannot be nodes of their own through it)", sdk.CodeInvalid
	case i.linkType != arphrdEther:
		return fmt.Sprintf("is not Ethernet (link type %d); bridge mode needs an Ethernet interface", i.linkType), sdk.CodeInvalid
	case !i.up:
		return fmt.Sprintf("is down: bring it up (ip link set %s up)", i.name), sdk.CodeUnavailable
	case i.oper == "down" || i.oper == "lowerlayerdown" || i.oper == "notpresent":
		return "has no link (is the cable plugged in?)", sdk.CodeUnavailable
	}
	return "", ""
}

// check refuses an interface that cannot be bridged, saying why, where
// the name came from and which interfaces would do.
func (h hostView) check(name, why string) error {
	if !validIfName(name) {
		return sdk.Errorf(sdk.CodeInvalid, "%q (%s) cannot name a network interface%s", name, why, h.usableList())
	}
	if p, code := h.inspect(name).problem(); p != "" {
		return sdk.Errorf(code, "interface %s (%s) %s%s", name, why, p, h.usableList())
	}
	return nil
}

// validIfName is the kernel's dev_valid_name; it also keeps a name from
// walking out of sysfs.
func validIfName(s string) bool {
	if s == "" || len(s) >= 16 || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if r == '/' || r == ':' || r <= ' ' || r == 0x7f {
			return false
		}
	}
	return true
}

// usable lists the interfaces a card could bridge to.
func (h hostView) usable() []string {
	ents, _ := os.ReadDir(filepath.Join(h.sysfs, "class", "net"))
	var names []string
	for _, e := range ents {
		if p, _ := h.inspect(e.Name()).problem(); p == "" {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names
}

// usableList ends a refusal: what to choose instead.
func (h hostView) usableList() string {
	names := h.usable()
	if len(names) == 0 {
		return "; this host has no usable interface (Ethernet, up, with a link, not Wi-Fi)"
	}
	return fmt.Sprintf("; usable interfaces: %s (choose with -b IFACE or `anka config %s IFACE`)", strings.Join(names, ", "), settingKey)
}
