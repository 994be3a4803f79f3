package plugins

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/runtime"
	"github.com/anka-net/anka/sdk"
)

// Deadlines of plugin calls. A plugin is another program: one that hangs
// must cost a command a bounded wait, never the daemon.
const (
	// DefaultCallTimeout bounds one call (Validate, Attach, Detach,
	// Release, port forwards, suspend, capture) when plugin_timeout is
	// not set.
	DefaultCallTimeout = 30 * time.Second
	// StatusTimeout caps Status, which `anka show` and `anka start`'s wait
	// for the address make often: a slow answer is as good as none.
	StatusTimeout = 10 * time.Second
	// ConnectTimeout bounds reaching a plugin: launching it (go-plugin's
	// handshake) and its first Info.
	ConnectTimeout = 90 * time.Second
)

// callTimeout is the deadline of one call named call.
func (h *Host) callTimeout(call string) time.Duration {
	d := h.CallTimeout
	if d <= 0 {
		d = DefaultCallTimeout
	}
	if call == "Status" {
		d = min(d, StatusTimeout)
	}
	return d
}

// invoke runs fn on the plugin serving typ under the deadline of call. A
// type without a plugin is ErrNoPlugin (the caller decides whether that
// matters).
func (h *Host) invoke(ctx context.Context, typ, call string, fn func(context.Context, sdk.NetworkPlugin) error) error {
	fd, err := h.Finder.Find(typ)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, ConnectTimeout)
	pl, err := h.connect(cctx, fd)
	cancel()
	if err != nil {
		return err
	}
	return h.timed(ctx, fd, call, func(ctx context.Context) error { return fn(ctx, pl) })
}

// timed runs fn with the deadline of call and turns what went wrong into
// a sentence naming the plugin binary and the call. fn runs in its own
// goroutine so even a client that ignores its context cannot hold the
// caller past the deadline.
func (h *Host) timed(ctx context.Context, fd Found, call string, fn func(context.Context) error) error {
	d := h.callTimeout(call)
	pid := h.pid(fd) // the process this call goes to, before any restart
	cctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fn(cctx) }()
	var err error
	select {
	case err = <-done:
	case <-cctx.Done():
		err = cctx.Err()
	}
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err() // the caller gave up: not the plugin's fault
	}
	if timedOut(cctx, err) {
		return &errs.Error{Kind: errs.Unavailable, Err: err, Msg: fmt.Sprintf(
			"network type %s: plugin %s did not answer %s within %s: it may hang; its log %s may say why, `anka plugin restart %s` starts it again, and plugin_timeout (ANKA_PLUGIN_TIMEOUT) sets the limit",
			fd.Type, fd.Path, call, d, LogFile(h.StateDir, fd.Path), fd.Type)}
	}
	// A refusal with the plugin's own code is its answer; only a failure
	// the transport could have caused may mean the process died.
	if c := sdk.CodeOf(err); (c == sdk.CodeUnavailable || c == sdk.CodeInternal) && exits(pid) {
		return &errs.Error{Kind: errs.Unavailable, Err: err, Msg: fmt.Sprintf(
			"network type %s: plugin %s exited during %s (%v): anka starts it again; its log %s may say why",
			fd.Type, fd.Path, call, err, LogFile(h.StateDir, fd.Path))}
	}
	var ke *errs.Error
	if errors.As(err, &ke) {
		return err // already a core error (a bad endpoint, forwards)
	}
	return pluginError(fd.Type, err)
}

// timedOut reports whether a call under cctx ran out of its time. The
// deadline travels to the plugin too, and its gRPC server resets the
// stream (RST_STREAM CANCEL) when the deadline passes there; on a loaded
// machine that reset can arrive before this process's own timer has
// marked cctx done. So a cancel once the deadline has passed by the
// clock is the deadline's doing as well, not the plugin's answer.
func timedOut(cctx context.Context, err error) bool {
	if errors.Is(cctx.Err(), context.DeadlineExceeded) {
		return true
	}
	dl, ok := cctx.Deadline()
	return ok && !time.Now().Before(dl) && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
}

