//go:build linux

// Package plugintest is the conformance kit for network plugins. A plugin
// runs it from its own go test, against the implementation called directly,
// through go-plugin's in-process gRPC connection, or against the built
// binary; the caller decides with Config.NewPlugin:
//
//	func TestConformance(t *testing.T) {
//		plugintest.Run(t, plugintest.Config{
//			Type:          "segment",
//			NewPlugin:     func(t testing.TB) sdk.NetworkPlugin { return New() },
//			ValidCard:     func(sdk.VMRef) sdk.Card { return sdk.Card{} },
//			InvalidCards:  []sdk.Card{{Options: map[string]string{"segment": "Bad Name"}}},
//			PassesTraffic: true,
//		})
//	}
//
// The suite plays both the core and the VMs: it calls the plugin as the
// core would and binds each VM's socket itself, as QEMU's -netdev dgram
// does, to send and watch frames. What it checks, per subtest:
//
//   - Info: the type is listed with protocol version 1, a valid name and
//     an endpoint kind the suite offers; the traffic capability is
//     announced exactly when Config.PassesTraffic; suspend and port-forward
//     are announced only by implementations of the optional interfaces.
//   - Validate: ValidCard is accepted, with or without a dynamic MAC (the
//     core validates a card before the pool assigns one); each InvalidCard
//     and malformed or group MACs are refused with sdk.CodeInvalid; a card
//     of a type the plugin does not serve is sdk.CodeNotFound. Every
//     refusal carries a message.
//   - Attach: the same refusals at Attach (and a card without a dynamic
//     MAC), leaving nothing behind; an accepted card gets a usable
//     endpoint (sockets inside RunDir, under 108 bytes, the plugin's
//     already listening), the NIC's MAC (internal when set, else dynamic),
//     LinkUp as Config.LinkDown says, an MTU no larger than asked.
//     Attaching again returns the same endpoint and keeps the socket.
//   - Traffic (PassesTraffic): unicast both ways and broadcast between two
//     VMs, addressed as a guest would; a VM never gets its own frames
//     back; nothing reaches a detached VM; it gets frames again once
//     attached again.
//   - NoTraffic (otherwise): nothing sent by either VM, unicast or
//     broadcast, arrives anywhere.
//   - MACTranslation (announced with sdk.CapMACTranslate and passing
//     traffic): a VM with an internal MAC is reached by its dynamic MAC and
//     sees only its internal one; two clones sharing an internal MAC are
//     told apart by their dynamic MACs.
//   - Detach: removes the plugin's socket; twice, and for a VM never
//     attached, succeeds (like CNI DEL); the VM stays known (Status says
//     not attached) and attaches again.
//   - Release: of an attached VM removes its socket; twice and for an
//     unknown VM succeeds; Status is then sdk.CodeNotFound.
//   - Status: an unknown VM is sdk.CodeNotFound; an attached VM reports
//     Attached and its MACs; a type with its link down reports no IP.
//   - Suspend (announced with sdk.CapSuspend): suspend and resume keep the
//     port.
//   - Concurrent: eight VMs attached, queried, detached and released at
//     once (run the tests with -race).
//
// Frames are timed by polling with deadlines, never by sleeping: a frame
// that must arrive is sent again every 50 ms until it does (Config.Timeout
// bounds the wait), and frames that must not arrive are watched for over
// Config.Quiet.
package plugintest

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// Config describes the type under test.
type Config struct {
	// Type is the network type under test, as the cards name it.
	Type string
	// NewPlugin returns a fresh plugin for each subtest: the
	// implementation itself, InProcess(t, impl), or Binary(t, path, cfg).
	// Whatever it starts it stops with t.Cleanup; the suite releases
	// every VM it attached before that.
	NewPlugin func(t testing.TB) sdk.NetworkPlugin
	// ValidCard is a card the plugin accepts for vm. An empty Type is
	// filled in; DynamicMAC is always set by the suite, as the core's MAC
	// pool does, so two VMs never share one.
	ValidCard func(vm sdk.VMRef) sdk.Card
	// InvalidCards must each be refused by Validate and by Attach with
	// sdk.CodeInvalid. An empty Type is filled in, and an empty DynamicMAC,
	// so that each card is wrong in one way only.
	InvalidCards []sdk.Card
	// PassesTraffic: frames pass between VMs attached with ValidCard
	// cards. False: nothing a VM sends arrives anywhere.
	PassesTraffic bool
	// LinkDown: the type hands out an unplugged cable (Endpoint.LinkUp
	// false), as disconnected does. Otherwise every endpoint must be up.
	LinkDown bool
	// Endpoints the suite offers in AttachRequest, preferred first;
	// default dgram. It can play the VM for dgram and stream; traffic
	// tests skip a tap endpoint.
	Endpoints []sdk.EndpointKind
	// MTU asked for in AttachRequest; default 1500.
	MTU int
	// RunDir returns a fresh folder for one VM's sockets; default a short
	// temporary folder (a unix socket path must stay under 108 bytes).
	RunDir func(t testing.TB) string
	// Timeout bounds the wait for a frame that must arrive (default 5 s);
	// Quiet is how long the suite watches for frames that must not
	// (default 300 ms).
	Timeout, Quiet time.Duration
}

