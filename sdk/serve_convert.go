package sdk

import (
	"maps"
	"time"

	ankav1 "github.com/anka-net/anka/sdk/proto/v1"
)

// Converters between the hand-written types and protocol v1. Package sdk
// holds them (rather than an internal package) because sdk.Serve needs
// them and sdk cannot import a package that imports sdk. Empty slices and
// maps arrive as nil; a zero time travels as 0.

func vmRefToPB(v VMRef) *ankav1.VMRef { return &ankav1.VMRef{Id: v.ID, Name: v.Name} }

func vmRefFromPB(v *ankav1.VMRef) VMRef { return VMRef{ID: v.GetId(), Name: v.GetName()} }

func cardToPB(c Card) *ankav1.Card {
	return &ankav1.Card{
		Type:        c.Type,
		Bridge:      c.Bridge,
		Ip:          c.IP,
		InternalMac: c.InternalMAC,
		DynamicMac:  c.DynamicMAC,
		Options:     cloneMap(c.Options),
	}
}

func cardFromPB(c *ankav1.Card) Card {
	return Card{
		Type:        c.GetType(),
		Bridge:      c.GetBridge(),
		IP:          c.GetIp(),
		InternalMAC: c.GetInternalMac(),
		DynamicMAC:  c.GetDynamicMac(),
		Options:     cloneMap(c.GetOptions()),
	}
}

func infoResponseToPB(r *InfoResponse) *ankav1.InfoResponse {
	out := &ankav1.InfoResponse{Name: r.Name, Version: r.Version, Privileges: cloneSlice(r.Privileges), Sysctls: cloneSlice(r.Sysctls)}
	for _, v := range r.ProtocolVersions {
		out.ProtocolVersions = append(out.ProtocolVersions, int32(v))
	}
	if r.Runtime != nil {
		out.Runtime = &ankav1.ProcessRuntime{Goroutines: int64(r.Runtime.Goroutines), HeapAllocBytes: r.Runtime.HeapAlloc}
	}
	for _, t := range r.Types {
		out.Types = append(out.Types, &ankav1.TypeInfo{
			Name:         t.Name,
			Description:  t.Description,
			Capabilities: cloneSlice(t.Capabilities),
			Endpoints:    kindsToPB(t.Endpoints),
		})
	}
	return out
}

func infoResponseFromPB(r *ankav1.InfoResponse) *InfoResponse {
	out := &InfoResponse{Name: r.GetName(), Version: r.GetVersion(), Privileges: cloneSlice(r.GetPrivileges()), Sysctls: cloneSlice(r.GetSysctls())}
	for _, v := range r.GetProtocolVersions() {
		out.ProtocolVersions = append(out.ProtocolVersions, int(v))
	}
	if rt := r.GetRuntime(); rt != nil {
		out.Runtime = &ProcessRuntime{Goroutines: int(rt.GetGoroutines()), HeapAlloc: rt.GetHeapAllocBytes()}
	}
	for _, t := range r.GetTypes() {
		out.Types = append(out.Types, TypeInfo{
			Name:         t.GetName(),
			Description:  t.GetDescription(),
			Capabilities: cloneSlice(t.GetCapabilities()),
			Endpoints:    kindsFromPB(t.GetEndpoints()),
		})
	}
	return out
}

func validateRequestToPB(r *ValidateRequest) *ankav1.ValidateRequest {
	return &ankav1.ValidateRequest{Vm: vmRefToPB(r.VM), Card: cardToPB(r.Card), Settings: cloneMap(r.Settings)}
}

func validateRequestFromPB(r *ankav1.ValidateRequest) *ValidateRequest {
	return &ValidateRequest{VM: vmRefFromPB(r.GetVm()), Card: cardFromPB(r.GetCard()), Settings: cloneMap(r.GetSettings())}
}

func attachRequestToPB(r *AttachRequest) *ankav1.AttachRequest {
	return &ankav1.AttachRequest{
		Vm:        vmRefToPB(r.VM),
		Card:      cardToPB(r.Card),
		Endpoints: kindsToPB(r.Endpoints),
		RunDir:    r.RunDir,
		Mtu:       int32(r.MTU),
		Settings:  cloneMap(r.Settings),
	}
}

