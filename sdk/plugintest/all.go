package plugintest

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
)

// RunAll runs the suite the three ways a plugin must pass it: called
// directly, through the gRPC path in process, and as the binary built
// from the test's package (the current folder, a main package). newPlugin
// makes a fresh implementation; c.NewPlugin is set for each way.
func RunAll(t *testing.T, c Config, newPlugin func() sdk.NetworkPlugin) {
	t.Run("direct", func(t *testing.T) {
		c.NewPlugin = func(testing.TB) sdk.NetworkPlugin { return newPlugin() }
		Run(t, c)
	})
	t.Run("grpc", func(t *testing.T) {
		c.NewPlugin = func(t testing.TB) sdk.NetworkPlugin { return InProcess(t, newPlugin()) }
		Run(t, c)
	})
	t.Run("binary", func(t *testing.T) {
		bin := BuildBinary(t, c.Type)
		c.NewPlugin = func(t testing.TB) sdk.NetworkPlugin { return Binary(t, bin, host.Config{}) }
		Run(t, c)
	})
}

// BuildBinary compiles the test's package under the name anka looks for,
// anka-net-<typ>; it skips with -short or without a go command.
func BuildBinary(t *testing.T, typ string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the plugin binary")
	}
	gocmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the plugin with")
	}
	bin := filepath.Join(t.TempDir(), sdk.BinaryName(typ))
	if out, err := exec.Command(gocmd, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
