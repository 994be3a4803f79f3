package sdk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/anka-net/anka/sdk/internal/wire"
	ankav1 "github.com/anka-net/anka/sdk/proto/v1"
)

func init() {
	// The host side (sdk/host, sdk/plugintest) reaches the adapters below
	// through package wire; see wire.NewPlugin.
	wire.NewPlugin = newGoPlugin
}

// goPlugin is the one go-plugin plugin a binary serves: GRPCServer on the
// plugin side, GRPCClient on the host side.
type goPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl NetworkPlugin
	name string
	log  *slog.Logger
}

func newGoPlugin(impl any, name string, log *slog.Logger) plugin.Plugin {
	p := &goPlugin{name: name, log: log}
	if np, ok := impl.(NetworkPlugin); ok {
		p.impl = np
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	return p
}

func (p *goPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	if p.impl == nil {
		return errors.New("no sdk.NetworkPlugin to serve")
	}
	ankav1.RegisterNetworkPluginServer(s, newGRPCServer(p.impl, p.log))
	return nil
}

func (p *goPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &grpcClient{c: ankav1.NewNetworkPluginClient(c), name: p.name}, nil
}

// grpcServer serves a NetworkPlugin over protocol v1. It checks each call's
// type against Info, answers unsupported for a missing optional interface,
// and turns a panic into an internal error instead of taking every VM's
// data plane down with the process.
type grpcServer struct {
	ankav1.UnimplementedNetworkPluginServer
	impl NetworkPlugin
	log  *slog.Logger

	mu    sync.Mutex
	types []string // from Info, fetched once
}

func newGRPCServer(impl NetworkPlugin, log *slog.Logger) *grpcServer {
	return &grpcServer{impl: impl, log: log}
}

// done converts a plugin's result into what crosses the wire, and a panic
// into an internal error. Deferred by every method.
func (s *grpcServer) done(method string, err *error) {
	if r := recover(); r != nil {
		s.log.Error("plugin panicked", "call", method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		*err = Errorf(CodeInternal, "the plugin failed in %s (a bug: %v); its log has the details", method, r)
	}
	if *err == nil {
		return
	}
	if c, _ := wireCode(*err); c == CodeInternal {
		s.log.Error("call failed", "call", method, "code", c, "error", *err)
	} else {
		s.log.Debug("call refused", "call", method, "code", c, "error", *err)
	}
	*err = errorToStatus(*err)
}

// typeNames returns the types Info lists; an error is not cached.
func (s *grpcServer) typeNames(ctx context.Context) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.types != nil {
		return s.types, nil
	}
	info, err := s.impl.Info(ctx, &InfoRequest{})
	if err != nil {
		return nil, err
	}
	if info == nil || len(info.Types) == 0 {
		return nil, Errorf(CodeInternal, "the plugin's Info lists no network types")
	}
	names := make([]string, 0, len(info.Types))
	for _, t := range info.Types {
		names = append(names, t.Name)
	}
	s.types = names
	return names, nil
}

// checkType makes sure a call names a type this binary serves, so a
// plugin serving several types can switch on it without a default case.
func (s *grpcServer) checkType(ctx context.Context, typ string) error {
	names, err := s.typeNames(ctx)
	if err != nil {
		return err
	}
	switch {
	case typ == "":
		return Errorf(CodeInvalid, "the request names no network type; this plugin serves %s", strings.Join(names, ", "))
	case !slices.Contains(names, typ):
		return Errorf(CodeNotFound, "this plugin does not serve network type %q; it serves %s", typ, strings.Join(names, ", "))
	}
	return nil
}

func (s *grpcServer) Info(ctx context.Context, req *ankav1.InfoRequest) (_ *ankav1.InfoResponse, err error) {
	defer s.done("Info", &err)
	resp, err := s.impl.Info(ctx, &InfoRequest{})
	if err != nil {
		return nil, err
	}
	if resp == nil {
		return nil, Errorf(CodeInternal, "the plugin's Info returned nothing")
	}
	out := infoResponseToPB(resp)
	out.Runtime = nil
	if req.GetRuntime() {
		// Live objects only: what a leak leaves, not garbage not yet
		// collected.
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		out.Runtime = &ankav1.ProcessRuntime{Goroutines: int64(runtime.NumGoroutine()), HeapAllocBytes: ms.HeapAlloc}
	}
	out.ProtocolVersions = nil
	for _, v := range wire.ProtocolVersions() {
		out.ProtocolVersions = append(out.ProtocolVersions, int32(v))
	}
	return out, nil
}

func (s *grpcServer) Validate(ctx context.Context, req *ankav1.ValidateRequest) (_ *ankav1.ValidateResponse, err error) {
	defer s.done("Validate", &err)
	r := validateRequestFromPB(req)
	if err := s.checkType(ctx, r.Card.Type); err != nil {
		return nil, err
	}
	if _, err := s.impl.Validate(ctx, r); err != nil {
		return nil, err
	}
	return &ankav1.ValidateResponse{}, nil
}

func (s *grpcServer) Attach(ctx context.Context, req *ankav1.AttachRequest) (_ *ankav1.AttachResponse, err error) {
	defer s.done("Attach", &err)
	r := attachRequestFromPB(req)
	if err := s.checkType(ctx, r.Card.Type); err != nil {
		return nil, err
	}
	resp, err := s.impl.Attach(ctx, r)
	if err != nil {
		return nil, err
	}
	if resp == nil {
		return nil, Errorf(CodeInternal, "the plugin's Attach returned no endpoint")
	}
	return attachResponseToPB(resp), nil
}

func (s *grpcServer) Detach(ctx context.Context, req *ankav1.DetachRequest) (_ *ankav1.DetachResponse, err error) {
	defer s.done("Detach", &err)
	r := detachRequestFromPB(req)
	if err := s.checkType(ctx, r.Type); err != nil {
		return nil, err
	}
	if _, err := s.impl.Detach(ctx, r); err != nil {
		return nil, err
	}
	return &ankav1.DetachResponse{}, nil
}

func (s *grpcServer) Release(ctx context.Context, req *ankav1.ReleaseRequest) (_ *ankav1.ReleaseResponse, err error) {
	defer s.done("Release", &err)
	r := releaseRequestFromPB(req)
	if err := s.checkType(ctx, r.Type); err != nil {
		return nil, err
	}
	if _, err := s.impl.Release(ctx, r); err != nil {
		return nil, err
	}
	return &ankav1.ReleaseResponse{}, nil
}

func (s *grpcServer) Status(ctx context.Context, req *ankav1.StatusRequest) (_ *ankav1.StatusResponse, err error) {
	defer s.done("Status", &err)
	r := statusRequestFromPB(req)
	if err := s.checkType(ctx, r.Type); err != nil {
		return nil, err
	}
	resp, err := s.impl.Status(ctx, r)
	if err != nil {
		return nil, err
	}
	if resp == nil {
		resp = &StatusResponse{}
	}
	return statusResponseToPB(resp), nil
}

func (s *grpcServer) Suspend(ctx context.Context, req *ankav1.SuspendRequest) (_ *ankav1.SuspendResponse, err error) {
	defer s.done("Suspend", &err)
	r := suspendRequestFromPB(req)
	if err := s.checkType(ctx, r.Type); err != nil {
		return nil, err
	}
	sp, ok := s.impl.(Suspender)
	if !ok {
		return nil, Errorf(CodeUnsupported, "network type %q does not support suspend and resume", r.Type)
	}
	if _, err := sp.Suspend(ctx, r); err != nil {
		return nil, err
	}
	return &ankav1.SuspendResponse{}, nil
}

func (s *grpcServer) Resume(ctx context.Context, req *ankav1.ResumeRequest) (_ *ankav1.ResumeResponse, err error) {
	defer s.done("Resume", &err)
	r := resumeRequestFromPB(req)
	if err := s.checkType(ctx, r.Type); err != nil {
		return nil, err
	}
	sp, ok := s.impl.(Suspender)
	if !ok {
		return nil, Errorf(CodeUnsupported, "network type %q does not support suspend and resume", r.Type)
	}
	if _, err := sp.Resume(ctx, r); err != nil {
		return nil, err
	}
	return &ankav1.ResumeResponse{}, nil
}

func (s *grpcServer) capture(ctx context.Context, method string, req *ankav1.CaptureRequest, start bool) (_ *ankav1.CaptureResponse, err error) {
	defer s.done(method, &err)
	r := captureRequestFromPB(req)
	if err := s.checkType(ctx, r.Type); err != nil {
		return nil, err
	}
	c, ok := s.impl.(Capturer)
	if !ok {
		return nil, Errorf(CodeUnsupported, "network type %q cannot capture traffic", r.Type)
	}
	var resp *CaptureResponse
	if start {
		resp, err = c.StartCapture(ctx, r)
	} else {
		resp, err = c.StopCapture(ctx, r)
	}
	if err != nil {
		return nil, err
	}
	return captureResponseToPB(orNew(resp)), nil
}

func (s *grpcServer) StartCapture(ctx context.Context, req *ankav1.CaptureRequest) (*ankav1.CaptureResponse, error) {
	return s.capture(ctx, "StartCapture", req, true)
}

func (s *grpcServer) StopCapture(ctx context.Context, req *ankav1.CaptureRequest) (*ankav1.CaptureResponse, error) {
	return s.capture(ctx, "StopCapture", req, false)
}

func (s *grpcServer) portForwarder(typ string) (PortForwarder, error) {
	pf, ok := s.impl.(PortForwarder)
	if !ok {
		return nil, Errorf(CodeUnsupported, "network type %q does not forward ports", typ)
	}
	return pf, nil
}

func (s *grpcServer) AddPortForward(ctx context.Context, req *ankav1.PortForwardRequest) (_ *ankav1.PortForwardResponse, err error) {
	defer s.done("AddPortForward", &err)
	r := portForwardRequestFromPB(req)
	if err := s.checkType(ctx, r.Type); err != nil {
		return nil, err
	}
	pf, err := s.portForwarder(r.Type)
	if err != nil {
		return nil, err
	}
	if _, err := pf.AddPortForward(ctx, r); err != nil {
		return nil, err
	}
	return &ankav1.PortForwardResponse{}, nil
}

func (s *grpcServer) RemovePortForward(ctx context.Context, req *ankav1.PortForwardRequest) (_ *ankav1.PortForwardResponse, err error) {
	defer s.done("RemovePortForward", &err)
	r := portForwardRequestFromPB(req)
	if err := s.checkType(ctx, r.Type); err != nil {
		return nil, err
	}
	pf, err := s.portForwarder(r.Type)
	if err != nil {
		return nil, err
	}
	if _, err := pf.RemovePortForward(ctx, r); err != nil {
		return nil, err
	}
	return &ankav1.PortForwardResponse{}, nil
}

func (s *grpcServer) ListPortForwards(ctx context.Context, req *ankav1.ListPortForwardsRequest) (_ *ankav1.ListPortForwardsResponse, err error) {
	defer s.done("ListPortForwards", &err)
	r := listPortForwardsRequestFromPB(req)
	if err := s.checkType(ctx, r.Type); err != nil {
		return nil, err
	}
	pf, err := s.portForwarder(r.Type)
	if err != nil {
		return nil, err
	}
	resp, err := pf.ListPortForwards(ctx, r)
	if err != nil {
		return nil, err
	}
	if resp == nil {
		resp = &ListPortForwardsResponse{}
	}
	return listPortForwardsResponseToPB(resp), nil
}

// grpcCode is the status code for clients that do not read the
// PluginError detail.
func grpcCode(c Code) codes.Code {
	switch c {
	case CodeInvalid:
		return codes.InvalidArgument
	case CodeNotFound:
		return codes.NotFound
	case CodeConflict:
		return codes.AlreadyExists
	case CodeUnavailable:
		return codes.Unavailable
	case CodeUnsupported:
		return codes.Unimplemented
	case CodeInternal:
		return codes.Internal
	}
	return codes.Unknown
}

// codeFromGRPC classifies a status that carries no PluginError (a plugin
// built without this sdk, or gRPC itself failing).
func codeFromGRPC(c codes.Code) Code {
	switch c {
	case codes.InvalidArgument, codes.OutOfRange:
		return CodeInvalid
	case codes.NotFound:
		return CodeNotFound
	case codes.AlreadyExists, codes.FailedPrecondition, codes.Aborted:
		return CodeConflict
	case codes.Unavailable, codes.ResourceExhausted, codes.Canceled, codes.DeadlineExceeded:
		return CodeUnavailable
	case codes.Unimplemented:
		return CodeUnsupported
	}
	return CodeInternal
}

// wireCode classifies a plugin's error: its *Error's code, else
// unavailable for a call its caller gave up on, else internal.
func wireCode(err error) (Code, codes.Code) {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e.Code, grpcCode(e.Code)
	case errors.Is(err, context.Canceled):
		return CodeUnavailable, codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return CodeUnavailable, codes.DeadlineExceeded
	}
	return CodeInternal, codes.Internal
}