func attachRequestFromPB(r *ankav1.AttachRequest) *AttachRequest {
	return &AttachRequest{
		VM:        vmRefFromPB(r.GetVm()),
		Card:      cardFromPB(r.GetCard()),
		Endpoints: kindsFromPB(r.GetEndpoints()),
		RunDir:    r.GetRunDir(),
		MTU:       int(r.GetMtu()),
		Settings:  cloneMap(r.GetSettings()),
	}
}

func endpointToPB(e Endpoint) *ankav1.Endpoint {
	return &ankav1.Endpoint{
		Kind:       string(e.Kind),
		PluginPath: e.PluginPath,
		VmPath:     e.VMPath,
		Tap:        e.TAP,
		Mac:        e.MAC,
		LinkUp:     e.LinkUp,
		Mtu:        int32(e.MTU),
	}
}

func endpointFromPB(e *ankav1.Endpoint) Endpoint {
	return Endpoint{
		Kind:       EndpointKind(e.GetKind()),
		PluginPath: e.GetPluginPath(),
		VMPath:     e.GetVmPath(),
		TAP:        e.GetTap(),
		MAC:        e.GetMac(),
		LinkUp:     e.GetLinkUp(),
		MTU:        int(e.GetMtu()),
	}
}

func attachResponseToPB(r *AttachResponse) *ankav1.AttachResponse {
	return &ankav1.AttachResponse{Endpoint: endpointToPB(r.Endpoint)}
}

func attachResponseFromPB(r *ankav1.AttachResponse) *AttachResponse {
	return &AttachResponse{Endpoint: endpointFromPB(r.GetEndpoint())}
}

func detachRequestToPB(r *DetachRequest) *ankav1.DetachRequest {
	return &ankav1.DetachRequest{Vm: vmRefToPB(r.VM), Type: r.Type}
}

func detachRequestFromPB(r *ankav1.DetachRequest) *DetachRequest {
	return &DetachRequest{VM: vmRefFromPB(r.GetVm()), Type: r.GetType()}
}

func releaseRequestToPB(r *ReleaseRequest) *ankav1.ReleaseRequest {
	return &ankav1.ReleaseRequest{Vm: vmRefToPB(r.VM), Type: r.Type}
}

func releaseRequestFromPB(r *ankav1.ReleaseRequest) *ReleaseRequest {
	return &ReleaseRequest{VM: vmRefFromPB(r.GetVm()), Type: r.GetType()}
}

func statusRequestToPB(r *StatusRequest) *ankav1.StatusRequest {
	return &ankav1.StatusRequest{Vm: vmRefToPB(r.VM), Type: r.Type}
}

func statusRequestFromPB(r *ankav1.StatusRequest) *StatusRequest {
	return &StatusRequest{VM: vmRefFromPB(r.GetVm()), Type: r.GetType()}
}

func statusResponseToPB(r *StatusResponse) *ankav1.StatusResponse {
	return &ankav1.StatusResponse{
		Attached:            r.Attached,
		Ip:                  r.IP,
		InternalMac:         r.InternalMAC,
		DynamicMac:          r.DynamicMAC,
		LeaseExpiryUnixNano: timeToPB(r.LeaseExpiry),
		Path:                r.Path,
		Counters:            cloneMap(r.Counters),
		Details:             cloneMap(r.Details),
	}
}

func statusResponseFromPB(r *ankav1.StatusResponse) *StatusResponse {
	return &StatusResponse{
		Attached:    r.GetAttached(),
		IP:          r.GetIp(),
		InternalMAC: r.GetInternalMac(),
		DynamicMAC:  r.GetDynamicMac(),
		LeaseExpiry: timeFromPB(r.GetLeaseExpiryUnixNano()),
		Path:        r.GetPath(),
		Counters:    cloneMap(r.GetCounters()),
		Details:     cloneMap(r.GetDetails()),
	}
}

func suspendRequestToPB(r *SuspendRequest) *ankav1.SuspendRequest {
	return &ankav1.SuspendRequest{Vm: vmRefToPB(r.VM), Type: r.Type}
}

func suspendRequestFromPB(r *ankav1.SuspendRequest) *SuspendRequest {
	return &SuspendRequest{VM: vmRefFromPB(r.GetVm()), Type: r.GetType()}
}

