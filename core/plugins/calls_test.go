package plugins

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/vm"
	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
)

func TestCheckEndpoint(t *testing.T) {
	req := &sdk.AttachRequest{RunDir: "/var/lib/anka/vms/vm1", Endpoints: []sdk.EndpointKind{sdk.EndpointDgram, sdk.EndpointTAP, sdk.EndpointVhostUser}}
	good := sdk.Endpoint{Kind: sdk.EndpointDgram, PluginPath: "/var/lib/anka/vms/vm1/p.sock", VMPath: "/var/lib/anka/vms/vm1/v.sock", MAC: "52:54:00:12:34:56", MTU: 1500}
	for _, c := range []struct {
		name string
		mod  func(*sdk.Endpoint)
		want string
	}{
		{"good", func(*sdk.Endpoint) {}, ""},
		{"tap", func(e *sdk.Endpoint) { *e = sdk.Endpoint{Kind: sdk.EndpointTAP, TAP: "anka-12345678"} }, ""},
		{"kind not offered", func(e *sdk.Endpoint) { e.Kind = sdk.EndpointStream }, "kind"},
		{"unknown kind", func(e *sdk.Endpoint) { e.Kind = "pigeon" }, "kind"},
		{"other VM's socket", func(e *sdk.Endpoint) { e.PluginPath = "/var/lib/anka/vms/vm2/p.sock" }, "folder"},
		{"escape", func(e *sdk.Endpoint) { e.VMPath = "/var/lib/anka/vms/vm1/../vm2/v.sock" }, "folder"},
		{"relative", func(e *sdk.Endpoint) { e.VMPath = "v.sock" }, "folder"},
		{"same socket", func(e *sdk.Endpoint) { e.VMPath = e.PluginPath }, "folder"},
		{"vhost-user", func(e *sdk.Endpoint) {
			*e = sdk.Endpoint{Kind: sdk.EndpointVhostUser, PluginPath: "/var/lib/anka/vms/vm1/vu.sock"}
		}, ""},
		{"vhost-user elsewhere", func(e *sdk.Endpoint) { *e = sdk.Endpoint{Kind: sdk.EndpointVhostUser, PluginPath: "/tmp/vu.sock"} }, "vhost-user socket path"},
		{"bad tap", func(e *sdk.Endpoint) { *e = sdk.Endpoint{Kind: sdk.EndpointTAP, TAP: "a/b"} }, "TAP"},
		{"long tap", func(e *sdk.Endpoint) { *e = sdk.Endpoint{Kind: sdk.EndpointTAP, TAP: strings.Repeat("t", 16)} }, "TAP"},
		{"bad mac", func(e *sdk.Endpoint) { e.MAC = "zz" }, "MAC"},
		{"bad mtu", func(e *sdk.Endpoint) { e.MTU = 1 << 20 }, "MTU"},
	} {
		ep := good
		c.mod(&ep)
		got := checkEndpoint(req, &sdk.AttachResponse{Endpoint: ep})
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	if checkEndpoint(req, nil) == "" {
		t.Error("a nil answer passed")
	}
	if checkStatus(&sdk.StatusResponse{IP: "192.168.64.2", DynamicMAC: "02:00:00:00:00:01"}) != "" ||
		checkStatus(&sdk.StatusResponse{IP: "999.1.1.1"}) == "" || checkStatus(&sdk.StatusResponse{InternalMAC: "x"}) == "" || checkStatus(nil) == "" {
		t.Error("checkStatus")
	}
}

// A call that ignores its context still returns at the deadline, with
// the plugin binary and the call named; a caller's own cancel is not
// blamed on the plugin.
func TestTimedGivesUpOnAHungCall(t *testing.T) {
	h := &Host{StateDir: t.TempDir(), CallTimeout: 50 * time.Millisecond}
	fd := Found{Type: "bad", Path: "/opt/anka-net-bad"}
	hang := make(chan struct{})
	defer close(hang)
	began := time.Now()
	err := h.timed(context.Background(), fd, "Attach", func(context.Context) error { <-hang; return nil })
	if time.Since(began) > 5*time.Second {
		t.Fatalf("timed waited %v", time.Since(began))
	}
	if !errs.Is(err, errs.Unavailable) || !strings.Contains(err.Error(), "/opt/anka-net-bad") || !strings.Contains(err.Error(), "did not answer Attach within 50ms") {
		t.Fatalf("hung call: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.timed(ctx, fd, "Attach", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled by the caller: %v", err)
	}
	if h.callTimeout("Status") != 50*time.Millisecond || (&Host{}).callTimeout("Status") != StatusTimeout || (&Host{}).callTimeout("Attach") != DefaultCallTimeout {
		t.Fatal("callTimeout")
	}
	// A plugin's own refusal keeps its words and code.
	err = h.timed(context.Background(), fd, "Validate", func(context.Context) error { return sdk.Errorf(sdk.CodeInvalid, "no option x") })
	if !errs.Is(err, errs.Invalid) || !strings.Contains(err.Error(), "no option x") {
		t.Fatalf("plugin refusal: %v", err)
	}
}

// lateTimer is a call's context whose deadline has passed by the clock
// while its timer has not yet fired: Err is still nil.
type lateTimer struct {
	context.Context
	deadline time.Time
}

func (c lateTimer) Deadline() (time.Time, bool) { return c.deadline, true }

// The plugin's gRPC server resets the stream when the deadline it was
// sent passes; when that reset arrives before this process's timer
// fires, the call still ran out of time. A cancel before the deadline,
// or another error after it, is not a timeout.
func TestTimedOutWhenThePluginsResetComesFirst(t *testing.T) {
	bg := context.Background()
	past := lateTimer{bg, time.Now().Add(-time.Millisecond)}
	future := lateTimer{bg, time.Now().Add(time.Hour)}
	reset := fmt.Errorf("plugin bad did not finish Validate: stream terminated by RST_STREAM with error code: CANCEL: %w", context.Canceled)
	for _, c := range []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"reset after the deadline, timer not fired", past, reset, true},
		{"deadline error after the deadline", past, fmt.Errorf("x: %w", context.DeadlineExceeded), true},
		{"reset before the deadline", future, reset, false},
		{"a refusal after the deadline", past, sdk.Errorf(sdk.CodeInvalid, "no option x"), false},
		{"no deadline", bg, reset, false},
	} {
		if got := timedOut(c.ctx, c.err); got != c.want {
			t.Errorf("%s: timedOut = %v, want %v", c.name, got, c.want)
		}
	}
	expired, cancel := context.WithTimeout(bg, -time.Second)
	defer cancel()
	if !timedOut(expired, errors.New("anything")) {
		t.Error("a context done by its deadline is a timeout whatever the error")
	}
}