// errorToStatus puts err's code and sentence into a status with a
// PluginError detail, so both arrive exactly.
func errorToStatus(err error) error {
	code, gc := wireCode(err)
	msg := err.Error()
	st := status.New(gc, msg)
	if withDetail, derr := st.WithDetails(&ankav1.PluginError{Code: string(code), Message: msg}); derr == nil {
		st = withDetail
	}
	return st.Err()
}

// grpcClient is the host's view of a plugin: a NetworkPlugin that is also a
// Suspender and a PortForwarder (a type without them answers
// CodeUnsupported).
type grpcClient struct {
	c    ankav1.NetworkPluginClient
	name string // for messages, e.g. "anka-net-shared"
}

var (
	_ NetworkPlugin = (*grpcClient)(nil)
	_ Suspender     = (*grpcClient)(nil)
	_ PortForwarder = (*grpcClient)(nil)
	_ Capturer      = (*grpcClient)(nil)
)

func (c *grpcClient) StartCapture(ctx context.Context, req *CaptureRequest) (*CaptureResponse, error) {
	resp, err := c.c.StartCapture(ctx, captureRequestToPB(orNew(req)))
	if err != nil {
		return nil, c.fail(ctx, "StartCapture", err)
	}
	return captureResponseFromPB(resp), nil
}

