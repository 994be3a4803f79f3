//go:build linux

package plugintest_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/mactrans"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
	"github.com/anka-net/anka/sdk/plugintest"
)

// lan is a reference plugin for the suite's own tests: one switch, every
// VM on it. With traffic off its ports are isolated and its links down.
// fault breaks one rule, to show that the suite notices.
type lan struct {
	tb      testing.TB
	typ     string
	traffic bool
	fault   string
	mu      sync.Mutex
	sw      *vswitch.Switch
	vms     map[string]*lanVM
}

type lanVM struct {
	card sdk.Card
	ep   sdk.Endpoint
	port *vswitch.Port
}

func newLAN(t testing.TB, typ string, traffic bool, fault string) *lan {
	l := &lan{tb: t, typ: typ, traffic: traffic, fault: fault, sw: vswitch.New(vswitch.Config{}), vms: map[string]*lanVM{}}
	t.Cleanup(func() { l.sw.Close() })
	return l
}

func (l *lan) Info(context.Context, *sdk.InfoRequest) (*sdk.InfoResponse, error) {
	ti := sdk.TypeInfo{Name: l.typ, Endpoints: []sdk.EndpointKind{sdk.EndpointDgram}}
	if l.traffic {
		ti.Capabilities = []string{sdk.CapTraffic, sdk.CapMACTranslate}
	}
	return &sdk.InfoResponse{Name: "anka-net-" + l.typ, ProtocolVersions: []int{1}, Types: []sdk.TypeInfo{ti}}, nil
}

func (l *lan) check(c sdk.Card, attach bool) (dyn, internal net.HardwareAddr, err error) {
	if l.fault == "validate-accepts-all" && !attach {
		return nil, nil, nil
	}
	if c.Type != l.typ {
		code := sdk.CodeNotFound
		if l.fault == "wrong-type-code" {
			code = sdk.CodeInvalid
		}
		return nil, nil, sdk.Errorf(code, "type %q is not served here", c.Type)
	}
	if c.Bridge != "" {
		return nil, nil, sdk.Errorf(sdk.CodeInvalid, "no bridge")
	}
	for _, m := range []struct {
		s   string
		dst *net.HardwareAddr
	}{{c.DynamicMAC, &dyn}, {c.InternalMAC, &internal}} {
		if m.s == "" {
			continue
		}
		mac, err := net.ParseMAC(m.s)
		if err != nil || len(mac) != 6 || mac[0]&1 != 0 || string(mac) == "\x00\x00\x00\x00\x00\x00" {
			return nil, nil, sdk.Errorf(sdk.CodeInvalid, "bad MAC %q", m.s)
		}
		*m.dst = mac
	}
	if attach && dyn == nil {
		return nil, nil, sdk.Errorf(sdk.CodeInvalid, "no dynamic MAC")
	}
	return dyn, internal, nil
}

func (l *lan) Validate(_ context.Context, req *sdk.ValidateRequest) (*sdk.ValidateResponse, error) {
	_, _, err := l.check(req.Card, false)
	return &sdk.ValidateResponse{}, err
}

func (l *lan) Attach(_ context.Context, req *sdk.AttachRequest) (*sdk.AttachResponse, error) {
	dyn, internal, err := l.check(req.Card, true)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.vms[req.VM.ID]
	if v != nil && v.port != nil {
		if l.fault != "attach-again-replaces" {
			return &sdk.AttachResponse{Endpoint: v.ep}, nil
		}
		v.port.Detach()
	}
	dir := req.RunDir
	if l.fault == "outside-rundir" {
		dir = frameiotest.TempDir(l.tb)
	}
	ep := sdk.Endpoint{Kind: sdk.EndpointDgram, PluginPath: filepath.Join(dir, "p.sock"), VMPath: filepath.Join(dir, "vm.sock"),
		MAC: dyn.String(), LinkUp: l.traffic != (l.fault == "link-up-wrong"), MTU: 1500}
	cfg := vswitch.PortConfig{Name: req.VM.Name, Identity: req.VM.ID, MAC: dyn, AntiSpoof: true, Isolated: !l.traffic && l.fault != "sink-leaks"}
	if internal != nil && l.fault != "no-translation" {
		ep.MAC = internal.String()
		out, _ := mactrans.New(internal, dyn)
		in, _ := mactrans.New(internal, dyn)
		cfg.FromLink = func(f []byte) bool { out.ToNetwork(f); return true }
		cfg.ToLink = in.ToGuest
	}
	link, err := frameio.ListenDgram(ep.PluginPath, frameio.DgramOptions{Peer: ep.VMPath, Logger: frameiotest.Quiet})
	if err != nil {
		return nil, sdk.Errorf(sdk.CodeUnavailable, "%v", err)
	}
	port, err := l.sw.Attach(link, cfg)
	if err != nil {
		link.Close()
		return nil, sdk.Errorf(sdk.CodeInternal, "%v", err)
	}
	l.vms[req.VM.ID] = &lanVM{card: req.Card, ep: ep, port: port}
	return &sdk.AttachResponse{Endpoint: ep}, nil
}

