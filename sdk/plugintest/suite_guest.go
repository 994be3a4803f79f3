//go:build linux

package plugintest

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/vhostuserdriver"
)

// resendEvery is how often a frame that must arrive is sent again: the
// plugin's port may connect to the VM's socket only some time after both
// exist, and a datagram is never retransmitted.
const resendEvery = 50 * time.Millisecond

// guest plays the VM behind an endpoint, as QEMU would: for dgram it binds
// VMPath and sends to PluginPath without connecting; for stream it
// connects to PluginPath.
type guest struct {
	v    *vm
	ep   sdk.Endpoint
	port frameio.Port
	done chan struct{}
	once sync.Once
}

// arrival is a frame a guest received.
type arrival struct {
	at    *guest
	frame []byte
}

// plug starts v's VM side on its current endpoint; it stops when t ends.
func (r *run) plug(t *testing.T, v *vm) *guest {
	t.Helper()
	g := &guest{v: v, ep: v.ep, done: make(chan struct{})}
	var err error
	switch v.ep.Kind {
	case sdk.EndpointDgram:
		g.port, err = frameio.ListenDgram(v.ep.VMPath, frameio.DgramOptions{
			MTU: r.c.MTU, Peer: v.ep.PluginPath, NoConnect: true, Logger: frameiotest.Quiet,
		})
	case sdk.EndpointStream:
		g.port, err = frameio.DialStream(v.ep.PluginPath, frameio.StreamOptions{MTU: r.c.MTU, Logger: frameiotest.Quiet})
	case sdk.EndpointVhostUser:
		// QEMU and the guest's virtio-net driver in one: the driver.
		g.port, err = vhostuserdriver.Dial(v.ep.PluginPath, vhostuserdriver.DriverOptions{MTU: r.c.MTU, Log: frameiotest.Quiet})
	default:
		t.Skipf("the suite cannot play the VM behind a %s endpoint", v.ep.Kind)
	}
	if err != nil {
		t.Fatalf("%s's VM side on %+v: %v", v.ref.Name, v.ep, err)
	}
	go g.read(r.rx)
	t.Cleanup(g.close)
	return g
}

func (g *guest) read(rx chan<- arrival) {
	defer close(g.done)
	batch := frameio.NewBatch(16, g.port.MTU())
	for {
		n, err := g.port.ReadBatch(batch)
		for i := range n {
			select {
			case rx <- arrival{at: g, frame: append([]byte(nil), batch[i].Bytes()...)}:
			default: // the test is not listening; nothing it waits for is lost for long
			}
		}
		if err != nil {
			return
		}
	}
}

func (g *guest) close() {
	g.once.Do(func() {
		g.port.Close()
		<-g.done
	})
}

// probe is a kind of frame a guest sends: from its NIC's MAC to dst, each
// copy with a sequence number of its own.
type probe struct {
	from *guest
	dst  net.HardwareAddr
	seqs map[uint32]bool
}

func (r *run) probe(from *guest, dst net.HardwareAddr) *probe {
	return &probe{from: from, dst: dst, seqs: map[uint32]bool{}}
}

func (p *probe) String() string {
	return fmt.Sprintf("frame from %s (%s) to %s", p.from.v.ref.Name, p.from.v.mac, p.dst)
}

// send sends one more copy. A failed write is the plugin's business: the
// suite only judges what arrives.
func (r *run) send(p *probe) {
	r.seq++
	p.seqs[r.seq] = true
	r.sent[r.seq] = p.from
	b := frameio.NewBatch(1, r.c.MTU)
	b[0].N = frameiotest.FillFrame(b[0].Buf, 60, r.seq)
	copy(b[0].Buf[0:6], p.dst)
	copy(b[0].Buf[6:12], p.from.v.mac)
	p.from.port.WriteBatch(b)
}

// inspect applies what holds for every frame: a VM never gets its own
// frames back, and nothing at all passes on a type without traffic.
func (r *run) inspect(t *testing.T, a arrival) {
	t.Helper()
	seq, ok := seqOf(a.frame)
	from := r.sent[seq]
	switch {
	case !ok || from == nil:
	case r.reported[[2]*guest{from, a.at}]:
	case from == a.at:
		r.reported[[2]*guest{from, a.at}] = true
		t.Errorf("%s got its own frame back (to %s)", a.at.v.ref.Name, net.HardwareAddr(a.frame[0:6]))
	case !r.c.PassesTraffic:
		r.reported[[2]*guest{from, a.at}] = true
		t.Errorf("a frame from %s arrived at %s on a type that passes no traffic", from.v.ref.Name, a.at.v.ref.Name)
	}
}

// await sends p until a copy arrives at g, then checks its addresses as a
// guest sees them: its own dynamic MAC turned back into its NIC's MAC,
// the sender's dynamic MAC as the source.
func (r *run) await(t *testing.T, what string, p *probe, g *guest) {
	t.Helper()
	deadline := time.Now().Add(r.c.Timeout)
	tick := time.NewTicker(resendEvery)
	defer tick.Stop()
	r.send(p)
	for {
		select {
		case a := <-r.rx:
			r.inspect(t, a)
			if seq, ok := seqOf(a.frame); !ok || !p.seqs[seq] || a.at != g {
				continue
			}
			dst, src := net.HardwareAddr(a.frame[0:6]), net.HardwareAddr(a.frame[6:12])
			wantDst := p.dst
			if string(p.dst) == string(g.v.dyn) {
				wantDst = g.v.mac
			}
			if string(dst) != string(wantDst) {
				t.Errorf("%s: arrived at %s with destination %s; want %s", what, g.v.ref.Name, dst, wantDst)
			}
			from := p.from.v
			if (string(from.mac) == string(from.dyn) || r.caps[sdk.CapMACTranslate]) && string(src) != string(from.dyn) {
				t.Errorf("%s: arrived at %s with source %s; want %s's dynamic MAC %s", what, g.v.ref.Name, src, from.ref.Name, from.dyn)
			}
			return
		case now := <-tick.C:
			if now.After(deadline) {
				t.Fatalf("%s: no %s arrived at %s in %v", what, p, g.v.ref.Name, r.c.Timeout)
			}
			r.send(p)
		}
	}
}

// nothingArrives sends every probe repeatedly for most of the quiet
// window and fails if a copy of any arrives at one of at.
func (r *run) nothingArrives(t *testing.T, what string, probes []*probe, at ...*guest) {
	t.Helper()
	end := time.Now().Add(r.c.Quiet)
	stopSending := end.Add(-r.c.Quiet / 3) // what is in flight has time to land
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	sendAll := func() {
		for _, p := range probes {
			r.send(p)
		}
	}
	sendAll()
	reported := map[*probe]bool{}
	for {
		select {
		case a := <-r.rx:
			r.inspect(t, a)
			seq, ok := seqOf(a.frame)
			if !ok {
				continue
			}
			for _, p := range probes {
				if p.seqs[seq] && !reported[p] && (len(at) == 0 || slices.Contains(at, a.at)) {
					reported[p] = true
					if r.c.PassesTraffic { // inspect has reported it otherwise
						t.Errorf("%s: a %s arrived at %s", what, p, a.at.v.ref.Name)
					}
				}
			}
		case now := <-tick.C:
			if now.After(end) {
				return
			}
			if now.Before(stopSending) {
				sendAll()
			}
		}
	}
}