// pid is the process serving fd now, as its reattach file names it; 0
// when none runs. It takes no lock: connect holds the connections' lock
// while it attaches the VMs of a restarted plugin through timed.
func (h *Host) pid(fd Found) int {
	if ri, ok := Running(h.StateDir, fd.Path); ok {
		return ri.Pid
	}
	return 0
}

// exits reports whether process pid ends within a moment: its sockets
// close while it exits, so the call can fail a little before the process
// is seen gone. It asks about that process, not about whichever serves
// the binary by then: the daemon may have started the next one already,
// and that one running says nothing about why this call failed.
func exits(pid int) bool {
	if pid <= 0 {
		return false
	}
	deadline := time.Now().Add(exitGrace)
	for runtime.ProcessAlive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// exitGrace is how long a failed call waits to see whether the plugin died.
const exitGrace = 500 * time.Millisecond

// malformed is the error for an answer the core cannot use.
func (h *Host) malformed(fd Found, call, what string) error {
	return &errs.Error{Kind: errs.Unavailable, Msg: fmt.Sprintf(
		"network type %s: plugin %s answered %s with %s: the plugin is broken; its log %s may say why, and its author should hear of it",
		fd.Type, fd.Path, call, what, LogFile(h.StateDir, fd.Path))}
}

// checkEndpoint refuses an Attach answer the runtime cannot connect to,
// or one that points outside the VM's own folder (another VM's socket).
func checkEndpoint(req *sdk.AttachRequest, resp *sdk.AttachResponse) string {
	if resp == nil {
		return "no endpoint"
	}
	ep := resp.Endpoint
	if !slices.Contains(req.Endpoints, ep.Kind) {
		return fmt.Sprintf("endpoint kind %q where %v were offered", ep.Kind, req.Endpoints)
	}
	inRunDir := func(p string) bool {
		return filepath.IsAbs(p) && filepath.Clean(p) == p && strings.HasPrefix(p, filepath.Clean(req.RunDir)+"/") && len(p) <= 107
	}
	switch ep.Kind {
	case sdk.EndpointDgram:
		if !inRunDir(ep.PluginPath) || !inRunDir(ep.VMPath) || ep.PluginPath == ep.VMPath {
			return fmt.Sprintf("dgram socket paths %q and %q, which are not two sockets in the VM's folder %s", ep.PluginPath, ep.VMPath, req.RunDir)
		}
	case sdk.EndpointStream, sdk.EndpointVhostUser:
		if !inRunDir(ep.PluginPath) {
			return fmt.Sprintf("%s socket path %q, which is not a socket in the VM's folder %s", ep.Kind, ep.PluginPath, req.RunDir)
		}
	case sdk.EndpointTAP:
		if ep.TAP == "" || len(ep.TAP) > 15 || strings.ContainsAny(ep.TAP, "/ \t\n:\x00") {
			return fmt.Sprintf("TAP name %q, which is not a Linux interface name", ep.TAP)
		}
	}
	if ep.MAC != "" {
		if _, err := net.ParseMAC(ep.MAC); err != nil {
			return fmt.Sprintf("MAC %q, which is not an Ethernet address", ep.MAC)
		}
	}
	if ep.MTU < 0 || ep.MTU > sdk.MaxMTU {
		return fmt.Sprintf("MTU %d, outside 0 to %d", ep.MTU, sdk.MaxMTU)
	}
	return ""
}

// checkStatus refuses a Status answer with fields that are not what they
// claim to be.
func checkStatus(st *sdk.StatusResponse) string {
	if st == nil {
		return "no status"
	}
	if st.IP != "" {
		if _, err := netip.ParseAddr(st.IP); err != nil {
			return fmt.Sprintf("address %q, which is not an IP address", st.IP)
		}
	}
	for _, m := range []string{st.InternalMAC, st.DynamicMAC} {
		if m == "" {
			continue
		}
		if _, err := net.ParseMAC(m); err != nil {
			return fmt.Sprintf("MAC %q, which is not an Ethernet address", m)
		}
	}
	return ""
}
