package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/plugintest"
)

// fake serves two types and records what it was asked.
type fake struct {
	mu   sync.Mutex
	seen []any
	err  error // returned by every call about a VM when set
	hook func(ctx context.Context, method string) error
}

func (f *fake) record(ctx context.Context, method string, req any) error {
	f.mu.Lock()
	f.seen = append(f.seen, req)
	err := f.err
	f.mu.Unlock()
	if f.hook != nil {
		if err := f.hook(ctx, method); err != nil {
			return err
		}
	}
	return err
}

func (f *fake) last() any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen[len(f.seen)-1]
}

func (f *fake) Info(context.Context, *sdk.InfoRequest) (*sdk.InfoResponse, error) {
	return &sdk.InfoResponse{Name: "anka-net-fake", Version: "0.1", Types: []sdk.TypeInfo{
		{Name: "alpha", Capabilities: []string{sdk.CapTraffic}, Endpoints: []sdk.EndpointKind{sdk.EndpointDgram}},
		{Name: "beta"},
	}}, nil
}

func (f *fake) Validate(ctx context.Context, req *sdk.ValidateRequest) (*sdk.ValidateResponse, error) {
	return &sdk.ValidateResponse{}, f.record(ctx, "Validate", req)
}

func (f *fake) Attach(ctx context.Context, req *sdk.AttachRequest) (*sdk.AttachResponse, error) {
	if err := f.record(ctx, "Attach", req); err != nil {
		return nil, err
	}
	return &sdk.AttachResponse{Endpoint: sdk.Endpoint{Kind: req.Endpoints[0], PluginPath: req.RunDir + "/p", VMPath: req.RunDir + "/v",
		MAC: req.Card.DynamicMAC, LinkUp: true, MTU: req.MTU}}, nil
}

func (f *fake) Detach(ctx context.Context, req *sdk.DetachRequest) (*sdk.DetachResponse, error) {
	return &sdk.DetachResponse{}, f.record(ctx, "Detach", req)
}

func (f *fake) Release(ctx context.Context, req *sdk.ReleaseRequest) (*sdk.ReleaseResponse, error) {
	return &sdk.ReleaseResponse{}, f.record(ctx, "Release", req)
}

func (f *fake) Status(ctx context.Context, req *sdk.StatusRequest) (*sdk.StatusResponse, error) {
	if err := f.record(ctx, "Status", req); err != nil {
		return nil, err
	}
	return &sdk.StatusResponse{Attached: true, IP: "192.168.64.5", LeaseExpiry: time.Unix(1_800_000_000, 5),
		Counters: map[string]uint64{"rx": 1}, Details: map[string]string{"vm": req.VM.Name}}, nil
}

// forwarder is a fake that also forwards ports and suspends.
type forwarder struct {
	fake
	rules []sdk.PortForward
}

func (f *forwarder) Suspend(ctx context.Context, req *sdk.SuspendRequest) (*sdk.SuspendResponse, error) {
	return &sdk.SuspendResponse{}, f.record(ctx, "Suspend", req)
}

func (f *forwarder) Resume(ctx context.Context, req *sdk.ResumeRequest) (*sdk.ResumeResponse, error) {
	return &sdk.ResumeResponse{}, f.record(ctx, "Resume", req)
}

func (f *forwarder) AddPortForward(ctx context.Context, req *sdk.PortForwardRequest) (*sdk.PortForwardResponse, error) {
	if err := f.record(ctx, "AddPortForward", req); err != nil {
		return nil, err
	}
	f.rules = append(f.rules, req.Rule)
	return &sdk.PortForwardResponse{}, nil
}

func (f *forwarder) RemovePortForward(ctx context.Context, req *sdk.PortForwardRequest) (*sdk.PortForwardResponse, error) {
	return &sdk.PortForwardResponse{}, f.record(ctx, "RemovePortForward", req)
}

