package main

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
	"github.com/anka-net/anka/sdk/plugintest"
)

func TestConformance(t *testing.T) {
	c := plugintest.Config{
		Type: typeName,
		ValidCard: func(sdk.VMRef) sdk.Card {
			return sdk.Card{Type: typeName, Options: map[string]string{"segment": "test-net"}}
		},
		InvalidCards: []sdk.Card{
			{Options: map[string]string{"segment": "Build_Net"}},
			{Options: map[string]string{"segment": ""}},
			{Options: map[string]string{"segment": "a-name-longer-than-thirty-two-chars"}},
			{Options: map[string]string{"segmnet": "typo"}},
			{Bridge: "eth0"},
			{IP: "192.168.64.9"},
		},
		PassesTraffic: true,
	}
	t.Run("direct", func(t *testing.T) {
		c.NewPlugin = func(testing.TB) sdk.NetworkPlugin { return New() }
		plugintest.Run(t, c)
	})
	t.Run("grpc", func(t *testing.T) {
		c.NewPlugin = func(t testing.TB) sdk.NetworkPlugin { return plugintest.InProcess(t, New()) }
		plugintest.Run(t, c)
	})
	t.Run("binary", func(t *testing.T) {
		bin := build(t)
		c.NewPlugin = func(t testing.TB) sdk.NetworkPlugin { return plugintest.Binary(t, bin, host.Config{}) }
		plugintest.Run(t, c)
	})
}

// build compiles this plugin under the name anka looks for.
func build(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the plugin binary")
	}
	gocmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the plugin with")
	}
	bin := filepath.Join(t.TempDir(), sdk.BinaryName(typeName))
	if out, err := exec.Command(gocmd, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