// Run runs the conformance suite as subtests of t.
func Run(t *testing.T, c Config) {
	t.Helper()
	if err := c.check(); err != nil {
		t.Fatalf("plugintest: %v", err)
	}
	s := &suite{c: c, caps: map[string]bool{}}
	if !t.Run("Info", s.testInfo) {
		return // nothing else means much when the type is not served
	}
	t.Run("Validate", s.testValidate)
	t.Run("Attach", s.testAttach)
	if c.PassesTraffic {
		t.Run("Traffic", s.testTraffic)
	} else {
		t.Run("NoTraffic", s.testNoTraffic)
	}
	if c.PassesTraffic && s.caps[sdk.CapMACTranslate] {
		t.Run("MACTranslation", s.testMACTranslation)
	}
	t.Run("Detach", s.testDetach)
	t.Run("Release", s.testRelease)
	t.Run("Status", s.testStatus)
	if s.caps[sdk.CapSuspend] {
		t.Run("Suspend", s.testSuspend)
	}
	t.Run("Concurrent", s.testConcurrent)
}

func (c *Config) check() error {
	switch {
	case sdk.ValidateTypeName(c.Type) != nil:
		return fmt.Errorf("Config.Type: %v", sdk.ValidateTypeName(c.Type))
	case c.NewPlugin == nil:
		return fmt.Errorf("Config.NewPlugin is nil")
	case c.ValidCard == nil:
		return fmt.Errorf("Config.ValidCard is nil")
	case c.PassesTraffic && c.LinkDown:
		return fmt.Errorf("Config: a type with its link down cannot pass traffic")
	}
	if len(c.Endpoints) == 0 {
		c.Endpoints = []sdk.EndpointKind{sdk.EndpointDgram}
	}
	if c.MTU == 0 {
		c.MTU = frameio.DefaultMTU
	}
	if c.RunDir == nil {
		c.RunDir = frameiotest.TempDir
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Quiet <= 0 {
		c.Quiet = 300 * time.Millisecond
	}
	return nil
}

type suite struct {
	c    Config
	caps map[string]bool // capabilities the type announced, set by testInfo
}

// maxSocketPath is the longest unix socket path Linux binds (sun_path
// holds 108 bytes with the terminating NUL).
const maxSocketPath = 107

func (s *suite) testInfo(t *testing.T) {
	r := s.start(t)
	resp, err := r.p.Info(r.ctx, &sdk.InfoRequest{})
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if resp.Name == "" {
		t.Error("Info: Name is empty; name the binary (e.g. anka-net-" + s.c.Type + ")")
	}
	if !slices.Contains(resp.ProtocolVersions, sdk.ProtocolVersion) {
		t.Errorf("Info: ProtocolVersions %v lacks %d", resp.ProtocolVersions, sdk.ProtocolVersion)
	}
	var ti *sdk.TypeInfo
	seen := map[string]bool{}
	for i, typ := range resp.Types {
		if err := sdk.ValidateTypeName(typ.Name); err != nil {
			t.Errorf("Info: type %d: %v", i, err)
		}
		if seen[typ.Name] {
			t.Errorf("Info: type %q listed twice", typ.Name)
		}
		seen[typ.Name] = true
		if typ.Name == s.c.Type {
			ti = &resp.Types[i]
		}
	}
	if ti == nil {
		t.Fatalf("Info: type %q not among the types served %v", s.c.Type, slices.Sorted(maps.Keys(seen)))
	}
	if !slices.ContainsFunc(ti.Endpoints, func(k sdk.EndpointKind) bool { return slices.Contains(s.c.Endpoints, k) }) {
		t.Errorf("Info: type %q hands out endpoints %v, none of %v the suite offers", s.c.Type, ti.Endpoints, s.c.Endpoints)
	}
	for _, c := range ti.Capabilities {
		s.caps[c] = true
	}
	if s.caps[sdk.CapTraffic] != s.c.PassesTraffic {
		t.Errorf("Info: capability %q announced: %v; Config.PassesTraffic: %v", sdk.CapTraffic, s.caps[sdk.CapTraffic], s.c.PassesTraffic)
	}
	if _, ok := r.p.(sdk.Suspender); s.caps[sdk.CapSuspend] && !ok {
		t.Errorf("Info: capability %q announced, but the plugin is no sdk.Suspender", sdk.CapSuspend)
	}
	if _, ok := r.p.(sdk.PortForwarder); s.caps[sdk.CapPortForward] && !ok {
		t.Errorf("Info: capability %q announced, but the plugin is no sdk.PortForwarder", sdk.CapPortForward)
	}
}

// garbage is what every type must refuse: wrong in one field, derived
// from a valid card.
type garbage struct {
	what   string
	code   sdk.Code
	card   func(sdk.Card) sdk.Card
	attach bool // checked at Attach only (Validate may run before the pool assigns a MAC)
}

func (s *suite) garbage() []garbage {
	g := []garbage{
		{what: "a type the plugin does not serve", code: sdk.CodeNotFound,
			card: func(c sdk.Card) sdk.Card { c.Type = "plugintest-no-such-type"; return c }},
		{what: "a malformed internal MAC", code: sdk.CodeInvalid,
			card: func(c sdk.Card) sdk.Card { c.InternalMAC = "not-a-mac"; return c }},
		{what: "a multicast internal MAC", code: sdk.CodeInvalid,
			card: func(c sdk.Card) sdk.Card { c.InternalMAC = "01:00:5e:00:00:01"; return c }},
		{what: "an all-zero internal MAC", code: sdk.CodeInvalid,
			card: func(c sdk.Card) sdk.Card { c.InternalMAC = "00:00:00:00:00:00"; return c }},
		{what: "a malformed dynamic MAC", code: sdk.CodeInvalid,
			card: func(c sdk.Card) sdk.Card { c.DynamicMAC = "02:00:00:00:00"; return c }},
		{what: "no dynamic MAC", code: sdk.CodeInvalid, attach: true,
			card: func(c sdk.Card) sdk.Card { c.DynamicMAC = ""; return c }},
	}
	for i, bad := range s.c.InvalidCards {
		g = append(g, garbage{what: fmt.Sprintf("Config.InvalidCards[%d] %+v", i, bad), code: sdk.CodeInvalid,
			card: func(c sdk.Card) sdk.Card {
				if bad.Type == "" {
					bad.Type = c.Type
				}
				if bad.DynamicMAC == "" {
					bad.DynamicMAC = c.DynamicMAC
				}
				return bad
			}})
	}
	return g
}

func (s *suite) testValidate(t *testing.T) {
	r := s.start(t)
	v := r.newVM(t, "vm1")
	if _, err := r.p.Validate(r.ctx, &sdk.ValidateRequest{VM: v.ref, Card: v.card}); err != nil {
		t.Errorf("Validate refused ValidCard %+v: %v", v.card, err)
	}
	noDyn := v.card
	noDyn.DynamicMAC = ""
	if _, err := r.p.Validate(r.ctx, &sdk.ValidateRequest{VM: v.ref, Card: noDyn}); err != nil {
		t.Errorf("Validate refused ValidCard without a dynamic MAC (the core validates before the pool assigns one): %v", err)
	}
	for _, g := range s.garbage() {
		if g.attach {
			continue
		}
		_, err := r.p.Validate(r.ctx, &sdk.ValidateRequest{VM: v.ref, Card: g.card(v.card)})
		wantRefusal(t, "Validate of "+g.what, err, g.code)
	}
}

func (s *suite) testAttach(t *testing.T) {
	t.Run("Refused", func(t *testing.T) {
		r := s.start(t)
		v := r.newVM(t, "vm1")
		for _, g := range s.garbage() {
			_, err := r.p.Attach(r.ctx, r.attachRequest(v, g.card(v.card)))
			wantRefusal(t, "Attach of "+g.what, err, g.code)
		}
		r.wantNotFound(t, "Status after refused Attaches", v)
		if ents, _ := os.ReadDir(v.runDir); len(ents) > 0 {
			t.Errorf("refused Attaches left %s in RunDir", ents[0].Name())
		}
	})
	t.Run("Endpoint", func(t *testing.T) {
		r := s.start(t)
		v := r.newVM(t, "vm1")
		r.attach(t, v) // checks the endpoint
		if socketKind(v.ep.Kind) {
			r.plug(t, v) // the VM side can bind or connect
		}
	})
	t.Run("Twice", func(t *testing.T) {
		r := s.start(t)
		v := r.newVM(t, "vm1")
		first := r.attach(t, v)
		before := socketID(first.PluginPath)
		second := r.attach(t, v)
		if !reflect.DeepEqual(first, second) {
			t.Errorf("Attach of an attached VM returned a new endpoint:\n first  %+v\n second %+v", first, second)
		}
		if before != (fileID{}) && socketID(second.PluginPath) != before {
			t.Errorf("Attach of an attached VM replaced its socket %s: a running VM would lose its port", first.PluginPath)
		}
	})
}

func (s *suite) testTraffic(t *testing.T) {
	r := s.start(t)
	v1, v2 := r.newVM(t, "vm1"), r.newVM(t, "vm2")
	r.attach(t, v1)
	r.attach(t, v2)
	g1, g2 := r.plug(t, v1), r.plug(t, v2)

	r.await(t, "unicast vm1 -> vm2", r.probe(g1, v2.dyn), g2)
	r.await(t, "unicast vm2 -> vm1", r.probe(g2, v1.dyn), g1)
	r.await(t, "broadcast from vm1", r.probe(g1, broadcast), g2)

	r.detach(t, v2)
	r.nothingArrives(t, "after vm2 was detached", []*probe{r.probe(g1, v2.dyn), r.probe(g1, broadcast)}, g2)

	if ep := r.attach(t, v2); ep.VMPath != g2.ep.VMPath || ep.PluginPath != g2.ep.PluginPath || ep.Kind != g2.ep.Kind {
		g2.close()
		g2 = r.plug(t, v2)
	} else if ep.Kind == sdk.EndpointStream || ep.Kind == sdk.EndpointVhostUser {
		// The old connection went with the old listener; QEMU connects
		// again (a stream netdev's reconnect, a vhost-user chardev's).
		g2.close()
		g2 = r.plug(t, v2)
	}
	r.await(t, "unicast vm1 -> vm2 after vm2 was attached again", r.probe(g1, v2.dyn), g2)
}

func (s *suite) testNoTraffic(t *testing.T) {
	r := s.start(t)
	v1, v2 := r.newVM(t, "vm1"), r.newVM(t, "vm2")
	r.attach(t, v1)
	r.attach(t, v2)
	g1, g2 := r.plug(t, v1), r.plug(t, v2)
	r.nothingArrives(t, "on a type that passes no traffic", []*probe{
		r.probe(g1, v2.dyn), r.probe(g1, broadcast), r.probe(g2, v1.dyn), r.probe(g2, broadcast),
	}, g1, g2)
}

func (s *suite) testMACTranslation(t *testing.T) {
	r := s.start(t)
	const internal = "02:a4:6b:ee:ee:01"
	v1 := r.newVM(t, "plain")
	v1.card.InternalMAC = ""
	v1.mac = v1.dyn
	c1, c2 := r.newVM(t, "clone1"), r.newVM(t, "clone2")
	for _, v := range []*vm{c1, c2} {
		v.card.InternalMAC = internal
		v.mac, _ = net.ParseMAC(internal)
	}
	for _, v := range []*vm{v1, c1, c2} {
		r.attach(t, v) // checks that the NIC gets the internal MAC
	}
	g1, gc1, gc2 := r.plug(t, v1), r.plug(t, c1), r.plug(t, c2)

	r.await(t, "unicast to clone1's dynamic MAC", r.probe(g1, c1.dyn), gc1)
	r.await(t, "unicast to clone2's dynamic MAC", r.probe(g1, c2.dyn), gc2)
	r.await(t, "unicast from clone1", r.probe(gc1, v1.dyn), g1)
	r.await(t, "unicast from clone2", r.probe(gc2, v1.dyn), g1)
	r.nothingArrives(t, "at clone2 for clone1's dynamic MAC", []*probe{r.probe(g1, c1.dyn)}, gc2)
	for _, v := range []*vm{c1, c2} {
		st := r.status(t, v)
		if !sameMAC(st.InternalMAC, internal) || !sameMAC(st.DynamicMAC, v.card.DynamicMAC) {
			t.Errorf("Status of %s: InternalMAC %q DynamicMAC %q; want %s and %s", v.ref.Name, st.InternalMAC, st.DynamicMAC, internal, v.card.DynamicMAC)
		}
	}
}

func (s *suite) testDetach(t *testing.T) {
	r := s.start(t)
	v := r.newVM(t, "vm1")
	ep := r.attach(t, v)
	r.detach(t, v)
	wantGone(t, "after Detach", ep)
	if st := r.status(t, v); st.Attached {
		t.Error("Status after Detach: Attached is true")
	}
	r.detach(t, v) // twice
	r.detach(t, r.newVM(t, "never-attached"))
	ep = r.attach(t, v) // a VM started again
	if socketKind(ep.Kind) {
		r.plug(t, v)
	}
	if st := r.status(t, v); !st.Attached {
		t.Error("Status after Detach and Attach: Attached is false")
	}
}

func (s *suite) testRelease(t *testing.T) {
	r := s.start(t)
	v := r.newVM(t, "vm1")
	ep := r.attach(t, v)
	r.release(t, v) // while attached: the card was removed
	wantGone(t, "after Release", ep)
	r.wantNotFound(t, "Status after Release", v)
	r.release(t, v)                            // twice
	r.detach(t, v)                             // Detach of a forgotten VM, too
	r.release(t, r.newVM(t, "never-attached")) // and of one never seen

	w := r.newVM(t, "vm2")
	r.attach(t, w)
	r.detach(t, w)
	r.release(t, w)
	r.wantNotFound(t, "Status after Detach and Release", w)
}

func (s *suite) testStatus(t *testing.T) {
	r := s.start(t)
	r.wantNotFound(t, "Status of a VM never attached", r.newVM(t, "unknown"))
	v := r.newVM(t, "vm1")
	r.attach(t, v)
	st := r.status(t, v)
	if !st.Attached {
		t.Error("Status of an attached VM: Attached is false")
	}
	if !sameMAC(st.DynamicMAC, v.card.DynamicMAC) {
		t.Errorf("Status: DynamicMAC %q; want %s", st.DynamicMAC, v.card.DynamicMAC)
	}
	wantInternal := v.card.InternalMAC
	if wantInternal == "" && st.InternalMAC != "" {
		wantInternal = v.card.DynamicMAC // no --mac: the guest sees the dynamic MAC
	}
	if !sameMAC(st.InternalMAC, wantInternal) && !(st.InternalMAC == "" && wantInternal == "") {
		t.Errorf("Status: InternalMAC %q; want %q", st.InternalMAC, v.card.InternalMAC)
	}
	if s.c.LinkDown && st.IP != "" {
		t.Errorf("Status: IP %q on a type whose link is down", st.IP)
	}
}

func (s *suite) testSuspend(t *testing.T) {
	r := s.start(t)
	sp, ok := r.p.(sdk.Suspender)
	if !ok {
		t.Fatal("capability suspend announced, but the plugin is no sdk.Suspender")
	}
	v := r.newVM(t, "vm1")
	ep := r.attach(t, v)
	if _, err := sp.Suspend(r.ctx, &sdk.SuspendRequest{VM: v.ref, Type: s.c.Type}); err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	if _, err := sp.Resume(r.ctx, &sdk.ResumeRequest{VM: v.ref, Type: s.c.Type}); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if st := r.status(t, v); !st.Attached {
		t.Error("Status after Suspend and Resume: Attached is false")
	}
	if again := r.attach(t, v); !reflect.DeepEqual(again, ep) {
		t.Errorf("endpoint changed across Suspend and Resume: %+v, then %+v", ep, again)
	}
}

func (s *suite) testConcurrent(t *testing.T) {
	r := s.start(t)
	const n = 8
	vms := make([]*vm, n)
	for i := range vms {
		vms[i] = r.newVM(t, fmt.Sprintf("vm%d", i+1))
	}
	all := func(what string, call func(v *vm) error) {
		var wg sync.WaitGroup
		for _, v := range vms {
			wg.Go(func() {
				if err := call(v); err != nil {
					t.Errorf("concurrent %s of %s: %v", what, v.ref.Name, err)
				}
			})
		}
		wg.Wait()
	}
	eps := make([]sdk.Endpoint, n)
	all("Attach", func(v *vm) error {
		resp, err := r.p.Attach(r.ctx, r.attachRequest(v, v.card))
		if err == nil {
			eps[slices.Index(vms, v)] = resp.Endpoint
		}
		return err
	})
	paths := map[string]string{}
	for i, ep := range eps {
		if ep.PluginPath == "" {
			continue
		}
		if other, dup := paths[ep.PluginPath]; dup {
			t.Errorf("%s and %s got the same socket %s", other, vms[i].ref.Name, ep.PluginPath)
		}
		paths[ep.PluginPath] = vms[i].ref.Name
	}
	all("Status", func(v *vm) error {
		st, err := r.p.Status(r.ctx, &sdk.StatusRequest{VM: v.ref, Type: s.c.Type})
		if err == nil && !st.Attached {
			err = fmt.Errorf("not attached")
		}
		return err
	})
	all("Detach", func(v *vm) error {
		_, err := r.p.Detach(r.ctx, &sdk.DetachRequest{VM: v.ref, Type: s.c.Type})
		return err
	})
	all("Release", func(v *vm) error {
		_, err := r.p.Release(r.ctx, &sdk.ReleaseRequest{VM: v.ref, Type: s.c.Type})
		return err
	})
}

// run is one subtest's plugin and VMs.
type run struct {
	c    *Config
	p    sdk.NetworkPlugin
	ctx  context.Context
	caps map[string]bool
	tag  [2]byte // distinguishes this run's dynamic MACs
	n    int
	vms  []*vm

	// Frames: every frame a guest of this run receives goes to rx; sent
	// tells which guest sent each sequence number. Only the test's
	// goroutine touches seq and sent.
	rx   chan arrival
	seq  uint32
	sent map[uint32]*guest
	// reported: sender and receiver pairs already reported by inspect.
	reported map[[2]*guest]bool
}

// vm is one VM as the core and the suite see it.
type vm struct {
	ref    sdk.VMRef
	card   sdk.Card
	runDir string
	dyn    net.HardwareAddr // what the network sees
	mac    net.HardwareAddr // what the NIC has: internal, else dynamic
	ep     sdk.Endpoint     // from the last Attach
}

func (s *suite) start(t *testing.T) *run {
	t.Helper()
	p := s.c.NewPlugin(t)
	if p == nil {
		t.Fatal("Config.NewPlugin returned nil")
	}
	r := &run{c: &s.c, p: p, ctx: t.Context(), caps: s.caps, rx: make(chan arrival, 4096), sent: map[uint32]*guest{}, reported: map[[2]*guest]bool{}}
	var b [6]byte
	rand.Read(b[:])
	r.tag = [2]byte{b[0], b[1]}
	r.seq = binary.BigEndian.Uint32(b[2:])
	t.Cleanup(func() { // before NewPlugin's own cleanups stop the plugin
		ctx, cancel := context.WithTimeout(context.Background(), s.c.Timeout)
		defer cancel()
		for _, v := range r.vms {
			if _, err := p.Release(ctx, &sdk.ReleaseRequest{VM: v.ref, Type: s.c.Type}); err != nil {
				t.Errorf("cleanup: Release of %s: %v", v.ref.Name, err)
			}
		}
	})
	return r
}

// newVM makes a VM the plugin has not seen, with a card from ValidCard and
// a dynamic MAC of its own.
func (r *run) newVM(t *testing.T, name string) *vm {
	r.n++
	var id [16]byte
	rand.Read(id[:])
	id[6], id[8] = id[6]&0x0f|0x40, id[8]&0x3f|0x80 // a version 4 uuid, as the core makes
	ref := sdk.VMRef{ID: fmt.Sprintf("%x-%x-%x-%x-%x", id[0:4], id[4:6], id[6:8], id[8:10], id[10:]), Name: name}
	card := r.c.ValidCard(ref)
	if card.Type == "" {
		card.Type = r.c.Type
	}
	dyn := net.HardwareAddr{0x02, 0xa4, 0x6b, r.tag[0], r.tag[1], byte(r.n)}
	card.DynamicMAC = dyn.String()
	v := &vm{ref: ref, card: card, runDir: r.c.RunDir(t), dyn: dyn, mac: dyn}
	if m, err := net.ParseMAC(card.InternalMAC); err == nil {
		v.mac = m
	}
	r.vms = append(r.vms, v)
	return v
}

func (r *run) attachRequest(v *vm, card sdk.Card) *sdk.AttachRequest {
	return &sdk.AttachRequest{VM: v.ref, Card: card, Endpoints: r.c.Endpoints, RunDir: v.runDir, MTU: r.c.MTU}
}

// attach attaches v with its card and checks the endpoint.
func (r *run) attach(t *testing.T, v *vm) sdk.Endpoint {
	t.Helper()
	resp, err := r.p.Attach(r.ctx, r.attachRequest(v, v.card))
	if err != nil {
		t.Fatalf("Attach of %s with %+v: %v", v.ref.Name, v.card, err)
	}
	v.ep = resp.Endpoint
	r.checkEndpoint(t, v)
	return v.ep
}

func (r *run) checkEndpoint(t *testing.T, v *vm) {
	t.Helper()
	ep := v.ep
	if !slices.Contains(r.c.Endpoints, ep.Kind) {
		t.Fatalf("Attach of %s: endpoint kind %q; the suite offered %v", v.ref.Name, ep.Kind, r.c.Endpoints)
	}
	inRunDir := func(what, p string) {
		t.Helper()
		switch {
		case p == "":
			t.Errorf("Attach of %s: %s endpoint without %s", v.ref.Name, ep.Kind, what)
		case len(p) > maxSocketPath:
			t.Errorf("Attach of %s: %s %s is %d bytes; a unix socket path holds at most %d", v.ref.Name, what, p, len(p), maxSocketPath)
		case !strings.HasPrefix(filepath.Clean(p), filepath.Clean(v.runDir)+string(filepath.Separator)):
			t.Errorf("Attach of %s: %s %s is outside RunDir %s", v.ref.Name, what, p, v.runDir)
		}
	}
	switch ep.Kind {
	case sdk.EndpointDgram, sdk.EndpointStream, sdk.EndpointVhostUser:
		inRunDir("PluginPath", ep.PluginPath)
		if fi, err := os.Stat(ep.PluginPath); err != nil || fi.Mode().Type() != os.ModeSocket {
			t.Errorf("Attach of %s: PluginPath %s is not a socket (%v): the VM has nothing to connect to", v.ref.Name, ep.PluginPath, err)
		}
		if ep.Kind == sdk.EndpointDgram {
			inRunDir("VMPath", ep.VMPath)
			if ep.VMPath == ep.PluginPath {
				t.Errorf("Attach of %s: VMPath and PluginPath are both %s", v.ref.Name, ep.VMPath)
			}
		}
	case sdk.EndpointTAP:
		if ep.TAP == "" {
			t.Errorf("Attach of %s: tap endpoint without a TAP name", v.ref.Name)
		}
	}
	if !sameMAC(ep.MAC, v.mac.String()) {
		t.Errorf("Attach of %s: endpoint MAC %q; want %s (the internal MAC when set, else the dynamic MAC)", v.ref.Name, ep.MAC, v.mac)
	}
	if ep.LinkUp == r.c.LinkDown {
		t.Errorf("Attach of %s: LinkUp %v; Config.LinkDown %v", v.ref.Name, ep.LinkUp, r.c.LinkDown)
	}
	if ep.MTU != 0 && (ep.MTU < 68 || ep.MTU > r.c.MTU) {
		t.Errorf("Attach of %s: endpoint MTU %d; asked for %d", v.ref.Name, ep.MTU, r.c.MTU)
	}
}

func (r *run) detach(t *testing.T, v *vm) {
	t.Helper()
	if _, err := r.p.Detach(r.ctx, &sdk.DetachRequest{VM: v.ref, Type: r.c.Type}); err != nil {
		t.Fatalf("Detach of %s: %v", v.ref.Name, err)
	}
}

func (r *run) release(t *testing.T, v *vm) {
	t.Helper()
	if _, err := r.p.Release(r.ctx, &sdk.ReleaseRequest{VM: v.ref, Type: r.c.Type}); err != nil {
		t.Fatalf("Release of %s: %v", v.ref.Name, err)
	}
}

func (r *run) status(t *testing.T, v *vm) *sdk.StatusResponse {
	t.Helper()
	st, err := r.p.Status(r.ctx, &sdk.StatusRequest{VM: v.ref, Type: r.c.Type})
	if err != nil {
		t.Fatalf("Status of %s: %v", v.ref.Name, err)
	}
	return st
}

func (r *run) wantNotFound(t *testing.T, what string, v *vm) {
	t.Helper()
	_, err := r.p.Status(r.ctx, &sdk.StatusRequest{VM: v.ref, Type: r.c.Type})
	wantRefusal(t, what, err, sdk.CodeNotFound)
}

// wantRefusal checks err is a refusal with code and a message.
func wantRefusal(t *testing.T, what string, err error, code sdk.Code) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s succeeded; want a %s error", what, code)
	case sdk.CodeOf(err) != code:
		t.Errorf("%s: error code %q (%v); want %q: return sdk.Errorf(sdk.Code...)", what, sdk.CodeOf(err), err, code)
	case strings.TrimSpace(err.Error()) == "":
		t.Errorf("%s: %s error without a message", what, code)
	}
}

