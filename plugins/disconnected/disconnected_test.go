package main

import (
	"strings"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// TestSwallowsFrames plays QEMU: what the guest sends is read and counted,
// and the endpoint says the cable is out.
func TestSwallowsFrames(t *testing.T) {
	p := New()
	vm := sdk.VMRef{ID: "id-1", Name: "vm1"}
	resp, err := p.Attach(t.Context(), &sdk.AttachRequest{
		VM:     vm,
		Card:   sdk.Card{Type: typeName, InternalMAC: "52:54:00:12:34:56", DynamicMAC: "02:00:00:00:00:01"},
		RunDir: frameiotest.TempDir(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Release(t.Context(), &sdk.ReleaseRequest{VM: vm}) })
	ep := resp.Endpoint
	if ep.LinkUp || ep.MAC != "52:54:00:12:34:56" || ep.MTU != frameio.DefaultMTU {
		t.Errorf("endpoint %+v: want the link down, the internal MAC, MTU %d", ep, frameio.DefaultMTU)
	}
	guest, err := frameio.ListenDgram(ep.VMPath, frameio.DgramOptions{Peer: ep.PluginPath, NoConnect: true, Logger: frameiotest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()

	const n = 100 // more than net.unix.max_dgram_qlen: the plugin must read, not just hold them
	b := frameio.NewBatch(1, guest.MTU())
	deadline := time.Now().Add(5 * time.Second)
	for sent := 0; sent < n; {
		b[0].N = frameiotest.FillFrame(b[0].Buf, 60, uint32(sent))
		k, _ := guest.WriteBatch(b)
		sent += k
		if k == 0 && time.Now().After(deadline) {
			t.Fatalf("the plugin took %d frames, then none for 5s", sent)
		}
	}
	var st *sdk.StatusResponse
	for {
		st, err = p.Status(t.Context(), &sdk.StatusRequest{VM: vm, Type: typeName})
		if err != nil {
			t.Fatal(err)
		}
		if st.Counters["frames_dropped"] >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond) // polling a counter
	}
	if got := st.Counters["frames_dropped"]; got != n {
		t.Errorf("frames_dropped %d; want %d", got, n)
	}
	if !st.Attached || st.IP != "" || st.InternalMAC != "52:54:00:12:34:56" || st.DynamicMAC != "02:00:00:00:00:01" {
		t.Errorf("Status %+v", st)
	}

	// The count survives Detach, for `anka show` of a stopped VM.
	p.Detach(t.Context(), &sdk.DetachRequest{VM: vm})
	if st, _ := p.Status(t.Context(), &sdk.StatusRequest{VM: vm}); st.Attached || st.Counters["frames_dropped"] != n {
		t.Errorf("Status after Detach %+v", st)
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		card sdk.Card
		code sdk.Code
		want string
	}{
		{sdk.Card{Type: typeName}, "", ""},
		{sdk.Card{Type: typeName, InternalMAC: "52:54:00:12:34:56", DynamicMAC: "02:00:00:00:00:01"}, "", ""},
		{sdk.Card{Type: typeName, Bridge: "eth0"}, sdk.CodeInvalid, "choose the bridge type"},
		{sdk.Card{Type: typeName, IP: "192.168.64.9"}, sdk.CodeInvalid, "choose the static type"},
		{sdk.Card{Type: typeName, Options: map[string]string{"segment": "a"}}, sdk.CodeInvalid, `no option "segment"`},
		{sdk.Card{Type: typeName, DynamicMAC: "02:00:00:00:00"}, sdk.CodeInvalid, "not an Ethernet address"},
		{sdk.Card{Type: "shared"}, sdk.CodeNotFound, `not "shared"`},
	} {
		_, err := New().Validate(t.Context(), &sdk.ValidateRequest{Card: c.card})
		switch {
		case c.code == "" && err != nil:
			t.Errorf("%+v: %v", c.card, err)
		case c.code == "":
		case sdk.CodeOf(err) != c.code || err == nil || !strings.Contains(err.Error(), c.want):
			t.Errorf("%+v: error %v (%s); want %s containing %q", c.card, err, sdk.CodeOf(err), c.code, c.want)
		}
	}
}
