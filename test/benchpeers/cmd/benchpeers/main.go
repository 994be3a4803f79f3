// Command benchpeers measures this project's shared network against its
// peers (gvproxy, passt, the kernel's veth, the adapter's own ceiling)
// with a network namespace standing in for the guest. `make bench-peers`
// runs it; see docs/benchmarks.md.
//
//	benchpeers [run] [flags]        the whole benchmark (root; runs in namespaces of its own)
//	benchpeers adapter [flags]      a guest TAP joined to a peer's socket (QEMU's framings, vhost-user)
//	benchpeers rr-server -l ADDR    echo server of the request/response test
//	benchpeers rr-client -c ADDR    its client; prints JSON
//	benchpeers udp-sink, udp-blast  the small-UDP test (datagrams delivered per second)
//	benchpeers bulk-server, bulk-client [-R]   TCP bulk transfer, used when iperf3 is missing
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anka-net/anka/test/benchpeers"
)

func main() {
	args := os.Args[1:]
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = run(args)
	case "report":
		err = report(args)
	case "adapter":
		err = adapter(args)
	case "rr-server":
		err = rrServer(args)
	case "rr-client":
		err = rrClient(args)
	case "udp-sink":
		err = udpSink(args)
	case "udp-blast":
		err = udpBlast(args)
	case "bulk-server":
		err = bulkServer(args)
	case "bulk-client":
		err = bulkClient(args)
	default:
		err = fmt.Errorf("unknown command %q: run, report, adapter, rr-server, rr-client, udp-sink, udp-blast, bulk-server or bulk-client", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchpeers:", err)
		os.Exit(1)
	}
}

