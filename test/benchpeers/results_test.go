package benchpeers

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestReloadTakesRatiosAgain(t *testing.T) {
	m := func(runs ...float64) *Metric {
		x := &Metric{Unit: "Gbit/s"}
		for i, v := range runs {
			x.Runs = append(x.Runs, v)
			x.Rounds = append(x.Rounds, i)
		}
		x.Value = median(x.Runs)
		return x
	}
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
