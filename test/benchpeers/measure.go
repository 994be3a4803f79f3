package benchpeers

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// iperfTCP runs one iperf3 TCP test from the guest and returns what the
// receiver got, in bit/s. reverse makes the host side send (-R).
func (s *session) iperfTCP(ctx context.Context, addr string, reverse bool) (tcpRun, error) {
	if s.h.cfg.Iperf3 == "" {
		return s.bulkTCP(ctx, addr, reverse)
	}
	args := s.iperfArgs(addr)
	if reverse {
		args = append(args, "-R")
	}
	var out struct {
		Intervals []struct {
			Sum struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Omitted       bool    `json:"omitted"`
			} `json:"sum"`
		} `json:"intervals"`
		End struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := s.iperf(ctx, args, &out); err != nil {
		return tcpRun{}, err
	}
	if out.End.SumReceived.Bytes <= 0 {
		return tcpRun{}, fmt.Errorf("no bytes arrived")
	}
	r := tcpRun{bps: out.End.SumReceived.BitsPerSecond, retransmits: out.End.SumSent.Retransmits}
	for _, iv := range out.Intervals {
		if !iv.Sum.Omitted {
			r.intervals = append(r.intervals, iv.Sum.BitsPerSecond/1e9)
		}
	}
	return r, nil
}

// tcpRun is one iperf3 TCP run: the receiver's rate, the sender's
// retransmissions, the rate of each second (Gbit/s).
type tcpRun struct {
	bps         float64
	retransmits int
	intervals   []float64
}

func (r tcpRun) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%.2f Gbit/s (%d retransmits; per second:", r.bps/1e9, r.retransmits)
	for _, v := range r.intervals {
		fmt.Fprintf(&b, " %.2f", v)
	}
	b.WriteString(")")
	return b.String()
}

// udp sends 64-byte UDP payloads (106-byte frames) guest->host as fast
// as the guest can for the run's duration and returns the datagrams per
// second the host side received (benchpeers udp-blast and udp-sink).
func (s *session) udp(ctx context.Context) (UDPResult, error) {
	cfg := &s.h.cfg
	addr := netJoin(s.hostAddr, 5202)
	c, cancel := context.WithTimeout(ctx, cfg.Duration+60*time.Second)
	defer cancel()
	out, err := s.guest.output(c, nil, cfg.Tool, "udp-blast", "-c", addr, "-size", "64", "-t", cfg.Duration.String())
	if err != nil {
		return UDPResult{}, err
	}
	var r UDPResult
	if err := json.Unmarshal(out, &r); err != nil {
		return UDPResult{}, fmt.Errorf("udp-blast printed %q: %w", out, err)
	}
	if r.Received == 0 || r.PerSecond <= 0 {
		return r, fmt.Errorf("no datagram arrived (%d sent)", r.Sent)
	}
	return r, nil
}

func (s *session) iperfArgs(addr string) []string {
	cfg := &s.h.cfg
	secs := max(1, int((cfg.Duration+time.Second/2)/time.Second))
	args := []string{"-c", addr, "-p", "5201", "-t", strconv.Itoa(secs), "-J", "--connect-timeout", "5000"}
	if cfg.Omit > 0 && secs > cfg.Omit {
		args = append(args, "-O", strconv.Itoa(cfg.Omit))
	}
	return args
}

// iperf runs the iperf3 client in the guest, retrying once when the
// server is still busy with the last test, and decodes its JSON.
func (s *session) iperf(ctx context.Context, args []string, v any) error {
	cfg := &s.h.cfg
	limit := cfg.Duration + time.Duration(cfg.Omit)*time.Second + 30*time.Second
	var last error
	for try := 0; try < 3; try++ {
		c, cancel := context.WithTimeout(ctx, limit)
		out, err := s.guest.output(c, nil, cfg.Iperf3, args...)
		cancel()
		var e struct {
			Error string `json:"error"`
		}
		json.Unmarshal(out, &e)
		if err == nil && e.Error == "" {
			return json.Unmarshal(out, v)
		}
		if e.Error != "" {
			last = fmt.Errorf("iperf3: %s", e.Error)
		} else {
			last = err
		}
		if ctx.Err() != nil || !strings.Contains(e.Error, "busy") && !strings.Contains(e.Error, "connect") {
			break
		}
		time.Sleep(time.Second)
	}
	return last
}

