package capture

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeClock advances by step on every reading, so timestamps are exact.
type fakeClock struct {
	mu   sync.Mutex
	t    time.Time
	step time.Duration
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(f.step)
	return f.t
}

// frame returns a valid Ethernet/IPv4/UDP frame of size bytes whose
// payload carries id, so frames can be told apart after a read-back.
func frame(tb testing.TB, id uint32, size int) []byte {
	tb.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: []byte{192, 168, 64, 5}, DstIP: []byte{192, 168, 64, 1}}
	udp := &layers.UDP{SrcPort: 5000, DstPort: 5001}
	_ = udp.SetNetworkLayerForChecksum(ip)
	payload := make([]byte, size-14-20-8)
	binary.BigEndian.PutUint32(payload, id)
	for i := 4; i < len(payload); i++ {
		payload[i] = byte(id) + byte(i)
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: []byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}, DstMAC: []byte{2, 0, 0, 0, 0, 1},
			EthernetType: layers.EthernetTypeIPv4}, ip, udp, gopacket.Payload(payload))
	if err != nil {
		tb.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

type record struct {
	ci   gopacket.CaptureInfo
	data []byte
}

func readBack(t *testing.T, path string) (snaplen uint32, recs []record) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("%s is not a pcap file: %v", path, err)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Fatalf("link type %v, want Ethernet", r.LinkType())
	}
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			return r.Snaplen(), recs
		}
		if err != nil {
			t.Fatalf("reading %s: %v", path, err)
		}
		recs = append(recs, record{ci, data})
	}
}

func TestStartWriteStopReadBack(t *testing.T) {
	clk := &fakeClock{t: epoch, step: 1500 * time.Microsecond}
	c := &Capture{Now: clk.Now}
	path := filepath.Join(t.TempDir(), "vm1.pcap")
	if err := c.Start(path, 0); err != nil {
		t.Fatal(err)
	}
	if p, ok, err := c.Active(); p != path || !ok || err != nil {
		t.Fatalf("Active = %q, %v, %v; want %q, true, nil", p, ok, err, path)
	}
	sizes := []int{60, 1514, 42 + 100, 9014}
	var want [][]byte
	for i, n := range sizes {
		f := frame(t, uint32(i), n)
		want = append(want, f)
		c.Write(f)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := c.Active(); ok {
		t.Fatal("Active after Stop")
	}
	if fr, by := c.Stats(); fr != 4 || by != 60+1514+142+9014 {
		t.Errorf("Stats = %d frames %d bytes", fr, by)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}

	snap, recs := readBack(t, path)
	if snap != DefaultSnaplen {
		t.Errorf("snaplen %d, want %d", snap, DefaultSnaplen)
	}
	if len(recs) != len(want) {
		t.Fatalf("%d records, want %d", len(recs), len(want))
	}
	// Start reads the clock once, then each frame once.
	ts := epoch.Add(clk.step)
	for i, r := range recs {
		ts = ts.Add(clk.step)
		if !bytes.Equal(r.data, want[i]) || r.ci.Length != len(want[i]) || r.ci.CaptureLength != len(want[i]) {
			t.Errorf("record %d: %d/%d bytes, differs from frame", i, r.ci.CaptureLength, r.ci.Length)
		}
		if !r.ci.Timestamp.Equal(ts) {
			t.Errorf("record %d: time %v, want %v", i, r.ci.Timestamp.UTC(), ts)
		}
		p := gopacket.NewPacket(r.data, layers.LayerTypeEthernet, gopacket.Default)
		if p.ErrorLayer() != nil || p.Layer(layers.LayerTypeUDP) == nil {
			t.Errorf("record %d does not decode as Ethernet/IPv4/UDP: %v", i, p.ErrorLayer())
		}
	}
	tcpdump(t, path, len(want))
}

// tcpdump reads the file with the real tool when it is installed; it is
// the reader users have, and stricter about headers than pcapgo.
func tcpdump(t *testing.T, path string, frames int) {
	t.Helper()
	bin, err := exec.LookPath("tcpdump")
	if err != nil {
		t.Log("tcpdump not installed; skipping the tcpdump read-back")
		return
	}
	out, err := exec.Command(bin, "-r", path, "-nn").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v\n%s", path, err, out)
	}
	lines := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "192.168.64.5.5000 > 192.168.64.1.5001") {
			lines++
		}
	}
	if lines != frames {
		t.Errorf("tcpdump shows %d frames, want %d:\n%s", lines, frames, out)
	}
}

