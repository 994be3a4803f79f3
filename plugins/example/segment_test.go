package main

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// vm is a VM attached to p, with the suite's stand-in for QEMU on its
// socket.
type vm struct {
	ref  sdk.VMRef
	dyn  net.HardwareAddr
	port *frameio.DgramPort
	in   chan []byte
}

func attach(t *testing.T, p *Plugin, name, segment string, n byte) *vm {
	t.Helper()
	v := &vm{ref: sdk.VMRef{ID: "id-" + name, Name: name}, dyn: net.HardwareAddr{2, 0, 0, 0, 0, n}, in: make(chan []byte, 64)}
	resp, err := p.Attach(t.Context(), &sdk.AttachRequest{
		VM:     v.ref,
		Card:   sdk.Card{Type: typeName, DynamicMAC: v.dyn.String(), Options: map[string]string{"segment": segment}},
		RunDir: frameiotest.TempDir(t),
	})
	if err != nil {
		t.Fatalf("Attach %s: %v", name, err)
	}
	ep := resp.Endpoint
	v.port, err = frameio.ListenDgram(ep.VMPath, frameio.DgramOptions{Peer: ep.PluginPath, NoConnect: true, Logger: frameiotest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := frameio.NewBatch(8, v.port.MTU())
		for {
			n, err := v.port.ReadBatch(b)
			for i := range n {
				v.in <- append([]byte(nil), b[i].Bytes()...)
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		p.Release(context.Background(), &sdk.ReleaseRequest{VM: v.ref, Type: typeName})
		v.port.Close()
		<-done
	})
	return v
}

// send sends a broadcast from v tagged with seq.
func (v *vm) send(seq uint32) {
	b := frameio.NewBatch(1, v.port.MTU())
	b[0].N = frameiotest.FillFrame(b[0].Buf, 60, seq)
	copy(b[0].Buf[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(b[0].Buf[6:12], v.dyn)
	v.port.WriteBatch(b)
}

// reaches sends broadcasts from v until one arrives at w (true) or a
// deadline passes (false); the plugin's port may connect to a VM's socket
// some time after both exist.
func (v *vm) reaches(w *vm, seq uint32, within time.Duration) bool {
	deadline := time.After(within)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	v.send(seq)
	for {
		select {
		case f := <-w.in:
			if frameiotest.Seq(f) == seq {
				return true
			}
		case <-tick.C:
			v.send(seq)
		case <-deadline:
			return false
		}
	}
}

func TestSegmentsAreSeparate(t *testing.T) {
	p := New()
	a1, a2 := attach(t, p, "a1", "blue", 1), attach(t, p, "a2", "blue", 2)
	b1, b2 := attach(t, p, "b1", "green", 3), attach(t, p, "b2", "green", 4)
	if !a1.reaches(a2, 1, 5*time.Second) || !b1.reaches(b2, 4, 5*time.Second) {
		t.Fatal("a broadcast did not reach the other VM on its segment")
	}
	if a1.reaches(b1, 2, 300*time.Millisecond) {
		t.Error("a broadcast on segment blue reached a VM on segment green")
	}
	if b1.reaches(a2, 3, 300*time.Millisecond) {
		t.Error("a broadcast on segment green reached a VM on segment blue")
	}
}

func TestSwitchPerSegment(t *testing.T) {
	p := New()
	ctx := t.Context()
	a1, a2 := attach(t, p, "a1", "blue", 1), attach(t, p, "a2", "blue", 2)
	attach(t, p, "b1", "green", 3)
	if len(p.segments) != 2 {
		t.Fatalf("%d switches for 2 segments", len(p.segments))
	}
	p.Detach(ctx, &sdk.DetachRequest{VM: a1.ref, Type: typeName})
	if p.segments["blue"] == nil {
		t.Fatal("segment blue closed while a2 is still on it")
	}
	p.Detach(ctx, &sdk.DetachRequest{VM: a2.ref, Type: typeName})
	if p.segments["blue"] != nil {
		t.Fatal("segment blue kept its switch after its last VM was detached")
	}
}

func TestStatus(t *testing.T) {
	p := New()
	a1, a2 := attach(t, p, "a1", "blue", 1), attach(t, p, "a2", "blue", 2)
	if !a1.reaches(a2, 1, 5*time.Second) {
		t.Fatal("no frame passed")
	}
	st, err := p.Status(t.Context(), &sdk.StatusRequest{VM: a1.ref, Type: typeName})
	if err != nil {
		t.Fatal(err)
	}
	if st.Details["segment"] != "blue" || st.Counters["frames_from_vm"] == 0 || st.IP != "" {
		t.Errorf("Status of a1: segment %q, frames from the VM %d, IP %q", st.Details["segment"], st.Counters["frames_from_vm"], st.IP)
	}
}

func TestAttachConflicts(t *testing.T) {
	p := New()
	attach(t, p, "a1", "blue", 1)
	for _, c := range []struct {
		name, segment, mac string
		mtu                int
		code               sdk.Code
		want               string
	}{
		{"same MAC, same segment", "blue", "02:00:00:00:00:01", 1500, sdk.CodeConflict, "already used on segment blue by VM a1"},
		{"other MTU", "blue", "02:00:00:00:00:09", 9000, sdk.CodeConflict, "segment blue runs with MTU 1500"},
		{"MTU out of range", "blue", "02:00:00:00:00:09", 70000, sdk.CodeInvalid, "MTU 70000 is out of range"},
		{"same MAC, other segment", "green", "02:00:00:00:00:01", 1500, "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			ref := sdk.VMRef{ID: "id-" + c.name, Name: "x"}
			_, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: ref, MTU: c.mtu, RunDir: frameiotest.TempDir(t),
				Card: sdk.Card{Type: typeName, DynamicMAC: c.mac, Options: map[string]string{"segment": c.segment}}})
			t.Cleanup(func() { p.Release(context.Background(), &sdk.ReleaseRequest{VM: ref}) })
			checkErr(t, err, c.code, c.want)
		})
	}
}

func TestValidate(t *testing.T) {
	seg := func(name string) map[string]string { return map[string]string{"segment": name} }
	for _, c := range []struct {
		name string
		card sdk.Card
		code sdk.Code
		want string
	}{
		{"default segment", sdk.Card{Type: typeName}, "", ""},
		{"named segment", sdk.Card{Type: typeName, Options: seg("build-net-2")}, "", ""},
		{"internal MAC", sdk.Card{Type: typeName, InternalMAC: "52:54:00:12:34:56", DynamicMAC: "02:00:00:00:00:01"}, "", ""},
		{"long name", sdk.Card{Type: typeName, Options: seg(strings.Repeat("a", 33))}, sdk.CodeInvalid, "1 to 32 lower-case letters"},
		{"upper case", sdk.Card{Type: typeName, Options: seg("Blue")}, sdk.CodeInvalid, `segment name "Blue"`},
		{"unknown option", sdk.Card{Type: typeName, Options: map[string]string{"segmnet": "blue"}}, sdk.CodeInvalid, `no option "segmnet"`},
		{"IP", sdk.Card{Type: typeName, IP: "192.168.64.9"}, sdk.CodeInvalid, "no DHCP on a segment"},
		{"bridge", sdk.Card{Type: typeName, Bridge: "eth0"}, sdk.CodeInvalid, "never reaches the outside"},
		{"multicast MAC", sdk.Card{Type: typeName, InternalMAC: "01:00:5e:00:00:01"}, sdk.CodeInvalid, "multicast"},
		{"other type", sdk.Card{Type: "shared"}, sdk.CodeNotFound, `not "shared"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := New().Validate(t.Context(), &sdk.ValidateRequest{Card: c.card})
			checkErr(t, err, c.code, c.want)
		})
	}
}

// checkErr wants err to carry code and a message containing want; code
// "" wants no error.
func checkErr(t *testing.T, err error, code sdk.Code, want string) {
	t.Helper()
	switch {
	case code == "" && err != nil:
		t.Errorf("unexpected error: %v", err)
	case code == "":
	case err == nil:
		t.Errorf("no error; want %s %q", code, want)
	case sdk.CodeOf(err) != code || !strings.Contains(err.Error(), want):
		t.Errorf("error %s %q; want %s containing %q", sdk.CodeOf(err), err, code, want)
	}
}