func (c *grpcClient) StopCapture(ctx context.Context, req *CaptureRequest) (*CaptureResponse, error) {
	resp, err := c.c.StopCapture(ctx, captureRequestToPB(orNew(req)))
	if err != nil {
		return nil, c.fail(ctx, "StopCapture", err)
	}
	return captureResponseFromPB(resp), nil
}

// callError is an *Error that also wraps the context error that ended the
// call, so errors.Is(err, context.DeadlineExceeded) holds.
type callError struct {
	err   *Error
	cause error
}

func (e *callError) Error() string   { return e.err.Message }
func (e *callError) Unwrap() []error { return []error{e.err, e.cause} }

// fail turns a call's error into an *Error: the plugin's own when the
// status carries one, else a sentence about the transport.
func (c *grpcClient) fail(ctx context.Context, method string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return &Error{Code: CodeInternal, Message: fmt.Sprintf("calling %s on plugin %s: %v", method, c.name, err)}
	}
	for _, d := range st.Details() {
		if pe, ok := d.(*ankav1.PluginError); ok {
			e := &Error{Code: Code(pe.GetCode()), Message: pe.GetMessage()}
			if cerr := ctx.Err(); cerr != nil {
				return &callError{err: e, cause: cerr}
			}
			return e
		}
	}
	switch st.Code() {
	case codes.Canceled, codes.DeadlineExceeded:
		e := &Error{Code: CodeUnavailable, Message: fmt.Sprintf("plugin %s did not finish %s: %s", c.name, method, st.Message())}
		cause := ctx.Err()
		if cause == nil {
			cause = context.Canceled
			if st.Code() == codes.DeadlineExceeded {
				cause = context.DeadlineExceeded
			}
		}
		return &callError{err: e, cause: cause}
	case codes.Unavailable:
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("plugin %s is not answering (%s): it may have exited; its log says why", c.name, st.Message())}
	case codes.Unimplemented:
		return &Error{Code: CodeUnsupported, Message: fmt.Sprintf("plugin %s does not implement %s: it was built for an older protocol", c.name, method)}
	}
	return &Error{Code: codeFromGRPC(st.Code()), Message: fmt.Sprintf("plugin %s failed in %s: %s", c.name, method, st.Message())}
}