func (f *forwarder) ListPortForwards(ctx context.Context, req *sdk.ListPortForwardsRequest) (*sdk.ListPortForwardsResponse, error) {
	return &sdk.ListPortForwardsResponse{Rules: f.rules}, f.record(ctx, "ListPortForwards", req)
}

var vm = sdk.VMRef{ID: "6f1c0e4e", Name: "vm1"}

func TestWireCallsArriveIntact(t *testing.T) {
	f := &forwarder{}
	p := plugintest.InProcess(t, f)
	ctx := context.Background()
	card := sdk.Card{Type: "beta", Bridge: "eth0", IP: "10.0.0.2", InternalMAC: "02:00:00:00:00:01",
		DynamicMAC: "0e:00:00:00:00:01", Options: map[string]string{"k": "v"}}
	rule := sdk.PortForward{Name: "ssh", Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 2222, GuestPort: 22}

	info, err := p.Info(ctx, &sdk.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(info.ProtocolVersions, []int{sdk.ProtocolVersion}) || len(info.Types) != 2 || info.Types[0].Name != "alpha" {
		t.Errorf("Info: %+v", info)
	}
	if info.Runtime != nil {
		t.Errorf("Info without Runtime asked: runtime %+v", info.Runtime)
	}
	// The sdk answers Runtime itself, whatever the plugin's Info does.
	info, err = p.Info(ctx, &sdk.InfoRequest{Runtime: true})
	if err != nil {
		t.Fatal(err)
	}
	if rt := info.Runtime; rt == nil || rt.Goroutines < 2 || rt.HeapAlloc == 0 {
		t.Errorf("Info with Runtime: %+v", rt)
	}

	calls := []struct {
		name string
		req  any
		want any // response; nil: not checked
	}{
		{"Validate", &sdk.ValidateRequest{VM: vm, Card: card}, nil},
		{"Attach", &sdk.AttachRequest{VM: vm, Card: card, Endpoints: []sdk.EndpointKind{sdk.EndpointStream}, RunDir: "/run/x", MTU: 1400},
			&sdk.AttachResponse{Endpoint: sdk.Endpoint{Kind: sdk.EndpointStream, PluginPath: "/run/x/p", VMPath: "/run/x/v",
				MAC: card.DynamicMAC, LinkUp: true, MTU: 1400}}},
		{"Status", &sdk.StatusRequest{VM: vm, Type: "alpha"},
			&sdk.StatusResponse{Attached: true, IP: "192.168.64.5", LeaseExpiry: time.Unix(1_800_000_000, 5),
				Counters: map[string]uint64{"rx": 1}, Details: map[string]string{"vm": "vm1"}}},
		{"Suspend", &sdk.SuspendRequest{VM: vm, Type: "alpha"}, nil},
		{"Resume", &sdk.ResumeRequest{VM: vm, Type: "alpha"}, nil},
		{"AddPortForward", &sdk.PortForwardRequest{VM: vm, Type: "alpha", Rule: rule}, nil},
		{"ListPortForwards", &sdk.ListPortForwardsRequest{VM: vm, Type: "alpha"},
			&sdk.ListPortForwardsResponse{Rules: []sdk.PortForward{rule}}},
		{"RemovePortForward", &sdk.PortForwardRequest{VM: vm, Type: "alpha", Rule: rule}, nil},
		{"Detach", &sdk.DetachRequest{VM: vm, Type: "alpha"}, nil},
		{"Release", &sdk.ReleaseRequest{VM: vm, Type: "beta"}, nil},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			got, err := call(ctx, p, c.name, c.req)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(f.last(), c.req) {
				t.Errorf("the plugin got %+v, sent %+v", f.last(), c.req)
			}
			if c.want != nil && !reflect.DeepEqual(got, c.want) {
				t.Errorf("response %+v, want %+v", got, c.want)
			}
		})
	}
}

