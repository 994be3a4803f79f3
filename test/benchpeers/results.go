package benchpeers

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
)

// Results are one harness run: what ran where, the figures, the ratios.
type Results struct {
	Date     string        `json:"date"`
	Machine  Machine       `json:"machine"`
	Settings Settings      `json:"settings"`
	Peers    []*PeerResult `json:"peers"`
	Ratios   []Ratio       `json:"ratios"`
}

// Settings are the run's parameters.
type Settings struct {
	Duration     string `json:"iperf3_duration"`
	Omit         int    `json:"iperf3_omit_seconds"`
	RRDuration   string `json:"rr_duration"`
	MTUs         []int  `json:"mtus"`
	Count        int    `json:"rounds"`
	Idle         int    `json:"idle_vms"`
	AdapterBatch int    `json:"adapter_frames_per_write"`
	// VhostUserOffload: the vhost-user guest's NIC took checksum offload
	// and TSO (a run older than the field reads false).
	VhostUserOffload bool `json:"vhost_user_offload"`
	// FastPathPairs: pairs of alternated runs, per direction and round,
	// of the fast path and the veth beside it (0 or absent: none).
	FastPathPairs int `json:"fastpath_pairs,omitempty"`
}

// Machine is where it ran.
type Machine struct {
	CPUs     int               `json:"nproc"`
	CPU      string            `json:"cpu"`
	Kernel   string            `json:"kernel"`
	Go       string            `json:"go"`
	Load     string            `json:"loadavg_at_start"`
	LoadEnd  string            `json:"loadavg_at_end"`
	Versions map[string]string `json:"versions"`
	// TCPCongestion and Qdisc are the kernel's defaults every peer's TCP
	// ran with (net.ipv4.tcp_congestion_control, net.core.default_qdisc;
	// a network namespace inherits the first from the host's). BBR and
	// cubic weigh a receiver slowed per frame differently
	// (docs/profiles.md, "Wake-ups a peer pays for").
	TCPCongestion string `json:"tcp_congestion_control,omitempty"`
	Qdisc         string `json:"default_qdisc,omitempty"`
}

// PeerResult is one peer's figures, medians over the rounds.
type PeerResult struct {
	Name    string             `json:"name"`
	Label   string             `json:"label"`
	Notes   []string           `json:"notes,omitempty"`
	Skipped string             `json:"skipped,omitempty"`
	Errors  []string           `json:"errors,omitempty"`
	Metrics map[string]*Metric `json:"metrics"`
}

// Metric is one figure: the median of its runs, one a round.
type Metric struct {
	Value  float64   `json:"value"`
	Unit   string    `json:"unit"`
	Runs   []float64 `json:"runs"`
	Rounds []int     `json:"rounds"` // the round of each run
}

func (p *PeerResult) add(round int, key, unit string, v float64) {
	m := p.Metrics[key]
	if m == nil {
		m = &Metric{Unit: unit}
		p.Metrics[key] = m
	}
	m.Runs = append(m.Runs, v)
	m.Rounds = append(m.Rounds, round)
	m.Value = median(m.Runs)
}

// pairedRatio is the median over the rounds both metrics have of a/b:
// each quotient is taken within one round, so the machine's drift
// between rounds cancels.
func pairedRatio(a, b *Metric) (float64, int) {
	var qs []float64
	for i, ra := range a.Rounds {
		for j, rb := range b.Rounds {
			if ra == rb && b.Runs[j] > 0 {
				qs = append(qs, a.Runs[i]/b.Runs[j])
			}
		}
	}
	return median(qs), len(qs)
}

// Get is a metric's median, or 0 when it was not measured.
func (p *PeerResult) Get(key string) float64 {
	if p == nil {
		return 0
	}
	if m := p.Metrics[key]; m != nil {
		return m.Value
	}
	return 0
}

// metric is one of the peer's metrics, or nil.
func (p *PeerResult) metric(key string) *Metric {
	if p == nil {
		return nil
	}
	return p.Metrics[key]
}