func orNew[T any](p *T) *T {
	if p == nil {
		return new(T)
	}
	return p
}

func (c *grpcClient) Info(ctx context.Context, req *InfoRequest) (*InfoResponse, error) {
	resp, err := c.c.Info(ctx, &ankav1.InfoRequest{Runtime: req != nil && req.Runtime})
	if err != nil {
		return nil, c.fail(ctx, "Info", err)
	}
	return infoResponseFromPB(resp), nil
}

func (c *grpcClient) Validate(ctx context.Context, req *ValidateRequest) (*ValidateResponse, error) {
	if _, err := c.c.Validate(ctx, validateRequestToPB(orNew(req))); err != nil {
		return nil, c.fail(ctx, "Validate", err)
	}
	return &ValidateResponse{}, nil
}

func (c *grpcClient) Attach(ctx context.Context, req *AttachRequest) (*AttachResponse, error) {
	resp, err := c.c.Attach(ctx, attachRequestToPB(orNew(req)))
	if err != nil {
		return nil, c.fail(ctx, "Attach", err)
	}
	return attachResponseFromPB(resp), nil
}

func (c *grpcClient) Detach(ctx context.Context, req *DetachRequest) (*DetachResponse, error) {
	if _, err := c.c.Detach(ctx, detachRequestToPB(orNew(req))); err != nil {
		return nil, c.fail(ctx, "Detach", err)
	}
	return &DetachResponse{}, nil
}