func TestSnaplen(t *testing.T) {
	c := &Capture{}
	path := filepath.Join(t.TempDir(), "snap.pcap")
	if err := c.Start(path, 64); err != nil {
		t.Fatal(err)
	}
	big, small := frame(t, 1, 1514), frame(t, 2, 60)
	c.Write(big)
	c.Write(small)
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	snap, recs := readBack(t, path)
	if snap != 64 || len(recs) != 2 {
		t.Fatalf("snaplen %d, %d records", snap, len(recs))
	}
	if r := recs[0]; r.ci.CaptureLength != 64 || r.ci.Length != 1514 || !bytes.Equal(r.data, big[:64]) {
		t.Errorf("big frame stored as %d of %d bytes", r.ci.CaptureLength, r.ci.Length)
	}
	if r := recs[1]; r.ci.CaptureLength != 60 || r.ci.Length != 60 || !bytes.Equal(r.data, small) {
		t.Errorf("small frame stored as %d of %d bytes", r.ci.CaptureLength, r.ci.Length)
	}
	if _, by := c.Stats(); by != 64+60 {
		t.Errorf("Stats bytes %d, want %d", by, 64+60)
	}
}

func TestOnOffOn(t *testing.T) {
	c := &Capture{}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.pcap"), filepath.Join(dir, "b.pcap")

	c.Write(frame(t, 100, 60)) // off: dropped
	if err := c.Start(a, 0); err != nil {
		t.Fatal(err)
	}
	c.Write(frame(t, 1, 60))
	c.Write(frame(t, 2, 60))
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	c.Write(frame(t, 101, 60)) // off again
	if err := c.Start(b, 0); err != nil {
		t.Fatal(err)
	}
	if fr, _ := c.Stats(); fr != 0 {
		t.Errorf("Stats not reset by Start: %d frames", fr)
	}
	c.Write(frame(t, 3, 60))
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	c.Write(frame(t, 102, 60))

	for path, ids := range map[string][]uint32{a: {1, 2}, b: {3}} {
		_, recs := readBack(t, path)
		var got []uint32
		for _, r := range recs {
			got = append(got, binary.BigEndian.Uint32(r.data[42:]))
		}
		if len(got) != len(ids) || (len(got) > 0 && got[0] != ids[0]) || (len(got) > 1 && got[1] != ids[1]) {
			t.Errorf("%s holds frames %v, want %v", filepath.Base(path), got, ids)
		}
	}
}