// socketKind reports whether a kind is a socket at PluginPath that the
// suite can play the VM behind.
func socketKind(k sdk.EndpointKind) bool {
	return k == sdk.EndpointDgram || k == sdk.EndpointStream || k == sdk.EndpointVhostUser
}

// wantGone checks that a detached port's socket is gone, so a VM cannot
// go on sending into it.
func wantGone(t *testing.T, what string, ep sdk.Endpoint) {
	t.Helper()
	if !socketKind(ep.Kind) {
		return
	}
	if _, err := os.Lstat(ep.PluginPath); err == nil {
		t.Errorf("%s: the plugin's socket %s is still there", what, ep.PluginPath)
	}
}

// fileID tells a socket file from one bound at the same path later; the
// inode number alone does not, as a freed one is handed out again at once.
type fileID struct {
	dev, ino uint64
	ctime    syscall.Timespec
}

func socketID(path string) fileID {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return fileID{}
	}
	return fileID{dev: st.Dev, ino: st.Ino, ctime: st.Ctim}
}

func sameMAC(a, b string) bool {
	ma, err1 := net.ParseMAC(a)
	mb, err2 := net.ParseMAC(b)
	return err1 == nil && err2 == nil && string(ma) == string(mb)
}

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// seqOf and the frames: frameiotest.FillFrame's payload (EtherType 0x88b5,
// a sequence number) with the addresses a guest would use.
func seqOf(f []byte) (uint32, bool) {
	if len(f) < 18 || binary.BigEndian.Uint16(f[12:14]) != frameiotest.EtherType {
		return 0, false
	}
	return frameiotest.Seq(f), true
}