func (c *grpcClient) Release(ctx context.Context, req *ReleaseRequest) (*ReleaseResponse, error) {
	if _, err := c.c.Release(ctx, releaseRequestToPB(orNew(req))); err != nil {
		return nil, c.fail(ctx, "Release", err)
	}
	return &ReleaseResponse{}, nil
}

func (c *grpcClient) Status(ctx context.Context, req *StatusRequest) (*StatusResponse, error) {
	resp, err := c.c.Status(ctx, statusRequestToPB(orNew(req)))
	if err != nil {
		return nil, c.fail(ctx, "Status", err)
	}
	return statusResponseFromPB(resp), nil
}

func (c *grpcClient) Suspend(ctx context.Context, req *SuspendRequest) (*SuspendResponse, error) {
	if _, err := c.c.Suspend(ctx, suspendRequestToPB(orNew(req))); err != nil {
		return nil, c.fail(ctx, "Suspend", err)
	}
	return &SuspendResponse{}, nil
}

func (c *grpcClient) Resume(ctx context.Context, req *ResumeRequest) (*ResumeResponse, error) {
	if _, err := c.c.Resume(ctx, resumeRequestToPB(orNew(req))); err != nil {
		return nil, c.fail(ctx, "Resume", err)
	}
	return &ResumeResponse{}, nil
}

func (c *grpcClient) AddPortForward(ctx context.Context, req *PortForwardRequest) (*PortForwardResponse, error) {
	if _, err := c.c.AddPortForward(ctx, portForwardRequestToPB(orNew(req))); err != nil {
		return nil, c.fail(ctx, "AddPortForward", err)
	}
	return &PortForwardResponse{}, nil
}

func (c *grpcClient) RemovePortForward(ctx context.Context, req *PortForwardRequest) (*PortForwardResponse, error) {
	if _, err := c.c.RemovePortForward(ctx, portForwardRequestToPB(orNew(req))); err != nil {
		return nil, c.fail(ctx, "RemovePortForward", err)
	}
	return &PortForwardResponse{}, nil
}

func (c *grpcClient) ListPortForwards(ctx context.Context, req *ListPortForwardsRequest) (*ListPortForwardsResponse, error) {
	resp, err := c.c.ListPortForwards(ctx, listPortForwardsRequestToPB(orNew(req)))
	if err != nil {
		return nil, c.fail(ctx, "ListPortForwards", err)
	}
	return listPortForwardsResponseFromPB(resp), nil
}