func TestStartStopErrors(t *testing.T) {
	dir := t.TempDir()
	c := &Capture{}
	if err := c.Stop(); !errors.Is(err, ErrNotActive) {
		t.Errorf("Stop when off: %v, want ErrNotActive", err)
	}
	existing := filepath.Join(dir, "exists.pcap")
	if err := os.WriteFile(existing, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		snaplen    int
		want       string
	}{
		{"existing file", existing, 0, "already exists"},
		{"relative path", "vm1.pcap", 0, "absolute"},
		{"missing dir", filepath.Join(dir, "no", "such.pcap"), 0, "no such file"},
		{"negative snaplen", filepath.Join(dir, "n.pcap"), -1, "snaplen"},
		{"huge snaplen", filepath.Join(dir, "h.pcap"), MaxSnaplen + 1, "snaplen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Start(tc.path, tc.snaplen)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start: %v, want an error mentioning %q", err, tc.want)
			}
			if _, ok, _ := c.Active(); ok {
				t.Fatal("a failed Start left the capture on")
			}
		})
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Errorf("existing file was changed: %q", b)
	}
	if _, err := os.Stat(filepath.Join(dir, "n.pcap")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused Start created a file: %v", err)
	}

	path := filepath.Join(dir, "ok.pcap")
	if err := c.Start(path, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(filepath.Join(dir, "second.pcap"), 0); !errors.Is(err, ErrActive) {
		t.Errorf("second Start: %v, want ErrActive", err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); !errors.Is(err, ErrNotActive) {
		t.Errorf("second Stop: %v, want ErrNotActive", err)
	}
}

// failingFile fails writes after the header, as a full disk would.
type failingFile struct {
	n      int
	closed bool
}

var errDiskFull = errors.New("no space left on device")

func (f *failingFile) Write(p []byte) (int, error) {
	if f.n > 0 {
		return 0, errDiskFull
	}
	f.n += len(p)
	return len(p), nil
}

func (f *failingFile) Close() error { f.closed = true; return nil }

func TestWriteErrorStopsCapture(t *testing.T) {
	clk := &fakeClock{t: epoch, step: 2 * flushEvery} // every Write flushes
	c := &Capture{Now: clk.Now}
	ff := &failingFile{}
	c.mu.Lock()
	err := c.start("/captures/full.pcap", ff, 0)
	c.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	c.Write(frame(t, 1, 60))
	path, ok, err := c.Active()
	if path != "/captures/full.pcap" || ok || !errors.Is(err, errDiskFull) {
		t.Fatalf("Active = %q, %v, %v; want the path, false, the write error", path, ok, err)
	}
	if c.on.Load() != nil {
		t.Error("a failed capture still costs Write a lock")
	}
	c.Write(frame(t, 2, 60))
	if fr, _ := c.Stats(); fr != 0 {
		t.Errorf("Stats counts %d frames that were not written", fr)
	}
	if err := c.Start(filepath.Join(t.TempDir(), "x.pcap"), 0); !errors.Is(err, ErrActive) || !strings.Contains(err.Error(), "no space") {
		t.Errorf("Start over a failed capture: %v", err)
	}
	if err := c.Stop(); !errors.Is(err, errDiskFull) {
		t.Errorf("Stop: %v, want the write error", err)
	}
	if !ff.closed {
		t.Error("Stop did not close the file")
	}
	if _, _, err := c.Active(); err != nil {
		t.Errorf("error still reported after Stop: %v", err)
	}
}

// rx and tx goroutines write while the capture is switched on and off:
// every stored record must be one whole frame, and the frames written
// while on must all be there.
func TestConcurrentWriters(t *testing.T) {
	c := &Capture{}
	dir := t.TempDir()
	const writers, perWriter = 4, 2000
	frames := make([][]byte, writers*perWriter)
	for i := range frames {
		frames[i] = frame(t, uint32(i), 60+i%1400)
	}

	if err := c.Start(filepath.Join(dir, "steady.pcap"), 0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				c.Write(frames[w*perWriter+i])
			}
		})
	}
	wg.Wait()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	_, recs := readBack(t, filepath.Join(dir, "steady.pcap"))
	seen := make(map[uint32]bool)
	for _, r := range recs {
		id := binary.BigEndian.Uint32(r.data[42:])
		if int(id) >= len(frames) || !bytes.Equal(r.data, frames[id]) || seen[id] {
			t.Fatalf("record for frame %d is torn or repeated", id)
		}
		seen[id] = true
	}
	if len(seen) != len(frames) {
		t.Fatalf("%d frames stored, want %d", len(seen), len(frames))
	}

	// Now switch on and off underneath the writers.
	const cycles = 50
	stop := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c.Write(frames[w*perWriter+i%perWriter])
			}
		})
	}
	var paths []string
	for i := range cycles {
		p := filepath.Join(dir, fmt.Sprintf("toggle%02d.pcap", i))
		if err := c.Start(p, 0); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
		for fr, _ := c.Stats(); fr < 10; fr, _ = c.Stats() {
			runtime.Gosched() // let some frames in
		}
		if _, ok, err := c.Active(); !ok || err != nil {
			t.Fatalf("Active during cycle %d: %v %v", i, ok, err)
		}
		if err := c.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	total := 0
	for _, p := range paths {
		_, recs := readBack(t, p)
		for _, r := range recs {
			id := binary.BigEndian.Uint32(r.data[42:])
			if int(id) >= len(frames) || !bytes.Equal(r.data, frames[id]) {
				t.Fatalf("%s: torn record", p)
			}
		}
		if len(recs) < 10 {
			t.Fatalf("%s: %d records, Stats counted at least 10", p, len(recs))
		}
		total += len(recs)
	}
	t.Logf("%d on/off cycles caught %d frames", len(paths), total)
}

func TestWriteAllocs(t *testing.T) {
	c := &Capture{}
	f := frame(t, 1, 1514)
	if n := testing.AllocsPerRun(1000, func() { c.Write(f) }); n != 0 {
		t.Errorf("Write when off: %v allocations, want 0", n)
	}
	if err := c.Start(filepath.Join(t.TempDir(), "a.pcap"), 0); err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if n := testing.AllocsPerRun(1000, func() { c.Write(f) }); n != 0 {
		t.Errorf("Write when on: %v allocations, want 0", n)
	}
}

// The file is readable while the capture runs, thanks to the periodic
// flush: a user can run tcpdump on it without stopping anything.
func TestReadableWhileRunning(t *testing.T) {
	clk := &fakeClock{t: epoch, step: 300 * time.Millisecond}
	c := &Capture{Now: clk.Now}
	path := filepath.Join(t.TempDir(), "live.pcap")
	if err := c.Start(path, 0); err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if _, recs := readBack(t, path); len(recs) != 0 {
		t.Fatalf("new capture holds %d records", len(recs))
	}
	for i := range 5 { // 1.5 s of fake time: at least one flush
		c.Write(frame(t, uint32(i), 60))
	}
	if _, recs := readBack(t, path); len(recs) < 3 {
		t.Fatalf("only %d of 5 frames visible after 1.5 s", len(recs))
	}
}