// Peer finds a peer's result.
func (r *Results) Peer(name string) *PeerResult {
	for _, p := range r.Peers {
		if p.Name == name {
			return p
		}
	}
	return nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Ratio is a quotient of two figures of the same run, against a target
// when the issue sets one. Value is the median of the per-round
// quotients; OfMedians the quotient of the two medians.
type Ratio struct {
	Name      string  `json:"name"`
	Value     float64 `json:"value"`
	OfMedians float64 `json:"of_medians"`
	Rounds    int     `json:"rounds"`
	Target    float64 `json:"target,omitempty"`
	Met       *bool   `json:"met,omitempty"`
	Why       string  `json:"unavailable,omitempty"`
	// Note says, for a ratio with no target, what it is for.
	Note string `json:"note,omitempty"`
}

// Reload reads a run that run -json wrote and takes its ratios again
// from its figures.
func Reload(data []byte) (*Results, error) {
	var r Results
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("not a bench-peers run: %w", err)
	}
	if len(r.Peers) == 0 || len(r.Settings.MTUs) == 0 {
		return nil, errors.New("not a bench-peers run: no peers or MTUs")
	}
	r.Ratios = ratios(&r, Config{MTUs: r.Settings.MTUs, Idle: r.Settings.Idle})
	return &r, nil
}

