package vswitch

import (
	"bytes"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
)

// TestSendTo: a service's reply reaches the one port it names, whatever
// its destination MAC (broadcast, another port's MAC), through the port's
// ToLink hook; runts, oversize frames and a detached port get nothing.
func TestSendTo(t *testing.T) {
	var hooked int
	r := newRig(t,
		PortConfig{Name: "a", MAC: macA, ToLink: func([]byte) { hooked++ }},
		PortConfig{Name: "b", MAC: macB})
	svc, err := r.sw.AttachService(PortConfig{Name: "svc", MAC: macC}, func([]frameio.Frame) {})
	if err != nil {
		t.Fatal(err)
	}
	toB := udpFrame(t, macC, macB, "10.0.0.1", "10.0.0.2", 67, 68)
	toAll := udpFrame(t, macC, bcast, "10.0.0.1", "255.255.255.255", 67, 68)
	svc.SendTo(r.ports["a"], toB, toAll, make([]byte, 10), make([]byte, 70000))
	got := r.links["a"].received()
	if len(got) != 2 || !bytes.Equal(got[0], toB) || !bytes.Equal(got[1], toAll) || hooked != 2 {
		t.Errorf("port a got %d frames (hook ran %d times); want the 2 good ones", len(got), hooked)
	}
	if n := r.got("b"); n != 0 {
		t.Errorf("port b got %d frames meant for a", n)
	}
	r.ports["a"].Detach()
	r.reset()
	svc.SendTo(r.ports["a"], toB)
	svc.SendTo(nil, toB)
	if r.got("a")+r.got("b") != 0 {
		t.Error("frames for a detached port went somewhere")
	}
}
