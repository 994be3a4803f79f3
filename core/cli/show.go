package cli

import (
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/runtime"
	"github.com/anka-net/anka/core/vm"
)

// ListOptions are the inputs of `anka list`.
type ListOptions struct {
	f   *Factory
	out *output
}

// NewCmdList builds `anka list`.
func NewCmdList(f *Factory, out *output, runF func(*ListOptions) error) *cobra.Command {
	opts := &ListOptions{f: f, out: out}
	return &cobra.Command{
		Use:   "list",
		Short: "List VMs with their state and network",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runF != nil {
				return runF(opts)
			}
			return listRun(cmd, opts)
		},
	}
}

type listItem struct {
	Name    string    `json:"name"`
	UUID    string    `json:"uuid"`
	Status  vm.State  `json:"status"`
	Created time.Time `json:"creation_date"`
	Network string    `json:"network"`
}

func listRun(cmd *cobra.Command, o *ListOptions) error {
	o.f.reviveDaemon(cmd)
	m, err := o.f.Manager()
	if err != nil {
		return err
	}
	vms, bad, err := m.List(cmd.Context())
	if err != nil {
		return err
	}
	items := make([]listItem, 0, len(vms))
	for _, s := range vms {
		items = append(items, listItem{s.Name, s.UUID, s.State, s.Created, networkSummary(s.VM)})
	}
	for _, e := range bad {
		fmt.Fprintf(o.f.IO.ErrOut, "anka: warning: %v\n", e)
	}
	return o.out.ok(items, func(w io.Writer) {
		rows := make([][]string, 0, len(items))
		for _, it := range items {
			rows = append(rows, []string{it.Name, string(it.Status), it.Network, it.Created.Local().Format(time.DateTime), it.UUID})
		}
		table(w, []string{"NAME", "STATUS", "NETWORK", "CREATED", "UUID"}, rows)
	})
}

func networkSummary(v *vm.VM) string {
	if v.NetworkCard == nil {
		return "none"
	}
	return v.NetworkCard.Type
}

// ShowOptions are the inputs of `anka show NAME [network]`.
type ShowOptions struct {
	f       *Factory
	out     *output
	Name    string
	Network bool
}

// NewCmdShow builds `anka show NAME [network]`.
func NewCmdShow(f *Factory, out *output, runF func(*ShowOptions) error) *cobra.Command {
	opts := &ShowOptions{f: f, out: out}
	return &cobra.Command{
		Use:   "show NAME [network]",
		Short: "Show a VM, or only its network card",
		Args:  rangeArgs(1, 2, "NAME [network]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			if len(args) == 2 {
				if args[1] != "network" {
					return invalidShowPart(args[1])
				}
				opts.Network = true
			}
			if runF != nil {
				return runF(opts)
			}
			return showRun(cmd, opts)
		},
	}
}

func showRun(cmd *cobra.Command, o *ShowOptions) error {
	m, err := o.f.Manager()
	if err != nil {
		return err
	}
	sv, err := o.f.Service()
	if err != nil {
		return err
	}
	st, err := sv.Show(cmd.Context(), o.Name)
	if err != nil {
		return err
	}
	if o.Network {
		body := cardBody(st)
		return o.out.ok(body, func(w io.Writer) { printCard(w, body) })
	}
	return o.out.ok(showBody(m, st), func(w io.Writer) { printShow(w, m, st) })
}

// showJSON is the body of `anka -j show NAME`.
type showJSON struct {
	Name       string    `json:"name"`
	UUID       string    `json:"uuid"`
	Status     vm.State  `json:"status"`
	Created    time.Time `json:"creation_date"`
	CPU        int       `json:"cpu"`
	RAM        string    `json:"ram"`
	Kernel     string    `json:"kernel,omitempty"`
	Initrd     string    `json:"initrd,omitempty"`
	Append     string    `json:"append,omitempty"`
	Disk       string    `json:"disk,omitempty"`
	PID        int       `json:"pid,omitempty"`
	ConsoleLog string    `json:"console_log"`
	// Endpoints are the kinds an external VM's hypervisor connects to.
	Endpoints   []string  `json:"endpoints,omitempty"`
	NetworkCard *cardJSON `json:"network_card"`
	// Endpoint is what an external hypervisor connects the NIC to.
	Endpoint *runtime.ExternalEndpoint `json:"endpoint,omitempty"`
}

type cardJSON struct {
	Index       int        `json:"index"`
	Mode        string     `json:"mode"`
	Bridge      string     `json:"bridge,omitempty"`
	MAC         string     `json:"mac,omitempty"`
	InternalMAC string     `json:"internal_mac,omitempty"`
	DynamicMAC  string     `json:"dynamic_mac,omitempty"`
	LeaseExpiry *time.Time `json:"lease_expiry,omitempty"`
	IP          string     `json:"ip,omitempty"`
	Path        string     `json:"path,omitempty"`
	// Attached is the plugin's word on whether the VM has a port now;
	// absent when no plugin reported.
	Attached     *bool             `json:"attached,omitempty"`
	Counters     map[string]uint64 `json:"counters,omitempty"`
	Details      map[string]string `json:"details,omitempty"`
	Error        string            `json:"network_error,omitempty"`
	Options      map[string]string `json:"options,omitempty"`
	PortForwards []vm.PortForward  `json:"port_forwarding_rules"`
}