func ratios(r *Results, cfg Config) []Ratio {
	anka := r.Peer(PeerAnka)
	var out []Ratio
	add := func(name string, num, den *PeerResult, numKey, denKey string, target float64) {
		x := Ratio{Name: name, Target: target}
		a, b := num.Get(numKey), den.Get(denKey)
		switch {
		case num == nil || den == nil:
			x.Why = "peer not run"
		case a == 0 || b == 0:
			x.Why = "not measured"
			for _, p := range []*PeerResult{num, den} {
				if p.Skipped != "" {
					x.Why = p.Name + " skipped: " + p.Skipped
				}
			}
		default:
			x.OfMedians = a / b
			x.Value, x.Rounds = pairedRatio(num.Metrics[numKey], den.Metrics[denKey])
			if x.Rounds == 0 {
				x.Value = x.OfMedians
			}
			if target > 0 {
				met := x.Value >= target
				x.Met = &met
			}
		}
		out = append(out, x)
	}
	// The targets are at these MTUs; a run without one says so.
	const big, small = 65520, 1500
	dirs := []struct{ key, label string }{{"g2h", "guest->host"}, {"h2g", "host->guest"}}
	// The ceiling with the framing the plugin handed out. The vhost-user
	// path has no framing of its own to take a ceiling from: it is held
	// to the same one as the socket path, so the two compare directly.
	ceil := PeerAdapterDgram
	if anka != nil && slices.ContainsFunc(anka.Notes, func(n string) bool { return strings.HasPrefix(n, "stream") }) {
		ceil = PeerAdapterStream
	}
	// The targets against the peers at MTU 65520 hold for the path a QEMU
	// VM on Linux takes, the kernel fast path. The socket paths (a socket
	// hypervisor's datagrams, and vhost-user, which a VM with -m takes)
	// are bounded by the framing's ceiling, itself under 1.5x passt here
	// (passt ends the guest's TCP; no frame of it reaches a TAP): they
	// are shown beside it, with the ceiling at 65520, and held to the
	// ceiling at MTU 1500 below (docs/decisions.md, "Where the socket
	// path stops").
	vu := r.Peer(PeerAnkaVhostUser)
	for _, path := range []struct {
		label string
		p     *PeerResult
		note  string
	}{
		{"anka fast path", r.Peer(PeerAnkaFastPath), ""},
		{"anka", anka, "socket path: bounded by the ceiling"},
		{"anka vhost-user", vu, "socket path: bounded by the ceiling"},
	} {
		for _, peer := range []struct {
			name   string
			target float64
		}{{PeerGvproxy, 2}, {PeerPasst, 1.5}} {
			for _, d := range dirs {
				k := TCPKey(d.key, big)
				target := peer.target
				if path.note != "" {
					target = 0
				}
				add(fmt.Sprintf("%s / %s, TCP %s, MTU %d", path.label, peer.name, d.label, big), path.p, r.Peer(peer.name), k, k, target)
				out[len(out)-1].Note = path.note
			}
		}
	}
	for _, p := range []string{PeerGvproxy, PeerPasst} {
		for _, d := range dirs {
			k := TCPKey(d.key, big)
			add(fmt.Sprintf("%s / %s, TCP %s, MTU %d", ceil, p, d.label, big), r.Peer(ceil), r.Peer(p), k, k, 0)
			out[len(out)-1].Note = "the socket paths' bound"
		}
	}
	for _, d := range dirs {
		k := TCPKey(d.key, small)
		add(fmt.Sprintf("anka / %s, TCP %s, MTU %d", ceil, d.label, small), anka, r.Peer(ceil), k, k, 0.9)
	}
	for _, d := range dirs {
		k := TCPKey(d.key, small)
		add(fmt.Sprintf("anka vhost-user / %s, TCP %s, MTU %d", ceil, d.label, small), vu, r.Peer(ceil), k, k, 0.9)
	}
	if cfg.Idle > 0 {
		add(fmt.Sprintf("anka with %d idle VMs / with none, TCP guest->host, MTU %d", cfg.Idle, small), anka, anka, IdleKey(small, cfg.Idle), IdleKey(small, 0), 0.95)
	}
	// The fast path against the kernel limit: by the runs alternated with
	// the veth beside it when the session made them, the veth peer's
	// session (minutes away) then for reference only.
	fp := r.Peer(PeerAnkaFastPath)
	for _, mtu := range cfg.MTUs {
		for _, d := range dirs {
			k := TCPKey(d.key, mtu)
			target := 0.9
			if q := fp.metric(BesideRatioKey(k)); q != nil && len(q.Runs) > 0 {
				x := Ratio{Name: fmt.Sprintf("anka fast path / veth beside it, runs alternated, TCP %s, MTU %d", d.label, mtu), Target: target}
				x.Value, x.Rounds = median(q.Runs), len(q.Runs)
				if v := fp.Get(BesideKey(k)); v > 0 {
					x.OfMedians = fp.Get(k) / v
				}
				met := x.Value >= target
				x.Met = &met
				out = append(out, x)
				target = 0
			}
			add(fmt.Sprintf("anka fast path / veth, TCP %s, MTU %d", d.label, mtu), fp, r.Peer(PeerVeth), k, k, target)
		}
	}
	// For reference, no target.
	for _, mtu := range cfg.MTUs {
		k := TCPKey("g2h", mtu)
		add(fmt.Sprintf("anka / veth, TCP guest->host, MTU %d", mtu), anka, r.Peer(PeerVeth), k, k, 0)
	}
	for _, p := range []string{PeerGvproxy, PeerPasst} {
		k := TCPKey("g2h", slices.Min(cfg.MTUs))
		add(fmt.Sprintf("anka / %s, TCP guest->host, MTU %d", p, slices.Min(cfg.MTUs)), anka, r.Peer(p), k, k, 0)
	}
	for _, p := range []string{PeerGvproxy, PeerPasst} {
		add(fmt.Sprintf("anka / %s, UDP 64 B frames/s", p), anka, r.Peer(p), MetricUDP64, MetricUDP64, 0)
	}
	for _, p := range []string{PeerGvproxy, PeerPasst} {
		for _, d := range dirs {
			k := TCPKey(d.key, small)
			add(fmt.Sprintf("anka vhost-user / %s, TCP %s, MTU %d", p, d.label, small), vu, r.Peer(p), k, k, 0)
		}
	}
	for _, d := range dirs {
		for _, mtu := range cfg.MTUs {
			k := TCPKey(d.key, mtu)
			add(fmt.Sprintf("anka vhost-user / anka, TCP %s, MTU %d", d.label, mtu), vu, anka, k, k, 0)
		}
	}
	return out
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// DescribeMachine is nproc, CPU model, kernel and tool versions.
func DescribeMachine(cfg Config) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Versions: map[string]string{}}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	m.Load = loadavg()
	sysctl := func(path string) string {
		b, _ := os.ReadFile(path)
		return strings.TrimSpace(string(b))
	}
	m.Kernel = sysctl("/proc/sys/kernel/osrelease")
	m.TCPCongestion = sysctl("/proc/sys/net/ipv4/tcp_congestion_control")
	m.Qdisc = sysctl("/proc/sys/net/core/default_qdisc")
	first := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return strings.TrimSpace(line)
	}
	if cfg.Iperf3 != "" {
		m.Versions["iperf3"] = first(cfg.Iperf3, "--version")
	}
	if cfg.Gvproxy != "" {
		m.Versions["gvproxy"] = first(cfg.Gvproxy, "-version")
	}
	if cfg.Passt != "" {
		if v := first("dpkg-query", "-W", "-f=${Version}", "passt"); v != "" && !strings.Contains(v, "no packages") {
			m.Versions["passt"] = v
		}
	}
	if cfg.Anka != "" {
		m.Versions["anka"] = first(cfg.Anka, "version")
	}
	return m
}

