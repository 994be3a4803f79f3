package host_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
)

// The test binary is also the plugin and, for the survival test, the host
// that dies: TestMain picks the role from the environment.
const (
	envRole       = "ANKA_HOST_TEST_ROLE"
	envSocketDir  = "ANKA_HOST_TEST_SOCKET_DIR"
	envReattachTo = "ANKA_HOST_TEST_REATTACH_FILE"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "plugin":
		sdk.ServeFunc(newTestPlugin)
		os.Exit(0)
	case "host":
		os.Exit(dyingHost())
	}
	os.Exit(m.Run())
}

// dyingHost launches the plugin, saves its reattach info and waits to be
// killed, as a daemon that crashes would.
func dyingHost() int {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := host.Launch(ctx, host.Config{
		Path:      self,
		SocketDir: os.Getenv(envSocketDir),
		Env:       []string{envRole + "=plugin"},
		LogLevel:  "debug",
		// No DataDir and no LogFile: the plugin logs to its stderr, the
		// pipe that breaks when this process dies.
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	info, err := p.ReattachInfo()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	b, _ := json.Marshal(info)
	tmp := os.Getenv(envReattachTo) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := os.Rename(tmp, os.Getenv(envReattachTo)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	select {} // until SIGKILL
}

// testPlugin serves "alpha" and "beta"; it has no optional interfaces.
type testPlugin struct {
	env sdk.Env
}

func newTestPlugin(env sdk.Env) (sdk.NetworkPlugin, error) {
	if env.Settings["fail"] != "" {
		return nil, fmt.Errorf("setting fail is %q", env.Settings["fail"])
	}
	return &testPlugin{env: env}, nil
}

func (p *testPlugin) Info(context.Context, *sdk.InfoRequest) (*sdk.InfoResponse, error) {
	p.env.Logger.Info("Info called", "pid", os.Getpid())
	return &sdk.InfoResponse{Name: "anka-net-test", Version: "0.1.0", ProtocolVersions: []int{sdk.ProtocolVersion},
		Types: []sdk.TypeInfo{
			{Name: "alpha", Description: "the first", Capabilities: []string{sdk.CapTraffic}, Endpoints: []sdk.EndpointKind{sdk.EndpointDgram}},
			{Name: "beta", Endpoints: []sdk.EndpointKind{sdk.EndpointTAP}},
		}}, nil
}

func (p *testPlugin) Validate(_ context.Context, req *sdk.ValidateRequest) (*sdk.ValidateResponse, error) {
	p.env.Logger.Info("Validate called", "vm", req.VM.Name)
	if req.Card.IP == "192.168.64.5" {
		return nil, sdk.Errorf(sdk.CodeConflict, "IP 192.168.64.5 is taken by vm2: choose another address")
	}
	return &sdk.ValidateResponse{}, nil
}

func (p *testPlugin) Attach(context.Context, *sdk.AttachRequest) (*sdk.AttachResponse, error) {
	return &sdk.AttachResponse{Endpoint: sdk.Endpoint{Kind: sdk.EndpointDgram, LinkUp: true}}, nil
}

func (p *testPlugin) Detach(context.Context, *sdk.DetachRequest) (*sdk.DetachResponse, error) {
	return &sdk.DetachResponse{}, nil
}

func (p *testPlugin) Release(context.Context, *sdk.ReleaseRequest) (*sdk.ReleaseResponse, error) {
	return &sdk.ReleaseResponse{}, nil
}

// Status reports what the plugin was given, for the tests to check.
func (p *testPlugin) Status(_ context.Context, req *sdk.StatusRequest) (*sdk.StatusResponse, error) {
	p.env.Logger.Info("Status called", "vm", req.VM.Name)
	return &sdk.StatusResponse{Details: map[string]string{
		"data_dir":  p.env.DataDir,
		"log_level": p.env.LogLevel,
		"setting":   p.env.Settings["color"],
		"pid":       fmt.Sprint(os.Getpid()),
		"sdk_dir":   sdk.DataDir(),
	}}, nil
}
