package benchpeers

import (
	"encoding/json"
	"math"
	"os"
	"strings"
	"testing"
)

// m is a metric of one run per round.
func m(runs ...float64) *Metric {
	x := &Metric{Unit: "Gbit/s"}
	for i, v := range runs {
		x.Runs = append(x.Runs, v)
		x.Rounds = append(x.Rounds, i)
	}
	x.Value = median(x.Runs)
	return x
}

func TestReloadTakesRatiosAgain(t *testing.T) {
	k := TCPKey("g2h", 65520)
	saved := Results{
		Settings: Settings{MTUs: []int{65520}},
		Peers: []*PeerResult{
			{Name: PeerAnkaFastPath, Metrics: map[string]*Metric{k: m(20, 30)}},
			{Name: PeerPasst, Metrics: map[string]*Metric{k: m(10, 10)}},
		},
		// A stale ratio the reload must replace.
		Ratios: []Ratio{{Name: "old", Value: 99}},
	}
	b, err := json.Marshal(saved)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Reload(b)
	if err != nil {
		t.Fatal(err)
	}
	var got *Ratio
	for i := range r.Ratios {
		if r.Ratios[i].Name == "old" {
			t.Fatal("the saved ratios were kept")
		}
		if r.Ratios[i].Name == "anka fast path / passt, TCP guest->host, MTU 65520" {
			got = &r.Ratios[i]
		}
	}
	if got == nil || got.Value != 2.5 || got.Met == nil || !*got.Met {
		t.Fatalf("fast path / passt = %+v, want 2.5 (paired per round) and met", got)
	}
	for _, bad := range []string{"", "{}", `{"peers":[]}`, "not json"} {
		if _, err := Reload([]byte(bad)); err == nil || !strings.Contains(err.Error(), "not a bench-peers run") {
			t.Errorf("Reload(%q) = %v, want a 'not a bench-peers run' error", bad, err)
		}
	}
}

func TestVhostUserRatios(t *testing.T) {
	big, small := TCPKey("h2g", 65520), TCPKey("g2h", 1500)
	r := &Results{
		Settings: Settings{MTUs: []int{1500, 65520}},
		Peers: []*PeerResult{
			{Name: PeerAnka, Notes: []string{"dgram endpoint"}, Metrics: map[string]*Metric{small: m(1, 1)}},
			{Name: PeerAnkaVhostUser, Metrics: map[string]*Metric{big: m(3, 5), small: m(0.8, 0.9)}},
			{Name: PeerGvproxy, Metrics: map[string]*Metric{big: m(2, 2)}},
			{Name: PeerPasst, Skipped: "passt is not installed"},
			{Name: PeerAdapterDgram, Metrics: map[string]*Metric{small: m(1, 1), big: m(3, 3)}},
		},
	}
	got := map[string]Ratio{}
	for _, x := range ratios(r, Config{MTUs: r.Settings.MTUs}) {
		got[x.Name] = x
	}
	for _, tc := range []struct {
		name  string
		value float64
		met   bool
		why   string
		note  string // a ratio with no target says what it is for
	}{
		// At MTU 65520 the socket paths are shown against the peers and
		// held to their ceiling, not to the peers' targets.
		{name: "anka vhost-user / gvproxy, TCP host->guest, MTU 65520", value: 2, note: "socket path: bounded by the ceiling"},
		{name: "adapter-dgram / gvproxy, TCP host->guest, MTU 65520", value: 1.5, note: "the socket paths' bound"},
		{name: "anka vhost-user / passt, TCP host->guest, MTU 65520", why: "passt skipped: passt is not installed"},
		{name: "anka vhost-user / adapter-dgram, TCP guest->host, MTU 1500", value: 0.85, met: false},
		{name: "anka vhost-user / anka, TCP guest->host, MTU 1500", value: 0.85},
		{name: "anka vhost-user / gvproxy, TCP guest->host, MTU 1500", why: "not measured"},
	} {
		x, ok := got[tc.name]
		switch {
		case !ok:
			t.Errorf("no ratio %q", tc.name)
		case tc.why != "":
			if x.Why != tc.why {
				t.Errorf("%s: unavailable %q, want %q", tc.name, x.Why, tc.why)
			}
		case x.Why != "" || math.Abs(x.Value-tc.value) > 1e-9:
			t.Errorf("%s = %+v, want %.2f", tc.name, x, tc.value)
		case x.Target > 0 && (x.Met == nil || *x.Met != tc.met):
			t.Errorf("%s: met %v, want %v", tc.name, x.Met, tc.met)
		case tc.note != "" && (x.Target != 0 || x.Met != nil || x.Note != tc.note):
			t.Errorf("%s = %+v, want no target and the note %q", tc.name, x, tc.note)
		}
	}
}