func resumeRequestToPB(r *ResumeRequest) *ankav1.ResumeRequest {
	return &ankav1.ResumeRequest{Vm: vmRefToPB(r.VM), Type: r.Type}
}

func resumeRequestFromPB(r *ankav1.ResumeRequest) *ResumeRequest {
	return &ResumeRequest{VM: vmRefFromPB(r.GetVm()), Type: r.GetType()}
}

func portForwardToPB(p PortForward) *ankav1.PortForward {
	return &ankav1.PortForward{
		Name:      p.Name,
		Protocol:  p.Protocol,
		HostIp:    p.HostIP,
		HostPort:  int32(p.HostPort),
		GuestPort: int32(p.GuestPort),
	}
}

func portForwardFromPB(p *ankav1.PortForward) PortForward {
	return PortForward{
		Name:      p.GetName(),
		Protocol:  p.GetProtocol(),
		HostIP:    p.GetHostIp(),
		HostPort:  int(p.GetHostPort()),
		GuestPort: int(p.GetGuestPort()),
	}
}

func portForwardRequestToPB(r *PortForwardRequest) *ankav1.PortForwardRequest {
	return &ankav1.PortForwardRequest{Vm: vmRefToPB(r.VM), Type: r.Type, Rule: portForwardToPB(r.Rule)}
}

func portForwardRequestFromPB(r *ankav1.PortForwardRequest) *PortForwardRequest {
	return &PortForwardRequest{VM: vmRefFromPB(r.GetVm()), Type: r.GetType(), Rule: portForwardFromPB(r.GetRule())}
}

func listPortForwardsRequestToPB(r *ListPortForwardsRequest) *ankav1.ListPortForwardsRequest {
	return &ankav1.ListPortForwardsRequest{Vm: vmRefToPB(r.VM), Type: r.Type}
}

func listPortForwardsRequestFromPB(r *ankav1.ListPortForwardsRequest) *ListPortForwardsRequest {
	return &ListPortForwardsRequest{VM: vmRefFromPB(r.GetVm()), Type: r.GetType()}
}

func listPortForwardsResponseToPB(r *ListPortForwardsResponse) *ankav1.ListPortForwardsResponse {
	out := &ankav1.ListPortForwardsResponse{}
	for _, p := range r.Rules {
		out.Rules = append(out.Rules, portForwardToPB(p))
	}
	return out
}

func listPortForwardsResponseFromPB(r *ankav1.ListPortForwardsResponse) *ListPortForwardsResponse {
	out := &ListPortForwardsResponse{}
	for _, p := range r.GetRules() {
		out.Rules = append(out.Rules, portForwardFromPB(p))
	}
	return out
}

func kindsToPB(ks []EndpointKind) []string {
	if len(ks) == 0 {
		return nil
	}
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = string(k)
	}
	return out
}

func kindsFromPB(ks []string) []EndpointKind {
	if len(ks) == 0 {
		return nil
	}
	out := make([]EndpointKind, len(ks))
	for i, k := range ks {
		out[i] = EndpointKind(k)
	}
	return out
}

// timeToPB sends a zero time as 0 (UnixNano of the zero time overflows).
func timeToPB(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func timeFromPB(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func cloneMap[V any](m map[string]V) map[string]V {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

func cloneSlice[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return append([]T(nil), s...)
}

func captureRequestToPB(r *CaptureRequest) *ankav1.CaptureRequest {
	return &ankav1.CaptureRequest{Vm: vmRefToPB(r.VM), Type: r.Type, Path: r.Path, Snaplen: int32(r.Snaplen)}
}

func captureRequestFromPB(r *ankav1.CaptureRequest) *CaptureRequest {
	return &CaptureRequest{VM: vmRefFromPB(r.GetVm()), Type: r.GetType(), Path: r.GetPath(), Snaplen: int(r.GetSnaplen())}
}

func captureResponseToPB(r *CaptureResponse) *ankav1.CaptureResponse {
	return &ankav1.CaptureResponse{Frames: r.Frames, Bytes: r.Bytes}
}

func captureResponseFromPB(r *ankav1.CaptureResponse) *CaptureResponse {
	return &CaptureResponse{Frames: r.GetFrames(), Bytes: r.GetBytes()}
}