type column struct {
	head string
	key  string
	unit string // how the cell is formatted
}

func columns(cfg Settings) []column {
	var cols []column
	for _, mtu := range cfg.MTUs {
		cols = append(cols,
			column{fmt.Sprintf("g->h %d", mtu), TCPKey("g2h", mtu), "gbit"},
			column{fmt.Sprintf("h->g %d", mtu), TCPKey("h2g", mtu), "gbit"})
	}
	cols = append(cols,
		column{"RR p50", MetricRRp50, "us"},
		column{"RR p99", MetricRRp99, "us"},
		column{"UDP 64 B", MetricUDP64, "kfps"})
	if cfg.Idle > 0 {
		small := slices.Min(cfg.MTUs)
		cols = append(cols,
			column{fmt.Sprintf("g->h %d, 1 VM", small), IdleKey(small, 0), "gbit"},
			column{fmt.Sprintf("g->h %d, +%d idle", small, cfg.Idle), IdleKey(small, cfg.Idle), "gbit"})
	}
	return cols
}

func cell(p *PeerResult, c column) string {
	m := p.Metrics[c.key]
	if m == nil {
		return "-"
	}
	switch c.unit {
	case "gbit":
		return fmt.Sprintf("%.2f", m.Value)
	case "us":
		return fmt.Sprintf("%.0f", m.Value)
	case "kfps":
		return fmt.Sprintf("%.0f k", m.Value/1e3)
	}
	return fmt.Sprintf("%g", m.Value)
}