func (l *lan) Detach(_ context.Context, req *sdk.DetachRequest) (*sdk.DetachResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.vms[req.VM.ID]
	if v == nil && l.fault == "detach-unknown-fails" {
		return nil, sdk.Errorf(sdk.CodeNotFound, "unknown VM")
	}
	if v != nil && v.port != nil && l.fault != "detach-keeps-port" {
		v.port.Detach()
		v.port = nil
	}
	return &sdk.DetachResponse{}, nil
}

func (l *lan) Release(ctx context.Context, req *sdk.ReleaseRequest) (*sdk.ReleaseResponse, error) {
	l.Detach(ctx, &sdk.DetachRequest{VM: req.VM, Type: req.Type})
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fault != "release-remembers" {
		delete(l.vms, req.VM.ID)
	}
	return &sdk.ReleaseResponse{}, nil
}

func (l *lan) Status(_ context.Context, req *sdk.StatusRequest) (*sdk.StatusResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.vms[req.VM.ID]
	if v == nil {
		if l.fault == "status-plain-error" {
			return nil, errors.New("no such VM")
		}
		return nil, sdk.Errorf(sdk.CodeNotFound, "unknown VM %s", req.VM.Name)
	}
	return &sdk.StatusResponse{Attached: v.port != nil, InternalMAC: v.card.InternalMAC, DynamicMAC: v.card.DynamicMAC}, nil
}

func config(traffic bool, fault string) plugintest.Config {
	typ := "test-lan"
	if !traffic {
		typ = "test-sink"
	}
	return plugintest.Config{
		Type:          typ,
		NewPlugin:     func(t testing.TB) sdk.NetworkPlugin { return newLAN(t, typ, traffic, fault) },
		ValidCard:     func(sdk.VMRef) sdk.Card { return sdk.Card{} },
		InvalidCards:  []sdk.Card{{Bridge: "eth0"}},
		PassesTraffic: traffic,
		LinkDown:      !traffic,
	}
}

func TestReferencePlugins(t *testing.T) {
	t.Run("lan", func(t *testing.T) { plugintest.Run(t, config(true, "")) })
	t.Run("sink", func(t *testing.T) { plugintest.Run(t, config(false, "")) })
	// The same through go-plugin's gRPC connection: converters and error
	// codes must carry everything the suite checks.
	for _, traffic := range []bool{true, false} {
		c := config(traffic, "")
		direct := c.NewPlugin
		c.NewPlugin = func(t testing.TB) sdk.NetworkPlugin { return plugintest.InProcess(t, direct(t)) }
		t.Run(c.Type+"-grpc", func(t *testing.T) { plugintest.Run(t, c) })
	}
}

// faultEnv selects the broken plugin TestFault runs, in a child process.
const faultEnv = "PLUGINTEST_FAULT"

// TestFault runs the suite against a broken plugin; it only runs in the
// child process TestSuiteNotices starts, and is meant to fail there.
func TestFault(t *testing.T) {
	f := os.Getenv(faultEnv)
	if f == "" {
		t.Skip("run by TestSuiteNotices")
	}
	traffic, fault, _ := strings.Cut(f, ":")
	c := config(traffic == "lan", fault)
	c.Timeout = time.Second // frames that never come fail sooner
	plugintest.Run(t, c)
}

// TestSuiteNotices checks that each broken rule fails the suite with a
// message that says which.
func TestSuiteNotices(t *testing.T) {
	cases := []struct{ fault, want string }{
		{"lan:validate-accepts-all", "Validate of a malformed internal MAC succeeded"},
		{"lan:wrong-type-code", `Validate of a type the plugin does not serve: error code "invalid"`},
		{"lan:attach-again-replaces", "Attach of an attached VM replaced its socket"},
		{"lan:outside-rundir", "is outside RunDir"},
		{"lan:no-translation", "want 02:a4:6b:ee:ee:01 (the internal MAC when set"},
		{"lan:detach-keeps-port", "after vm2 was detached: a frame from vm1"},
		{"lan:detach-unknown-fails", "Detach of never-attached: unknown VM"},
		{"lan:release-remembers", "Status after Release succeeded; want a not-found error"},
		{"lan:status-plain-error", `Status of a VM never attached: error code "internal"`},
		{"sink:sink-leaks", "arrived at vm2 on a type that passes no traffic"},
		{"sink:link-up-wrong", "LinkUp true; Config.LinkDown true"},
	}
	if testing.Short() {
		t.Skip("starts a test process per fault")
	}
	for _, c := range cases {
		t.Run(c.fault, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestFault$", "-test.count=1")
			cmd.Env = append(os.Environ(), faultEnv+"="+c.fault)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed a plugin with fault %s:\n%s", c.fault, out)
			}
			if !strings.Contains(string(out), c.want) {
				t.Errorf("fault %s: the suite failed without saying %q:\n%s", c.fault, c.want, out)
			}
		})
	}
}
