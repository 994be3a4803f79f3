package main

import (
	"io"
	"sync"
	"testing"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/plugintest"
)

// inProcess makes the plugins the suite runs directly and over gRPC, each
// with the bridged interface in its settings; the one before is closed
// first, and the last when the test ends.
type inProcess struct {
	t        *testing.T
	settings map[string]string
	mu       sync.Mutex
	last     io.Closer
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
	p, err := New(sdk.Env{DataDir: in.t.TempDir(), Settings: in.settings, Logger: quiet})
	if err != nil {
		in.t.Fatal(err)
	}
	in.mu.Lock()
	in.last = p
	in.mu.Unlock()
	return p
}

// TestConformance: the kit's suite, directly and over gRPC with
// bridge_name in the settings at launch, and as the built binary, which
// gets no settings and bridges the default route's interface. Both are
// uplinkIf, a veth to a LAN namespace.
func TestConformance(t *testing.T) {
	newLAN(t, false)
	in := &inProcess{t: t, settings: map[string]string{settingKey: uplinkIf, sdk.OriginKey(settingKey): "system config /etc/anka/config.yaml"}}
	t.Cleanup(in.closeLast)
	plugintest.RunAll(t, plugintest.Config{
		Type:      typeName,
		ValidCard: func(sdk.VMRef) sdk.Card { return sdk.Card{} },
		InvalidCards: []sdk.Card{
			{IP: "10.77.0.120"},
			{Bridge: "lo"},
			{Bridge: "nosuch0"},
			{Bridge: "../../etc"},
			{Bridge: "a-name-too-long-for-linux"},
			{Options: map[string]string{"segment": "x"}},
		},
		PassesTraffic: true,
		Endpoints:     []sdk.EndpointKind{sdk.EndpointDgram, sdk.EndpointStream},
	}, in.plugin)
}

// TestConformanceStream: the suite once more with stream endpoints only.
func TestConformanceStream(t *testing.T) {
	newLAN(t, false)
	in := &inProcess{t: t, settings: map[string]string{settingKey: uplinkIf}}
	t.Cleanup(in.closeLast)
	c := plugintest.Config{
		Type: typeName, ValidCard: func(sdk.VMRef) sdk.Card { return sdk.Card{Bridge: uplinkIf} },
		PassesTraffic: true, Endpoints: []sdk.EndpointKind{sdk.EndpointStream},
		NewPlugin: func(testing.TB) sdk.NetworkPlugin { return in.plugin() },
	}
	plugintest.Run(t, c)
}
