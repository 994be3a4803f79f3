package main

import (
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/plugintest"

	"github.com/anka-net/anka/plugins/shared/routed/routedtest"
)

// inProcess makes the plugins the suite runs directly and over gRPC: each
// sets up the shared network, so the one before is closed first, and the
// last when the test ends.
type inProcess struct {
	t    *testing.T
	mu   sync.Mutex
	last io.Closer
}

func newInProcess(t *testing.T) *inProcess {
	in := &inProcess{t: t}
	t.Cleanup(in.closeLast)
	return in
}

func (in *inProcess) closeLast() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.last != nil {
		in.last.Close()
		in.last = nil
	}
}

func (in *inProcess) plugin() sdk.NetworkPlugin {
	in.closeLast()
	p, err := New(sdk.Env{DataDir: in.t.TempDir(), Logger: routedtest.Quiet})
	if err != nil {
		in.t.Fatal(err)
	}
	in.mu.Lock()
	in.last = p
	in.mu.Unlock()
	return p
}

func TestConformanceShared(t *testing.T) {
	routedtest.Skip(t)
	plugintest.RunAll(t, plugintest.Config{
		Type:          "shared",
		ValidCard:     func(sdk.VMRef) sdk.Card { return sdk.Card{} },
		InvalidCards:  []sdk.Card{{IP: "192.168.64.9"}, {Bridge: "eth0"}, {Options: map[string]string{"segment": "x"}}},
		PassesTraffic: true,
	}, newInProcess(t).plugin)
}

// The suite again with the VMs on vhost-user: the suite plays each VM
// with the vhost-user driver, QEMU and a virtio-net driver in one.
func TestConformanceSharedVhostUser(t *testing.T) {
	routedtest.Skip(t)
	plugintest.RunAll(t, plugintest.Config{
		Type:          "shared",
		ValidCard:     func(sdk.VMRef) sdk.Card { return sdk.Card{} },
		InvalidCards:  []sdk.Card{{IP: "192.168.64.9"}},
		PassesTraffic: true,
		Endpoints:     []sdk.EndpointKind{sdk.EndpointVhostUser},
	}, newInProcess(t).plugin)
}

func TestConformanceStatic(t *testing.T) {
	routedtest.Skip(t)
	var mu sync.Mutex
	n := 0
	plugintest.RunAll(t, plugintest.Config{
		Type: "static",
		// Every VM of the suite has an address of its own.
		ValidCard: func(sdk.VMRef) sdk.Card {
			mu.Lock()
			defer mu.Unlock()
			n++
			return sdk.Card{IP: fmt.Sprintf("192.168.64.%d", 100+n%150)}
		},
		InvalidCards: []sdk.Card{
			{IP: ""}, {IP: "not-an-ip"}, {IP: "10.0.0.5"}, {IP: "192.168.64.1"},
			{IP: "192.168.64.0"}, {IP: "192.168.64.255"}, {IP: "fd00::5"},
			{IP: "192.168.64.77", Bridge: "eth0"},
		},
		PassesTraffic: true,
	}, newInProcess(t).plugin)
}