// WriteTable prints the figures and the ratios as plain text.
func (r *Results) WriteTable(w io.Writer) {
	cols := columns(r.Settings)
	rows := [][]string{append([]string{"peer"}, headNames(cols)...)}
	for _, p := range r.Peers {
		row := []string{p.Name}
		if p.Skipped != "" && len(p.Metrics) == 0 {
			row = append(row, "skipped: "+p.Skipped)
			rows = append(rows, row)
			continue
		}
		for _, c := range cols {
			row = append(row, cell(p, c))
		}
		rows = append(rows, row)
	}
	widths := map[int]int{}
	for _, row := range rows {
		if len(row) == 2 && strings.HasPrefix(row[1], "skipped") {
			widths[0] = max(widths[0], len(row[0]))
			continue
		}
		for i, c := range row {
			widths[i] = max(widths[i], len([]rune(c)))
		}
	}
	fmt.Fprintln(w, "TCP in Gbit/s (iperf3, the receiver's figure); RR = request/response round trip in µs; UDP 64 B = datagrams/s delivered")
	for _, row := range rows {
		var b strings.Builder
		for i, c := range row {
			if i == 0 {
				fmt.Fprintf(&b, "%-*s", widths[0]+2, c)
				continue
			}
			if len(row) == 2 && strings.HasPrefix(c, "skipped") {
				b.WriteString(c)
				continue
			}
			fmt.Fprintf(&b, "%*s  ", widths[i], c)
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	fmt.Fprintln(w)
	for _, x := range r.Ratios {
		fmt.Fprintf(w, "%-78s %s\n", x.Name, ratioText(x))
	}
	for _, p := range r.Peers {
		for _, e := range p.Errors {
			fmt.Fprintf(w, "error: %s: %s\n", p.Name, e)
		}
	}
}

func headNames(cols []column) []string {
	var h []string
	for _, c := range cols {
		h = append(h, c.head)
	}
	return h
}

func ratioText(x Ratio) string {
	if x.Why != "" {
		return "n/a (" + x.Why + ")"
	}
	v := fmt.Sprintf("%.2f (medians %.2f)", x.Value, x.OfMedians)
	switch {
	case x.Met == nil && x.Note != "":
		return v + "  (" + x.Note + ")"
	case x.Met == nil:
		return v
	case *x.Met:
		return fmt.Sprintf("%s  target >= %.2f: met", v, x.Target)
	default:
		return fmt.Sprintf("%s  target >= %.2f: NOT met", v, x.Target)
	}
}

// Failed reports whether any peer failed.
func (r *Results) Failed() bool {
	return slices.ContainsFunc(r.Peers, func(p *PeerResult) bool { return len(p.Errors) > 0 })
}

// WriteMarkdown writes the figures, the ratios and the machine as the
// generated part of docs/benchmarks.md.
func (r *Results) WriteMarkdown(w io.Writer, chart string) {
	m := r.Machine
	rounds := fmt.Sprintf("%d rounds taken in turn over the peers; figures are medians of the rounds", r.Settings.Count)
	if r.Settings.Count == 1 {
		rounds = "1 round"
	}
	offload := "without offloads"
	if r.Settings.VhostUserOffload {
		offload = "with checksum offload and TSO"
	}
	fmt.Fprintf(w, "Run of %s: %s. Each iperf3 run %s (the first %d s left out), request/response %s, the adapter writing %d frame(s) per write; the vhost-user guest's NIC %s.\n\n",
		r.Date, rounds, r.Settings.Duration, r.Settings.Omit, r.Settings.RRDuration, r.Settings.AdapterBatch, offload)
	fmt.Fprintf(w, "Machine: %d CPUs (`nproc`), %s, Linux %s, %s; load average %s before the run, %s after it.", m.CPUs, m.CPU, m.Kernel, m.Go, m.Load, m.LoadEnd)
	if m.TCPCongestion != "" {
		fmt.Fprintf(w, " TCP congestion control `%s`, default qdisc `%s`, the same for every peer.", m.TCPCongestion, m.Qdisc)
	}
	var vs []string
	for _, k := range []string{"iperf3", "gvproxy", "passt", "anka"} {
		if v := m.Versions[k]; v != "" {
			vs = append(vs, fmt.Sprintf("%s: `%s`", k, v))
		}
	}
	if len(vs) > 0 {
		fmt.Fprintf(w, " Versions: %s.", strings.Join(vs, "; "))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w)
	cols := columns(r.Settings)
	fmt.Fprintf(w, "| peer | %s |\n", strings.Join(headNames(cols), " | "))
	fmt.Fprintf(w, "| --- |%s\n", strings.Repeat(" ---: |", len(cols)))
	for _, p := range r.Peers {
		if p.Skipped != "" && len(p.Metrics) == 0 {
			fmt.Fprintf(w, "| %s | skipped: %s |%s\n", p.Label, p.Skipped, strings.Repeat(" |", len(cols)-1))
			continue
		}
		var cells []string
		for _, c := range cols {
			cells = append(cells, cell(p, c))
		}
		fmt.Fprintf(w, "| %s | %s |\n", p.Label, strings.Join(cells, " | "))
	}
	fmt.Fprintln(w)
	var notes []string
	for _, p := range r.Peers {
		if len(p.Notes) > 0 {
			notes = append(notes, fmt.Sprintf("%s: %s", p.Name, strings.Join(p.Notes, "; ")))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "How each was attached in this run: %s.\n\n", strings.Join(notes, "; "))
	}
	fmt.Fprintln(w, "TCP in Gbit/s as the receiver counted it; g->h is guest to host, h->g host to guest (`iperf3 -R`); RR is one TCP connection with one byte in flight, round-trip time in µs; UDP 64 B is 64-byte payloads (106-byte frames) sent guest->host as fast as the guest can, datagrams per second the host side received.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Ratios: the median of the quotients taken within each round (the machine's drift between rounds cancels), and the quotient of the medians above. The fast path against the veth beside it: the median of the quotients of each pair of runs alternated in one session, and the quotient of the two medians.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| ratio (same run) | per round | of medians | target |")
	fmt.Fprintln(w, "| --- | ---: | ---: | --- |")
	for _, x := range r.Ratios {
		val, med, tgt := fmt.Sprintf("%.2f", x.Value), fmt.Sprintf("%.2f", x.OfMedians), "-"
		if x.Why != "" {
			val, med = "n/a: "+x.Why, ""
		}
		if x.Note != "" && x.Target == 0 {
			tgt = "- (" + x.Note + ")"
		}
		if x.Target > 0 {
			tgt = fmt.Sprintf(">= %.2f", x.Target)
			if x.Met != nil {
				if *x.Met {
					tgt += ": met"
				} else {
					tgt += ": **not met**"
				}
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", x.Name, val, med, tgt)
	}
	for _, p := range r.Peers {
		for _, e := range p.Errors {
			fmt.Fprintf(w, "\nError, %s: %s\n", p.Name, e)
		}
	}
	if chart != "" {
		fmt.Fprintf(w, "\n![peer benchmark chart](%s)\n", chart)
	}
}
