package benchpeers

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// The smoke run of the peer benchmark under make test: every path passes
// traffic for a second or so. Figures come from make bench-peers, never
// from here; this asserts only that bytes and round trips went through.

var built struct {
	anka, tool string
}

const isolatedEnv = "ANKA_BENCHPEERS_ISOLATED"

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Geteuid() != 0 || os.Getenv("ANKA_E2E") == "" || testing.Short() {
		os.Exit(m.Run())
	}
	// As the e2e tests do: the whole run again in network and mount
	// namespaces of its own, with a private /run/netns, so nothing
	// reaches the host's interfaces, routes, firewall or namespaces.
	if os.Getenv(isolatedEnv) == "" {
		os.Exit(frameiotest.RerunIsolated(isolatedEnv))
	}
	os.MkdirAll("/run/netns", 0o755)
	if err := syscall.Mount("benchpeers", "/run/netns", "tmpfs", 0, "mode=755"); err != nil {
		panic("a private /run/netns: " + err.Error())
	}
	exec.Command("ip", "link", "set", "lo", "up").Run()
	dir, err := os.MkdirTemp("", "anka-benchpeers-bin-")
	if err != nil {
		panic(err)
	}
	built.anka = filepath.Join(dir, "anka")
	built.tool = filepath.Join(dir, "benchpeers")
	// The shared plugin sits beside anka, where discovery looks first.
	for out, pkg := range map[string]string{
		built.anka:                            "github.com/anka-net/anka/cmd/anka",
		filepath.Join(dir, "anka-net-shared"): "github.com/anka-net/anka/plugins/shared",
		built.tool:                            "github.com/anka-net/anka/test/benchpeers/cmd/benchpeers",
	} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			os.RemoveAll(dir)
			panic("building " + pkg + ": " + err.Error())
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// lookTool finds a peer's binary: an environment variable, a file in the
// repository (make bench-peers puts gvproxy in build/peers), $PATH.
// The variable set to "none" leaves the tool out.
func lookTool(env, repoFile, name string) string {
	if p := os.Getenv(env); p == "none" {
		return ""
	} else if p != "" {
		return p
	}
	if repoFile != "" {
		_, here, _, _ := runtime.Caller(0)
		p := filepath.Join(filepath.Dir(here), "..", "..", repoFile)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	p, _ := exec.LookPath(name)
	return p
}

func TestSmoke(t *testing.T) {
	if os.Geteuid() != 0 || os.Getenv("ANKA_E2E") == "" {
		t.Skip("needs root and ANKA_E2E=1: makes network namespaces and runs the shared plugin")
	}
	if testing.Short() {
		t.Skip("not in -short")
	}
	for _, tool := range []string{"ip", "unshare", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	cfg := Config{
		Anka:       built.anka,
		Tool:       built.tool,
		Gvproxy:    lookTool("ANKA_GVPROXY", "build/peers/gvproxy", "gvproxy"),
		Passt:      lookTool("ANKA_PASST", "", "passt"),
		Iperf3:     lookTool("ANKA_IPERF3", "", "iperf3"),
		Busybox:    "busybox",
		Duration:   time.Second,
		RRDuration: 500 * time.Millisecond,
		MTUs:       []int{1500},
		Count:      1,
		Idle:       2, // the idle run's code path, small
		FastPath:   true,
		// One pair of runs beside the fast path: the veth, its namespace
		// and its server are made and reached.
		FastPathPairs: 1,
		// WorkDir: $TMPDIR, not t.TempDir(): passt runs as nobody and
		// must reach its socket's folder.
		Logf: t.Logf,
	}
	if cfg.Iperf3 == "" {
		t.Log("iperf3 is not installed: TCP by the harness's own bulk transfer (make bench-peers installs iperf3)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("smoke run took %s", time.Since(start).Round(time.Second))
	keys := []string{TCPKey("g2h", 1500), TCPKey("h2g", 1500), MetricRRtps, MetricUDP64}
	for _, p := range res.Peers {
		mustRun := p.Name == PeerAnka || p.Name == PeerAnkaVhostUser || p.Name == PeerVeth
		switch {
		case p.Skipped != "" && mustRun:
			t.Errorf("%s was skipped: %s", p.Name, p.Skipped)
			continue
		case p.Skipped != "":
			t.Logf("%s skipped: %s", p.Name, p.Skipped)
			continue
		case p.Name == PeerAnkaFastPath && len(p.Errors) > 0:
			// The fast-path guest is a veth the harness adds to the
			// plugin's bridge; a plugin may rightly refuse such a port.
			t.Logf("fast path: %v", p.Errors)
			continue
		}
		for _, e := range p.Errors {
			t.Errorf("%s: %s", p.Name, e)
		}
		if len(p.Errors) > 0 {
			continue
		}
		want := keys
		if p.Name == PeerAnka {
			want = append(want, IdleKey(1500, 0), IdleKey(1500, cfg.Idle))
		}
		if p.Name == PeerAnkaFastPath {
			for _, d := range []string{"g2h", "h2g"} {
				want = append(want, BesideKey(TCPKey(d, 1500)), BesideRatioKey(TCPKey(d, 1500)))
			}
		}
		for _, k := range want {
			if p.Get(k) <= 0 {
				t.Errorf("%s: no traffic in %s", p.Name, k)
			}
		}
		t.Logf("%s: TCP g->h %.2f, h->g %.2f Gbit/s; %.0f round trips/s; UDP %.0f frames/s", p.Name,
			p.Get(TCPKey("g2h", 1500)), p.Get(TCPKey("h2g", 1500)), p.Get(MetricRRtps), p.Get(MetricUDP64))
	}
}