// call dispatches req to the method it belongs to.
func call(ctx context.Context, p sdk.NetworkPlugin, method string, req any) (any, error) {
	sp, _ := p.(sdk.Suspender)
	pf, _ := p.(sdk.PortForwarder)
	switch r := req.(type) {
	case *sdk.ValidateRequest:
		return p.Validate(ctx, r)
	case *sdk.AttachRequest:
		return p.Attach(ctx, r)
	case *sdk.DetachRequest:
		return p.Detach(ctx, r)
	case *sdk.ReleaseRequest:
		return p.Release(ctx, r)
	case *sdk.StatusRequest:
		return p.Status(ctx, r)
	case *sdk.SuspendRequest:
		return sp.Suspend(ctx, r)
	case *sdk.ResumeRequest:
		return sp.Resume(ctx, r)
	case *sdk.ListPortForwardsRequest:
		return pf.ListPortForwards(ctx, r)
	case *sdk.PortForwardRequest:
		if method == "RemovePortForward" {
			return pf.RemovePortForward(ctx, r)
		}
		return pf.AddPortForward(ctx, r)
	}
	return nil, fmt.Errorf("no call for %T", req)
}

func TestWireErrorCodesRoundTrip(t *testing.T) {
	cases := []struct {
		name     string
		err      error
		code     sdk.Code
		message  string
		sameType bool // the host gets an *sdk.Error equal to the plugin's
	}{
		{"invalid", sdk.Errorf(sdk.CodeInvalid, "interface wlan0 is Wi-Fi; bridge mode needs an Ethernet interface"),
			sdk.CodeInvalid, "interface wlan0 is Wi-Fi; bridge mode needs an Ethernet interface", true},
		{"not-found", sdk.Errorf(sdk.CodeNotFound, "VM vm1 is unknown"), sdk.CodeNotFound, "VM vm1 is unknown", true},
		{"conflict", sdk.Errorf(sdk.CodeConflict, "IP 192.168.64.5 is taken by vm2: choose another"), sdk.CodeConflict,
			"IP 192.168.64.5 is taken by vm2: choose another", true},
		{"unavailable", sdk.Errorf(sdk.CodeUnavailable, "eth9 is down"), sdk.CodeUnavailable, "eth9 is down", true},
		{"unsupported", sdk.Errorf(sdk.CodeUnsupported, "no"), sdk.CodeUnsupported, "no", true},
		{"internal", sdk.Errorf(sdk.CodeInternal, "oops"), sdk.CodeInternal, "oops", true},
		{"a code from a newer sdk", &sdk.Error{Code: "quota", Message: "too many VMs"}, "quota", "too many VMs", true},
		{"wrapped", fmt.Errorf("attaching vm1: %w", sdk.Errorf(sdk.CodeConflict, "MAC in use")), sdk.CodeConflict,
			"attaching vm1: MAC in use", false},
		{"plain error", errors.New("disk full"), sdk.CodeInternal, "disk full", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := plugintest.InProcess(t, &fake{err: c.err})
			_, err := p.Validate(context.Background(), &sdk.ValidateRequest{VM: vm, Card: sdk.Card{Type: "alpha"}})
			var e *sdk.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T %v is no *sdk.Error", err, err)
			}
			if e.Code != c.code || e.Message != c.message || err.Error() != c.message {
				t.Errorf("got code %q message %q, want %q %q", e.Code, e.Message, c.code, c.message)
			}
			if sdk.CodeOf(err) != c.code {
				t.Errorf("CodeOf = %q", sdk.CodeOf(err))
			}
			if c.sameType && !reflect.DeepEqual(err, c.err) {
				t.Errorf("got %#v, want %#v", err, c.err)
			}
		})
	}
}