// The machine's TCP congestion control and qdisc are recorded and printed:
// BBR and cubic weigh the same path differently.
func TestMachineRecordsCongestionControl(t *testing.T) {
	m := DescribeMachine(Config{})
	want, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
	if err != nil {
		t.Skip("no /proc/sys/net/ipv4/tcp_congestion_control:", err)
	}
	if m.TCPCongestion == "" || m.TCPCongestion != strings.TrimSpace(string(want)) {
		t.Fatalf("TCPCongestion = %q, want %q", m.TCPCongestion, strings.TrimSpace(string(want)))
	}
	r := &Results{Machine: m, Settings: Settings{MTUs: []int{1500}}}
	var b strings.Builder
	r.WriteMarkdown(&b, "")
	if !strings.Contains(b.String(), "TCP congestion control `"+m.TCPCongestion+"`") {
		t.Fatalf("the page does not name the congestion control:\n%s", b.String())
	}
}

// With runs alternated beside the fast path, its target against veth is
// taken from the quotients of those pairs; the veth peer's session,
// minutes away, is then for reference only. Without them, the target
// stays on the veth peer.
func TestFastPathBesideRatios(t *testing.T) {
	g, h := TCPKey("g2h", 1500), TCPKey("h2g", 1500)
	veth := &PeerResult{Name: PeerVeth, Metrics: map[string]*Metric{g: m(20, 20), h: m(20, 20)}}
	fp := &PeerResult{Name: PeerAnkaFastPath, Metrics: map[string]*Metric{
		g: m(9, 10, 17, 18), BesideKey(g): m(10, 10, 20, 20), BesideRatioKey(g): m(0.95, 1, 0.85, 0.95),
		h: m(15, 15),
	}}
	r := &Results{Settings: Settings{MTUs: []int{1500}}, Peers: []*PeerResult{fp, veth}}
	got := map[string]Ratio{}
	for _, x := range ratios(r, Config{MTUs: r.Settings.MTUs}) {
		got[x.Name] = x
	}
	beside := got["anka fast path / veth beside it, runs alternated, TCP guest->host, MTU 1500"]
	if beside.Rounds != 4 || math.Abs(beside.Value-0.95) > 1e-9 || math.Abs(beside.OfMedians-13.5/15) > 1e-9 ||
		beside.Target != 0.9 || beside.Met == nil || !*beside.Met {
		t.Errorf("beside, guest->host = %+v, want the median of the pairs 0.95 over 4, of medians 0.90, met", beside)
	}
	if x := got["anka fast path / veth, TCP guest->host, MTU 1500"]; x.Target != 0 || x.Met != nil || x.Why != "" {
		t.Errorf("veth peer, guest->host = %+v, want a figure with no target", x)
	}
	if _, ok := got["anka fast path / veth beside it, runs alternated, TCP host->guest, MTU 1500"]; ok {
		t.Error("a beside ratio host->guest, where no pairs ran")
	}
	if x := got["anka fast path / veth, TCP host->guest, MTU 1500"]; x.Target != 0.9 || x.Met == nil || *x.Met {
		t.Errorf("veth peer, host->guest = %+v, want 0.75 against the target, not met", x)
	}
}