func showBody(m *vm.Manager, st *vm.Status) showJSON {
	r := st.Runtime
	var ep *runtime.ExternalEndpoint
	if r.Kind == vm.RuntimeExternal && st.State != vm.Stopped {
		if es, err := (runtime.External{}).Read(m.Store.Dir(st.Name)); err == nil {
			ep = es.Endpoint
		}
	}
	return showJSON{
		Endpoint: ep,
		Name:     st.Name, UUID: st.UUID, Status: st.State, Created: st.Created,
		CPU: r.CPU, RAM: vm.FormatRAM(r.RAMMiB), Kernel: r.Kernel, Initrd: r.Initrd, Append: r.Append, Disk: r.Disk,
		PID: st.PID, ConsoleLog: filepath.Join(m.Store.Dir(st.Name), "console.log"),
		Endpoints:   r.Endpoints,
		NetworkCard: cardBody(st),
	}
}

func cardBody(st *vm.Status) *cardJSON {
	c := st.NetworkCard
	if c == nil {
		return nil
	}
	pf := c.PortForwards
	if pf == nil {
		pf = []vm.PortForward{}
	}
	cj := &cardJSON{Mode: c.Type, Bridge: c.Bridge, MAC: c.MAC, InternalMAC: c.MAC, DynamicMAC: st.DynamicMAC, IP: c.IP, Options: c.Options, PortForwards: pf, Error: st.NetworkError}
	if cj.MAC == "" {
		cj.MAC = st.DynamicMAC // the guest's NIC carries the dynamic MAC
	}
	if ns := st.Network; ns != nil {
		if ns.IP != "" {
			cj.IP = ns.IP
		}
		if !ns.LeaseExpiry.IsZero() {
			t := ns.LeaseExpiry.UTC()
			cj.LeaseExpiry = &t
		}
		cj.Path, cj.Counters, cj.Details = ns.Path, ns.Counters, ns.Details
		attached := ns.Attached
		cj.Attached = &attached
	}
	return cj
}

func printShow(w io.Writer, m *vm.Manager, st *vm.Status) {
	b := showBody(m, st)
	rows := [][]string{
		{"name", b.Name}, {"uuid", b.UUID}, {"status", string(b.Status)},
		{"created", b.Created.Local().Format(time.DateTime)},
		{"cpu", strconv.Itoa(b.CPU)}, {"ram", b.RAM},
	}
	for _, kv := range [][2]string{{"kernel", b.Kernel}, {"initrd", b.Initrd}, {"append", b.Append}, {"disk", b.Disk}} {
		if kv[1] != "" {
			rows = append(rows, []string{kv[0], kv[1]})
		}
	}
	if b.PID != 0 {
		rows = append(rows, []string{"pid", strconv.Itoa(b.PID)})
	}
	if st.Runtime.Kind != "" {
		rows = append(rows, []string{"runtime", st.Runtime.Kind})
	}
	if len(b.Endpoints) > 0 {
		rows = append(rows, []string{"endpoints", strings.Join(b.Endpoints, ",")})
	}
	rows = append(rows, []string{"console_log", b.ConsoleLog}, []string{"network", networkLine(b.NetworkCard)})
	table(w, nil, rows)
	if b.Endpoint != nil {
		printEndpoint(w, b.Endpoint)
	}
}

// networkLine is Anka's `network | shared 192.168.64.6` line.
func networkLine(c *cardJSON) string {
	if c == nil {
		return "none (no network card)"
	}
	s := c.Mode
	if c.IP != "" {
		s += " " + c.IP
	}
	return s
}

func printCard(w io.Writer, c *cardJSON) {
	if c == nil {
		fmt.Fprintln(w, "no network card")
		return
	}
	lease := "-"
	if c.LeaseExpiry != nil {
		lease = c.LeaseExpiry.Local().Format("2006-01-02 15:04:05")
	}
	internal := "- (the guest sees the dynamic MAC)"
	if c.InternalMAC != "" {
		internal = c.InternalMAC + " (the network sees the dynamic MAC)"
	}
	table(w, nil, [][]string{
		{"index", strconv.Itoa(c.Index)},
		{"mode", c.Mode},
		{"bridge", bridgeShown(c)},
		{"ip", dash(c.IP)},
		{"mac", dash(c.MAC)},
		{"internal_mac", internal},
		{"dynamic_mac", dash(c.DynamicMAC)},
		{"lease_expiry", lease},
		{"options", dash(formatOptions(c.Options))},
		{"path", dash(c.Path)},
		{"details", dash(formatOptions(c.Details))},
		{"counters", dash(formatCounters(c.Counters))},
	})
	if c.Error != "" {
		fmt.Fprintf(w, "network status unavailable: %s\n", c.Error)
	}
	fmt.Fprintln(w, "port_forwarding_rules:")
	if len(c.PortForwards) == 0 {
		fmt.Fprintln(w, "  none")
		return
	}
	rows := make([][]string, 0, len(c.PortForwards))
	for _, r := range c.PortForwards {
		rows = append(rows, []string{"  " + r.Name, r.Protocol, r.HostIP, strconv.Itoa(r.HostPort), strconv.Itoa(r.GuestPort)})
	}
	table(w, []string{"  NAME", "PROTOCOL", "HOST_IP", "HOST_PORT", "GUEST_PORT"}, rows)
}

func bridgeShown(c *cardJSON) string {
	if c.Mode != "bridge" {
		return "-"
	}
	if c.Bridge == "" {
		return "auto"
	}
	return c.Bridge
}

func invalidShowPart(s string) error {
	return errs.Invalidf("anka show NAME %s: only \"network\" may follow the name", s)
}

// completeVMs completes the first argument with VM names.
func completeVMs(f *Factory) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		m, err := f.Manager()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		vms, _, _ := m.Store.List()
		names := make([]string, 0, len(vms))
		for _, v := range vms {
			names = append(names, v.Name)
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

func formatOptions(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, " ")
}

func formatCounters(m map[string]uint64) string {
	s := make(map[string]string, len(m))
	for k, v := range m {
		s[k] = strconv.FormatUint(v, 10)
	}
	return formatOptions(s)
}