func TestWireUnsupportedOptionalInterfaces(t *testing.T) {
	p := plugintest.InProcess(t, &fake{})
	ctx := context.Background()
	sp, ok := p.(sdk.Suspender)
	if !ok {
		t.Fatal("the host's client is no sdk.Suspender")
	}
	pf, ok := p.(sdk.PortForwarder)
	if !ok {
		t.Fatal("the host's client is no sdk.PortForwarder")
	}
	errs := map[string]error{}
	_, errs["Suspend"] = sp.Suspend(ctx, &sdk.SuspendRequest{VM: vm, Type: "alpha"})
	_, errs["Resume"] = sp.Resume(ctx, &sdk.ResumeRequest{VM: vm, Type: "alpha"})
	_, errs["AddPortForward"] = pf.AddPortForward(ctx, &sdk.PortForwardRequest{VM: vm, Type: "alpha"})
	_, errs["RemovePortForward"] = pf.RemovePortForward(ctx, &sdk.PortForwardRequest{VM: vm, Type: "alpha"})
	_, errs["ListPortForwards"] = pf.ListPortForwards(ctx, &sdk.ListPortForwardsRequest{VM: vm, Type: "alpha"})
	cp, ok := p.(sdk.Capturer)
	if !ok {
		t.Fatal("the host's client is no sdk.Capturer")
	}
	_, errs["StartCapture"] = cp.StartCapture(ctx, &sdk.CaptureRequest{VM: vm, Type: "alpha", Path: "/tmp/x.pcap"})
	_, errs["StopCapture"] = cp.StopCapture(ctx, &sdk.CaptureRequest{VM: vm, Type: "alpha"})
	for name, err := range errs {
		if sdk.CodeOf(err) != sdk.CodeUnsupported || !strings.Contains(err.Error(), `"alpha"`) {
			t.Errorf("%s: %v (code %q), want unsupported naming the type", name, err, sdk.CodeOf(err))
		}
	}
}

func TestWireChecksTheType(t *testing.T) {
	p := plugintest.InProcess(t, &fake{})
	ctx := context.Background()
	_, err := p.Attach(ctx, &sdk.AttachRequest{VM: vm, Card: sdk.Card{Type: "gamma"}})
	if sdk.CodeOf(err) != sdk.CodeNotFound || !strings.Contains(err.Error(), "alpha, beta") {
		t.Errorf("unknown type: %v (code %q)", err, sdk.CodeOf(err))
	}
	_, err = p.Status(ctx, &sdk.StatusRequest{VM: vm})
	if sdk.CodeOf(err) != sdk.CodeInvalid {
		t.Errorf("no type: %v (code %q)", err, sdk.CodeOf(err))
	}
	// A nil request is a request with no type, not a crash.
	_, err = p.Detach(ctx, nil)
	if sdk.CodeOf(err) != sdk.CodeInvalid {
		t.Errorf("nil request: %v (code %q)", err, sdk.CodeOf(err))
	}
}

func TestWirePanicIsAnInternalError(t *testing.T) {
	f := &fake{hook: func(_ context.Context, method string) error {
		if method == "Attach" {
			panic("index out of range")
		}
		return nil
	}}
	p := plugintest.InProcess(t, f)
	ctx := context.Background()
	_, err := p.Attach(ctx, &sdk.AttachRequest{VM: vm, Card: sdk.Card{Type: "alpha"}, Endpoints: []sdk.EndpointKind{"dgram"}})
	if sdk.CodeOf(err) != sdk.CodeInternal || !strings.Contains(err.Error(), "index out of range") {
		t.Errorf("panic: %v (code %q)", err, sdk.CodeOf(err))
	}
	if _, err := p.Status(ctx, &sdk.StatusRequest{VM: vm, Type: "alpha"}); err != nil {
		t.Errorf("the plugin does not answer after a panic: %v", err)
	}
}

func TestWireDeadline(t *testing.T) {
	f := &fake{hook: func(ctx context.Context, _ string) error {
		<-ctx.Done()
		return ctx.Err()
	}}
	p := plugintest.InProcess(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := p.Detach(ctx, &sdk.DetachRequest{VM: vm, Type: "alpha"})
	if !errors.Is(err, context.DeadlineExceeded) || sdk.CodeOf(err) != sdk.CodeUnavailable {
		t.Errorf("got %v (code %q), want a deadline error with code unavailable", err, sdk.CodeOf(err))
	}
}
