// Package vm keeps VM definitions on disk and runs their lifecycle: the
// state machine and the hook points that network plugins fill.
package vm

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/anka-net/anka/core/errs"
)

// SchemaVersion is written to every vm.yaml so later releases can migrate.
const SchemaVersion = 1

// State is a VM's lifecycle state as anka reports it.
type State string

const (
	Stopped   State = "stopped"
	Running   State = "running"
	Suspended State = "suspended"
)

// VM is the content of <state_dir>/vms/<name>/vm.yaml.
type VM struct {
	Version     int          `yaml:"version" json:"-"`
	Name        string       `yaml:"name" json:"name"`
	UUID        string       `yaml:"uuid" json:"uuid"`
	Created     time.Time    `yaml:"created" json:"creation_date"`
	Runtime     RuntimeSpec  `yaml:"runtime" json:"runtime"`
	NetworkCard *NetworkCard `yaml:"network_card,omitempty" json:"network_card,omitempty"`
	State       State        `yaml:"state" json:"status"`
}

// RuntimeSpec says how the VM process is run.
type RuntimeSpec struct {
	// Kind is qemu (the default, written as "") or external: a hypervisor
	// anka does not launch, which connects to the endpoint anka prints.
	Kind   string `yaml:"kind,omitempty" json:"kind,omitempty"`
	Kernel string `yaml:"kernel,omitempty" json:"kernel,omitempty"`
	Initrd string `yaml:"initrd,omitempty" json:"initrd,omitempty"`
	Append string `yaml:"append,omitempty" json:"append,omitempty"`
	Disk   string `yaml:"disk,omitempty" json:"disk,omitempty"`
	CPU    int    `yaml:"cpu" json:"cpu"`
	RAMMiB int    `yaml:"ram_mib" json:"ram_mib"`
	// Endpoints are the NIC endpoint kinds an external VM's hypervisor
	// can connect to, preferred first (EndpointKinds); empty means dgram
	// and stream. QEMU VMs leave it empty: anka knows what QEMU takes.
	Endpoints []string `yaml:"endpoints,omitempty" json:"endpoints,omitempty"`
}

// EndpointKinds are the NIC endpoint kinds a hypervisor may connect to.
var EndpointKinds = []string{"dgram", "stream", "vhost-user", "tap"}

// DefaultExternalEndpoints is what an external VM offers unless told.
var DefaultExternalEndpoints = []string{"dgram", "stream"}

// NetworkCard is card 0, the only one, as in Anka.
type NetworkCard struct {
	Type string `yaml:"type" json:"mode"`
	// Bridge is the host interface for bridge mode; empty means automatic.
	Bridge string `yaml:"bridge,omitempty" json:"bridge,omitempty"`
	// MAC is the static internal MAC the guest sees (-m); empty means the
	// guest sees the dynamic MAC from the host pool.
	MAC string `yaml:"mac,omitempty" json:"mac,omitempty"`
	IP  string `yaml:"ip,omitempty" json:"ip,omitempty"`
	// Options are type-specific settings a plugin defines (-o KEY=VALUE).
	Options      map[string]string `yaml:"options,omitempty" json:"options,omitempty"`
	PortForwards []PortForward     `yaml:"port_forwarding,omitempty" json:"port_forwarding_rules"`
}

// PortForward is one host->guest rule.
type PortForward struct {
	Name      string `yaml:"name" json:"name"`
	Protocol  string `yaml:"protocol" json:"protocol"`
	HostIP    string `yaml:"host_ip" json:"host_ip"`
	HostPort  int    `yaml:"host_port" json:"host_port"`
	GuestPort int    `yaml:"guest_port" json:"guest_port"`
}

const maxNameLen = 64

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// ValidateName refuses names that could escape the VM folder or confuse a
// shell: letters, digits, '_', '.', '-', at most 64, not "." or "..".
func ValidateName(what, name string) error {
	switch {
	case name == "":
		return errs.Invalidf("%s name is empty: use letters, digits, '_', '.' and '-'", what)
	case len(name) > maxNameLen:
		return errs.Invalidf("%s name %q is %d characters long: the limit is %d", what, name, len(name), maxNameLen)
	case name == "." || name == ".." || strings.HasPrefix(name, "."):
		return errs.Invalidf("%s name %q may not start with '.': use letters, digits, '_', '.' and '-'", what, name)
	case strings.HasPrefix(name, "-"):
		return errs.Invalidf("%s name %q may not start with '-' (it reads as a flag): start it with a letter or digit", what, name)
	case !nameRE.MatchString(name):
		return errs.Invalidf("%s name %q has a character other than letters, digits, '_', '.' and '-'", what, name)
	}
	return nil
}

// ParseRAM reads sizes such as 512M, 2G, 1024 (MiB) into MiB.
func ParseRAM(s string) (int, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := 1
	switch {
	case strings.HasSuffix(t, "G"):
		mult, t = 1024, strings.TrimSuffix(t, "G")
	case strings.HasSuffix(t, "M"):
		t = strings.TrimSuffix(t, "M")
	}
	n, err := strconv.Atoi(t)
	if err != nil || n <= 0 {
		return 0, errs.Invalidf("RAM size %q is not valid: use a number with M or G, e.g. 512M or 2G", s)
	}
	mib := n * mult
	if mib < 32 || mib > 1<<20 {
		return 0, errs.Invalidf("RAM size %q is out of range: use 32M to 1024G", s)
	}
	return mib, nil
}

// FormatRAM renders MiB the way ParseRAM reads it.
func FormatRAM(mib int) string {
	if mib%1024 == 0 {
		return fmt.Sprintf("%dG", mib/1024)
	}
	return fmt.Sprintf("%dM", mib)
}

// ValidatePortForward checks one rule on its own; clashes with other rules
// are checked by the store, which sees every VM.
func ValidatePortForward(r *PortForward) error {
	if err := ValidateName("port-forwarding rule", r.Name); err != nil {
		return err
	}
	switch r.Protocol {
	case "tcp", "udp":
	default:
		return errs.Invalidf("protocol %q is not supported: use tcp or udp", r.Protocol)
	}
	if r.GuestPort < 1 || r.GuestPort > 65535 {
		return errs.Invalidf("guest port %d is out of range: use 1 to 65535", r.GuestPort)
	}
	if r.HostPort < 0 || r.HostPort > 65535 {
		return errs.Invalidf("host port %d is out of range: use 1 to 65535, or leave it out to pick one from portfwd_base", r.HostPort)
	}
	if _, err := netip.ParseAddr(r.HostIP); err != nil {
		return errs.Invalidf("host IP %q is not an IP address: use e.g. 0.0.0.0 (all) or 127.0.0.1", r.HostIP)
	}
	return nil
}

// Card returns the network card or a NotFound error naming the VM.
func (v *VM) Card() (*NetworkCard, error) {
	if v.NetworkCard == nil {
		return nil, errs.NotFoundf("VM %s has no network card: add one with `anka modify %s add network-card`", v.Name, v.Name)
	}
	return v.NetworkCard, nil
}