func adapter(args []string) error {
	fs := flag.NewFlagSet("adapter", flag.ExitOnError)
	var o benchpeers.AdapterOptions
	fs.StringVar(&o.TAP, "tap", "eth0", "TAP interface to create in this namespace (the guest's NIC)")
	fs.IntVar(&o.MTU, "mtu", 1500, "MTU of the TAP and the socket")
	fs.StringVar(&o.MAC, "mac", "", "MAC address of the TAP")
	fs.StringVar(&o.DgramBind, "dgram-bind", "", "unix datagram: bind this path (QEMU's local.path)")
	fs.StringVar(&o.DgramPeer, "dgram-peer", "", "unix datagram: send to this path (QEMU's remote.path)")
	fs.StringVar(&o.StreamConnect, "stream-connect", "", "unix stream: connect to this listening socket (4-byte big-endian length per frame)")
	fs.StringVar(&o.StreamListen, "stream-listen", "", "unix stream: listen on this path")
	fs.StringVar(&o.VhostUser, "vhost-user", "", "vhost-user: connect to this back-end socket as QEMU's front-end and the guest's virtio-net driver")
	fs.BoolVar(&o.VhostUserNoOffload, "vhost-user-no-offload", false, "vhost-user: the guest's NIC without checksum offload and TSO (its stack sums and segments every frame)")
	fs.IntVar(&o.VhostUserQueueSize, "vhost-user-queue", 1024, "vhost-user: size of both virtqueues (QEMU's rx_queue_size, tx_queue_size; anka gives its QEMU VMs 1024)")
	fs.IntVar(&o.Batch, "batch", 1, "frames per socket write; 1 is QEMU's one frame per write (vhost-user moves up to 64 per call)")
	fs.IntVar(&o.TxQueueLen, "txqueuelen", benchpeers.DefaultTxQueueLen, "the TAP's ring of frames waiting for the adapter")
	fs.DurationVar(&o.WriteTimeout, "write-timeout", time.Second, "how long a write to a full socket waits before dropping")
	verbose := fs.Bool("v", false, "log frame I/O warnings")
	fs.Parse(args)
	if *verbose {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if path := os.Getenv(adapterProfileEnv); path != "" {
		stop, err := profileBySignal(fmt.Sprintf("%s.%d", path, os.Getpid()))
		if err != nil {
			return err
		}
		defer stop()
	}
	a, err := benchpeers.StartAdapter(o)
	if err != nil {
		return err
	}
	fmt.Println("adapter ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	var stopErr error
	select {
	case <-sig:
	case <-a.Done():
		stopErr = a.Err()
	}
	a.Close()
	t, s := a.Stats()
	fmt.Printf("adapter done: tap rx %d tx %d dropped %d/%d; socket rx %d tx %d dropped %d/%d\n",
		t.RxFrames, t.TxFrames, t.RxDropped, t.TxDropped, s.RxFrames, s.TxFrames, s.RxDropped, s.TxDropped)
	if stopErr != nil && !errors.Is(stopErr, context.Canceled) {
		return fmt.Errorf("adapter stopped: %w", stopErr)
	}
	return nil
}

// adapterProfileEnv names a file prefix: each adapter writes a CPU
// profile of itself to PREFIX.PID, from its start until it is told to
// stop (the harness sends SIGTERM at the end of a session). A SIGUSR1
// ends the profile at once and starts the next, PREFIX.PID.1, then .2,
// and so on, so one phase of a session (say host->guest) can be cut out.
// run's environment reaches the adapters it starts:
//
//	BENCHPEERS_ADAPTER_CPUPROFILE=/tmp/adapter.pprof build/peers/benchpeers run -peers anka-vhost-user ...
//	go tool pprof -top build/peers/benchpeers /tmp/adapter.pprof.PID
const adapterProfileEnv = "BENCHPEERS_ADAPTER_CPUPROFILE"

// profileBySignal profiles to path until stop, starting a new file
// (path.1, path.2, ...) at each SIGUSR1.
func profileBySignal(path string) (stop func(), err error) {
	cur, err := startCPUProfile(path)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	done := make(chan struct{})
	go func() {
		for n := 1; ; n++ {
			select {
			case <-done:
				return
			case <-sig:
			}
			mu.Lock()
			if cur != nil {
				cur()
			}
			cur, _ = startCPUProfile(fmt.Sprintf("%s.%d", path, n))
			mu.Unlock()
		}
	}()
	return func() {
		signal.Stop(sig)
		close(done)
		mu.Lock()
		if cur != nil {
			cur()
			cur = nil
		}
		mu.Unlock()
	}, nil
}

func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", adapterProfileEnv, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", adapterProfileEnv, err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

func rrServer(args []string) error {
	fs := flag.NewFlagSet("rr-server", flag.ExitOnError)
	addr := fs.String("l", ":7777", "listen address")
	size := fs.Int("size", 1, "message size in bytes")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	return benchpeers.ServeRR(ln, *size)
}

func rrClient(args []string) error {
	fs := flag.NewFlagSet("rr-client", flag.ExitOnError)
	addr := fs.String("c", "", "server address")
	size := fs.Int("size", 1, "message size in bytes")
	d := fs.Duration("t", 3*time.Second, "how long")
	n := fs.Int("n", 0, "transactions (instead of -t)")
	fs.Parse(args)
	r, err := benchpeers.RunRR(*addr, *size, *d, *n, 3*time.Second)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

func udpSink(args []string) error {
	fs := flag.NewFlagSet("udp-sink", flag.ExitOnError)
	ctl := fs.String("l", ":5202", "control address (TCP)")
	data := fs.String("u", ":5202", "data address (UDP)")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *ctl)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", *data)
	if err != nil {
		return err
	}
	return benchpeers.ServeUDPSink(ln, pc)
}

func udpBlast(args []string) error {
	fs := flag.NewFlagSet("udp-blast", flag.ExitOnError)
	ctl := fs.String("c", "", "the sink's control address (TCP)")
	data := fs.String("u", "", "the sink's data address (UDP; default: -c)")
	size := fs.Int("size", 64, "datagram payload bytes")
	d := fs.Duration("t", 5*time.Second, "how long")
	fs.Parse(args)
	if *data == "" {
		*data = *ctl
	}
	r, err := benchpeers.RunUDPBlast(*ctl, *data, *size, *d)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

func bulkServer(args []string) error {
	fs := flag.NewFlagSet("bulk-server", flag.ExitOnError)
	addr := fs.String("l", ":5201", "listen address")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	return benchpeers.ServeBulk(ln)
}

func bulkClient(args []string) error {
	fs := flag.NewFlagSet("bulk-client", flag.ExitOnError)
	addr := fs.String("c", "", "server address")
	d := fs.Duration("t", 2*time.Second, "how long")
	reverse := fs.Bool("R", false, "the server sends")
	fs.Parse(args)
	n, bps, err := benchpeers.RunBulk(*addr, *d, *reverse)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{"bytes": n, "bits_per_second": bps})
}

const isolatedEnv = "BENCHPEERS_ISOLATED"

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var cfg benchpeers.Config
	fs.StringVar(&cfg.Anka, "anka", "bin/anka", "the anka binary; its plugins sit beside it")
	fs.StringVar(&cfg.Gvproxy, "gvproxy", "", "gvproxy binary (default: build/peers/gvproxy, then $PATH; \"none\" skips)")
	fs.StringVar(&cfg.Passt, "passt", "", "passt binary (default: $PATH; \"none\" skips)")
	fs.StringVar(&cfg.Iperf3, "iperf3", "iperf3", "iperf3 binary")
	fs.StringVar(&cfg.Busybox, "busybox", "busybox", "busybox binary (udhcpc)")
	fs.DurationVar(&cfg.Duration, "t", 5*time.Second, "length of each iperf3 run")
	fs.IntVar(&cfg.Omit, "omit", 1, "seconds at the start of each iperf3 run left out (-O)")
	fs.DurationVar(&cfg.RRDuration, "rr-t", 3*time.Second, "length of the request/response run")
	mtus := fs.String("mtu", "1500,65520", "MTUs, comma-separated")
	fs.IntVar(&cfg.Count, "count", 3, "rounds, taken in turn over the peers; figures are medians")
	peers := fs.String("peers", "", "peers to run, comma-separated (default all: "+strings.Join(benchpeers.AllPeers, ",")+")")
	fs.IntVar(&cfg.Idle, "idle", 16, "idle VMs for the idle run (0 skips it)")
	fastPath := fs.String("fastpath", "auto", "auto: measure the kernel fast path when the shared plugin has a bridge; off")
	fs.IntVar(&cfg.FastPathPairs, "fastpath-pairs", 2, "pairs of TCP runs per direction in the fast-path session, through the bridge and through a veth beside it (the kernel limit), alternated; 0: none")
	fs.IntVar(&cfg.Batch, "batch", 1, "frames per adapter write (1: QEMU's)")
	fs.BoolVar(&cfg.VhostUserNoOffload, "vhost-user-no-offload", false, "the vhost-user guest's NIC without checksum offload and TSO")
	jsonOut := fs.String("json", "", "write the results as JSON here")
	pngOut := fs.String("png", "", "write the chart here")
	doc := fs.String("doc", "", "replace the generated section of this Markdown file (between the bench-peers markers)")
	fs.StringVar(&cfg.WorkDir, "workdir", "", "where sockets, state and logs go (default: $TMPDIR)")
	keep := fs.Bool("keep-going", false, "exit 0 even when a peer failed")
	fs.Parse(args)

	if os.Geteuid() != 0 {
		return errors.New("run needs root: it makes network namespaces, TAPs and veths")
	}
	if os.Getenv(isolatedEnv) == "" {
		return isolate()
	}
	// A private /run/netns: the namespaces this run makes are gone with it.
	os.MkdirAll("/run/netns", 0o755)
	if err := syscall.Mount("benchpeers", "/run/netns", "tmpfs", 0, "mode=755"); err != nil {
		return fmt.Errorf("private /run/netns: %w", err)
	}
	exec.Command("ip", "link", "set", "lo", "up").Run()

	for _, m := range strings.Split(*mtus, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(m))
		if err != nil {
			return fmt.Errorf("-mtu %q: %w", *mtus, err)
		}
		cfg.MTUs = append(cfg.MTUs, v)
	}
	if *peers != "" {
		cfg.Peers = strings.Split(*peers, ",")
	}
	cfg.FastPath = *fastPath != "off"
	if cfg.FastPathPairs < 0 {
		return fmt.Errorf("-fastpath-pairs %d: give the number of pairs of runs, 0 or more", cfg.FastPathPairs)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg.Tool = self
	if cfg.Anka, err = filepath.Abs(cfg.Anka); err != nil {
		return err
	}
	if _, err := os.Stat(cfg.Anka); err != nil {
		return fmt.Errorf("anka binary: %w (make build)", err)
	}
	cfg.Gvproxy = findTool(cfg.Gvproxy, "build/peers/gvproxy", "gvproxy")
	cfg.Passt = findTool(cfg.Passt, "", "passt")
	for _, t := range []*string{&cfg.Iperf3, &cfg.Busybox} {
		p, err := exec.LookPath(*t)
		if err != nil {
			return fmt.Errorf("%s: %w (make bench-peers installs it)", *t, err)
		}
		*t = p
	}
	cfg.Logf = func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := benchpeers.Run(ctx, cfg)
	if res == nil {
		return err
	}
	fmt.Println()
	res.WriteTable(os.Stdout)
	if err != nil {
		return err
	}
	if err := writeOutputs(res, *jsonOut, *pngOut, *doc); err != nil {
		return err
	}
	if res.Failed() && !*keep {
		return errors.New("some peers failed (see the errors above)")
	}
	return nil
}

// report renders a saved run again: the ratios are taken anew from its
// figures, so a change to the report needs no new run.
func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	in := fs.String("json", "docs/benchmarks-peers.json", "the run to read (written by run -json)")
	pngOut := fs.String("png", "", "write the chart here")
	doc := fs.String("doc", "", "replace the generated part of this Markdown file")
	fs.Parse(args)
	b, err := os.ReadFile(*in)
	if err != nil {
		return fmt.Errorf("%w (make bench-peers writes it)", err)
	}
	res, err := benchpeers.Reload(b)
	if err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	res.WriteTable(os.Stdout)
	return writeOutputs(res, *in, *pngOut, *doc)
}