// QEMU offers the fast path, vhost-user and datagrams; an external VM
// offers what it was created with, dgram and stream unless told.
func TestEndpointKinds(t *testing.T) {
	for _, c := range []struct {
		name string
		rt   vm.RuntimeSpec
		want []sdk.EndpointKind
	}{
		{"qemu", vm.RuntimeSpec{}, []sdk.EndpointKind{sdk.EndpointTAP, sdk.EndpointVhostUser, sdk.EndpointDgram}},
		{"external default", vm.RuntimeSpec{Kind: vm.RuntimeExternal}, []sdk.EndpointKind{sdk.EndpointDgram, sdk.EndpointStream}},
		{"external vhost-user", vm.RuntimeSpec{Kind: vm.RuntimeExternal, Endpoints: []string{"vhost-user", "dgram"}}, []sdk.EndpointKind{sdk.EndpointVhostUser, sdk.EndpointDgram}},
	} {
		if got := endpointKinds(&vm.VM{Runtime: c.rt}, true); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	if got := endpointKinds(&vm.VM{}, false); !slices.Equal(got, []sdk.EndpointKind{sdk.EndpointTAP, sdk.EndpointDgram}) {
		t.Errorf("qemu with vhost_user off: %v", got)
	}
}

// A call that fails because its plugin died is named so even when the
// daemon has already started the next process by the time the error is
// looked at (it did in CI: the restart won the race, and the error read
// "not answering" without the binary).
func TestTimedNamesTheExitWhenTheNextProcessRuns(t *testing.T) {
	h := &Host{StateDir: t.TempDir()}
	fd := Found{Type: "bad", Path: "/opt/anka-net-bad"}
	first := exec.Command("sleep", "60")
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	defer first.Process.Kill()
	writeReattach := func(pid int) {
		t.Helper()
		b, _ := json.Marshal(host.ReattachInfo{Protocol: "grpc", Pid: pid, Path: fd.Path})
		if err := os.MkdirAll(DataDir(h.StateDir, fd.Path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(ReattachFile(h.StateDir, fd.Path), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeReattach(first.Process.Pid)
	err := h.timed(context.Background(), fd, "Attach", func(context.Context) error {
		_ = first.Process.Kill()
		_ = first.Wait()
		writeReattach(os.Getpid()) // the next plugin is up already
		return sdk.Errorf(sdk.CodeUnavailable, "plugin anka-net-bad is not answering (EOF)")
	})
	if !errs.Is(err, errs.Unavailable) || !strings.Contains(err.Error(), "exited during Attach") || !strings.Contains(err.Error(), fd.Path) {
		t.Fatalf("a plugin that died mid-call, restarted at once: %v", err)
	}
	// The same failure from a process that lives on is not called an exit.
	err = h.timed(context.Background(), fd, "Attach", func(context.Context) error {
		return sdk.Errorf(sdk.CodeUnavailable, "plugin anka-net-bad is not answering (EOF)")
	})
	if err == nil || strings.Contains(err.Error(), "exited during") {
		t.Fatalf("a live plugin's failure: %v", err)
	}
}

// timed runs under the connections' lock when connect attaches the VMs of
// a restarted plugin again, so it must never take that lock itself (it
// once did, and a daemon whose plugin was killed hung every call after).
func TestTimedUnderTheConnectionsLock(t *testing.T) {
	h := &Host{StateDir: t.TempDir()}
	c := h.conns()
	c.mu.Lock()
	defer c.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		done <- h.timed(context.Background(), Found{Type: "bad", Path: "/opt/anka-net-bad"}, "Attach", func(context.Context) error {
			return sdk.Errorf(sdk.CodeUnavailable, "not answering")
		})
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a failed call returned nil")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("timed waits for the connections' lock: connect's reattach of VMs would deadlock")
	}
}