// rr runs the request/response client in the guest: for d, or n
// transactions when n > 0.
func (s *session) rr(ctx context.Context, addr string, d time.Duration, n int) (RRResult, error) {
	cfg := &s.h.cfg
	args := []string{"rr-client", "-c", addr, "-t", d.String(), "-n", strconv.Itoa(n)}
	c, cancel := context.WithTimeout(ctx, d+20*time.Second)
	defer cancel()
	out, err := s.guest.output(c, nil, cfg.Tool, args...)
	if err != nil {
		return RRResult{}, err
	}
	var r RRResult
	if err := json.Unmarshal(out, &r); err != nil {
		return RRResult{}, fmt.Errorf("rr-client printed %q: %w", out, err)
	}
	return r, nil
}

// lease is what a DHCP server handed the guest.
type lease struct {
	IP, Router string
	Prefix     int
	MTU        int
}

// dhcp runs busybox udhcpc on the guest's interface, applies the lease
// (address and default route; the MTU stays what the run sets) and
// returns it.
func (s *session) dhcp(ctx context.Context, iface string) (lease, error) {
	cfg := &s.h.cfg
	file := filepath.Join(s.dir, "lease")
	os.Remove(file)
	env := append(os.Environ(), "BENCHPEERS_LEASE="+file)
	c, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	if _, err := s.guest.output(c, env, cfg.Busybox, "udhcpc", "-i", iface, "-f", "-q", "-n", "-t", "10", "-T", "2", "-s", filepath.Join(s.h.work, "udhcpc.sh")); err != nil {
		return lease{}, fmt.Errorf("DHCP: %w", err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return lease{}, fmt.Errorf("DHCP: udhcpc bound no lease: %w", err)
	}
	var l lease
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "ip":
			l.IP = v
		case "mask":
			l.Prefix, _ = strconv.Atoi(v)
		case "router":
			l.Router, _, _ = strings.Cut(v, " ")
		case "mtu":
			l.MTU, _ = strconv.Atoi(v)
		}
	}
	if l.IP == "" {
		return lease{}, fmt.Errorf("DHCP: a lease without an address: %q", b)
	}
	if l.Prefix == 0 {
		l.Prefix = 24
	}
	if err := s.guest.ip("addr", "add", fmt.Sprintf("%s/%d", l.IP, l.Prefix), "dev", iface); err != nil {
		return l, err
	}
	if l.Router != "" {
		if err := s.guest.ip("route", "add", "default", "via", l.Router, "dev", iface); err != nil {
			return l, err
		}
	}
	return l, nil
}

const udhcpcScript = `#!/bin/sh
# udhcpc event script of the peer benchmark: writes the lease for the
# harness, which applies it.
case "$1" in
bound|renew)
	printf 'ip=%s\nmask=%s\nrouter=%s\nmtu=%s\nserverid=%s\n' "$ip" "$mask" "$router" "$mtu" "$serverid" >"$BENCHPEERS_LEASE"
	;;
esac
exit 0
`

func (h *harness) writeScripts() error {
	return os.WriteFile(filepath.Join(h.work, "udhcpc.sh"), []byte(udhcpcScript), 0o755)
}

// bulkTCP is the tool's own transfer, when iperf3 is not installed.
func (s *session) bulkTCP(ctx context.Context, addr string, reverse bool) (tcpRun, error) {
	cfg := &s.h.cfg
	args := []string{"bulk-client", "-c", netJoin(addr, 5201), "-t", cfg.Duration.String()}
	if reverse {
		args = append(args, "-R")
	}
	c, cancel := context.WithTimeout(ctx, cfg.Duration+40*time.Second)
	defer cancel()
	out, err := s.guest.output(c, nil, cfg.Tool, args...)
	if err != nil {
		return tcpRun{}, err
	}
	var r struct {
		Bytes int64   `json:"bytes"`
		BPS   float64 `json:"bits_per_second"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return tcpRun{}, fmt.Errorf("bulk-client printed %q: %w", out, err)
	}
	return tcpRun{bps: r.BPS}, nil
}