func writeOutputs(res *benchpeers.Results, jsonOut, pngOut, doc string) error {
	if jsonOut != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		// Whole or not at all: report rewrites the file it read.
		tmp := jsonOut + ".tmp"
		if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
			os.Remove(tmp)
			return err
		}
		if err := os.Rename(tmp, jsonOut); err != nil {
			return err
		}
	}
	chart := ""
	if pngOut != "" {
		if err := res.WriteChart(pngOut); err != nil {
			return err
		}
		chart = pngOut
		if doc != "" {
			if rel, err := filepath.Rel(filepath.Dir(doc), pngOut); err == nil {
				chart = rel
			}
		}
	}
	if doc != "" {
		if err := benchpeers.UpdateDoc(doc, res, chart); err != nil {
			return err
		}
	}
	return nil
}

// findTool resolves a peer's binary: the flag, then a file, then $PATH;
// "" when none is there or the flag says none.
func findTool(flagVal, file, name string) string {
	if flagVal == "none" {
		return ""
	}
	if flagVal != "" {
		if p, err := exec.LookPath(flagVal); err == nil {
			abs, _ := filepath.Abs(p)
			return abs
		}
		return ""
	}
	if file != "" {
		if fi, err := os.Stat(file); err == nil && !fi.IsDir() {
			abs, _ := filepath.Abs(file)
			return abs
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return ""
}

// isolate runs this command again in network and mount namespaces of its
// own, so that nothing it does reaches the host's interfaces, routes,
// firewall or /run/netns, and returns its result.
func isolate() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command("unshare", append([]string{"--net", "--mount", "--propagation", "private", "--", self}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), isolatedEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("unshare: %w", err)
	}
	go func() {
		for s := range sig {
			cmd.Process.Signal(s)
		}
	}()
	if err := cmd.Wait(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			os.Exit(ee.ExitCode())
		}
		return err
	}
	return nil
}
