package sdk

import (
	"context"
	"time"
)

// ProtocolVersion is the plugin protocol this sdk speaks. The generated
// gRPC code lives under proto/v1; a new major version gets proto/v2 and a
// host negotiates the highest version both sides know.
const ProtocolVersion = 1

// NetworkPlugin is what every network type implements: a small required
// interface. What not every type has is an optional interface (Suspender,
// PortForwarder), detected with a type assertion. A new capability is a
// new optional interface, never a new method here.
//
// Every call takes a context and a request struct and returns a response
// struct, so fields can be added without breaking anyone. Errors a person
// should see are *Error values with a stable Code (see Errorf).
type NetworkPlugin interface {
	// Info names the types served, versions and capabilities.
	Info(ctx context.Context, req *InfoRequest) (*InfoResponse, error)
	// Validate checks a card before it is saved (`anka modify ...
	// network-card`), with a reason a person can act on when it is wrong.
	Validate(ctx context.Context, req *ValidateRequest) (*ValidateResponse, error)
	// Attach creates the VM's port and returns the endpoint the runtime
	// connects the NIC to. Attaching an attached VM returns its endpoint.
	Attach(ctx context.Context, req *AttachRequest) (*AttachResponse, error)
	// Detach removes the port; the VM's address stays reserved for it.
	// Detaching a VM that is not attached succeeds (like CNI DEL).
	Detach(ctx context.Context, req *DetachRequest) (*DetachResponse, error)
	// Release forgets the VM: lease, reservations, forwards. Idempotent.
	Release(ctx context.Context, req *ReleaseRequest) (*ReleaseResponse, error)
	// Status reports the VM's address, MACs, lease and counters; a VM the
	// plugin does not know is CodeNotFound.
	Status(ctx context.Context, req *StatusRequest) (*StatusResponse, error)
}

// Suspender is for types that act when a VM is suspended or resumed (the
// port and the address are kept either way).
type Suspender interface {
	Suspend(ctx context.Context, req *SuspendRequest) (*SuspendResponse, error)
	Resume(ctx context.Context, req *ResumeRequest) (*ResumeResponse, error)
}

// PortForwarder is for types that forward host ports to guests.
type PortForwarder interface {
	AddPortForward(ctx context.Context, req *PortForwardRequest) (*PortForwardResponse, error)
	RemovePortForward(ctx context.Context, req *PortForwardRequest) (*PortForwardResponse, error)
	ListPortForwards(ctx context.Context, req *ListPortForwardsRequest) (*ListPortForwardsResponse, error)
}

// Capturer is for types that can record a VM's frames (`anka capture`).
type Capturer interface {
	// StartCapture writes every frame to and from the VM's port to a pcap
	// file at Path from now on; one capture per VM at a time.
	StartCapture(ctx context.Context, req *CaptureRequest) (*CaptureResponse, error)
	// StopCapture flushes and closes the file and says what it holds.
	StopCapture(ctx context.Context, req *CaptureRequest) (*CaptureResponse, error)
}

// CaptureRequest names the VM and, to start, the file.
type CaptureRequest struct {
	VM      VMRef
	Type    string
	Path    string
	Snaplen int // 0 = whole frames
}

// CaptureResponse counts what the capture wrote.
type CaptureResponse struct {
	Frames, Bytes uint64
}

// Capabilities a type may announce in TypeInfo.
const (
	CapSuspend      = "suspend"      // implements Suspender
	CapPortForward  = "port-forward" // implements PortForwarder
	CapTraffic      = "traffic"      // passes frames between attached VMs
	CapStaticIP     = "static-ip"    // honours Card.IP
	CapMACTranslate = "mac-translate"
	// CapAddress: the type gives guests an address and reports it in
	// Status.IP once the guest has it; `anka start` waits for it.
	CapAddress = "address"
	CapCapture = "capture" // implements Capturer
)

// EndpointKind is how a VM's NIC reaches the plugin.
type EndpointKind string

const (
	// EndpointDgram: unix datagram, one frame per datagram (QEMU -netdev
	// dgram with local.path=VMPath and remote.path=PluginPath).
	EndpointDgram EndpointKind = "dgram"
	// EndpointStream: unix stream, 4-byte big-endian length before each
	// frame (QEMU -netdev stream, socket_vmnet); the VM connects to
	// PluginPath.
	EndpointStream EndpointKind = "stream"
	// EndpointTAP: a TAP device named TAP.
	EndpointTAP EndpointKind = "tap"
	// EndpointVhostUser: a vhost-user socket at PluginPath, listened on by
	// the plugin, which reads and writes the guest's virtqueues in the
	// guest's shared memory (QEMU -chardev socket,path=PluginPath with
	// -netdev vhost-user and a memory backend with share=on; cloud-hypervisor
	// and other vhost-user front-ends alike). No system call or copy per
	// frame between the VM and the plugin.
	EndpointVhostUser EndpointKind = "vhost-user"
)

// VMRef names the VM a call is about. ID (the VM's uuid) is the identity
// addresses stick to; Name is for messages.
type VMRef struct {
	ID   string
	Name string
}

// Card is a VM's network card as the core stores it.
type Card struct {
	Type string
	// Bridge is the host interface for bridge types ("" = automatic).
	Bridge string
	// IP is a fixed address (static type).
	IP string
	// InternalMAC is what the guest sees when set (-m); the network sees
	// DynamicMAC, which the core's pool assigns per VM.
	InternalMAC string
	DynamicMAC  string
	// Options carries type-specific settings a third party defines.
	Options map[string]string
}

// InfoRequest asks for the plugin's description.
type InfoRequest struct {
	// Runtime asks for the process's goroutines and heap (after a
	// garbage collection), which sdk.Serve fills in itself: the plugin's
	// Info never sees it. anka daemon status shows them.
	Runtime bool
}

// ProcessRuntime is a plugin process's goroutines and live heap.
type ProcessRuntime struct {
	Goroutines int    `json:"goroutines"`
	HeapAlloc  uint64 `json:"heap_alloc_bytes"`
}

// InfoResponse describes a plugin binary. `anka-net-x --describe` prints
// it as JSON with the tags below.
type InfoResponse struct {
	// Name and Version of the binary (e.g. "anka-net-shared", "1.2.0").
	Name    string `json:"name"`
	Version string `json:"version"`
	// ProtocolVersions this binary speaks: []int{sdk.ProtocolVersion}.
	// Over the wire sdk.Serve reports the versions the sdk serves,
	// whatever the plugin says.
	ProtocolVersions []int      `json:"protocol_versions"`
	Types            []TypeInfo `json:"types"`
	// Privileges are the Linux capabilities the process needs, as named
	// in capabilities(7): PrivNetAdmin, PrivNetRaw, PrivNetBindService.
	// anka runs plugins as an unprivileged user and grants at most these
	// (as ambient capabilities); a name it does not grant is refused
	// before the plugin starts. Leave it empty for a plugin that only
	// moves frames between sockets.
	Privileges []string `json:"privileges,omitempty"`
	// Sysctls are "key=value" settings the plugin needs in its network
	// namespace before it starts; writing /proc/sys takes root, which an
	// unprivileged plugin lacks, so anka sets them first. anka applies
	// only SysctlIPForward and SysctlMaxDgramQlen (raised, never
	// lowered); the plugin still checks and reports what it finds.
	Sysctls []string `json:"sysctls,omitempty"`
	// Runtime is set by sdk.Serve when InfoRequest.Runtime asked for it.
	Runtime *ProcessRuntime `json:"runtime,omitempty"`
}

// The capabilities a plugin may ask for in InfoResponse.Privileges.
const (
	// PrivNetAdmin: TAPs, bridges, addresses, routes, nftables, ethtool.
	PrivNetAdmin = "CAP_NET_ADMIN"
	// PrivNetRaw: AF_PACKET sockets on an interface.
	PrivNetRaw = "CAP_NET_RAW"
	// PrivNetBindService: listening on ports below 1024 (DNS on 53, a
	// port forward asked for a low host port).
	PrivNetBindService = "CAP_NET_BIND_SERVICE"
)

// The sysctls anka sets for a plugin that names them in
// InfoResponse.Sysctls.
const (
	// SysctlIPForward turns on IPv4 forwarding (NAT).
	SysctlIPForward = "net.ipv4.ip_forward=1"
	// SysctlMaxDgramQlen raises net.unix.max_dgram_qlen (anka raises it,
	// never lowers it; frameio.RecommendedMaxDgramQlen is 512).
	SysctlMaxDgramQlen = "net.unix.max_dgram_qlen=512"
)

// TypeInfo describes one network type a binary serves.
type TypeInfo struct {
	Name         string   `json:"name"`
	Description  string   `json:"description,omitempty"`
	Capabilities []string `json:"capabilities,omitempty"`
	// Endpoints the type can hand out, preferred first.
	Endpoints []EndpointKind `json:"endpoints,omitempty"`
}

// OriginKey is the settings key that says where key's value came from:
// settings[OriginKey("bridge_name")] is e.g. "env ANKA_BRIDGE_NAME",
// "flag --bridge-name", "user config /root/.config/anka/config.yaml" or
// "built-in default", for a plugin to tell a user why it chose a value.
func OriginKey(key string) string { return key + ".origin" }

// ValidateRequest carries a card to check.
type ValidateRequest struct {
	VM   VMRef
	Card Card
	// Settings are the configuration the command resolved (every key but
	// the plugin entries), for choices made per call: with
	// `ANKA_BRIDGE_NAME=eth1 anka start vm`, bridge_name is eth1 here
	// even when Env.Settings (fixed at launch) says otherwise.
	Settings map[string]string
}

// ValidateResponse is empty: an error means the card is refused.
type ValidateResponse struct{}

// AttachRequest asks for a port.
type AttachRequest struct {
	VM   VMRef
	Card Card
	// Endpoints the runtime can use, preferred first.
	Endpoints []EndpointKind
	// RunDir is a folder of the VM's where the plugin may create sockets
	// (short enough for unix socket paths).
	RunDir string
	MTU    int
	// Settings are as in ValidateRequest.
	Settings map[string]string
}

// Endpoint is what the runtime connects the VM's NIC to.
type Endpoint struct {
	Kind EndpointKind
	// PluginPath is the plugin's socket (dgram, stream and vhost-user).
	PluginPath string
	// VMPath is the socket the VM side binds (dgram), which the plugin
	// connects to.
	VMPath string
	// TAP is the device name (tap).
	TAP string
	// MAC is the address to give the NIC (the internal MAC when set).
	MAC string
	// LinkUp false means the cable is unplugged (disconnected type).
	LinkUp bool
	MTU    int
}

// AttachResponse returns the endpoint.
type AttachResponse struct {
	Endpoint Endpoint
}

// DetachRequest removes a VM's port.
type DetachRequest struct {
	VM   VMRef
	Type string
}

// DetachResponse is empty.
type DetachResponse struct{}

// ReleaseRequest forgets a VM.
type ReleaseRequest struct {
	VM   VMRef
	Type string
}

// ReleaseResponse is empty.
type ReleaseResponse struct{}

// StatusRequest asks about one VM.
type StatusRequest struct {
	VM   VMRef
	Type string
}

// StatusResponse is what `anka show` reports about a VM's network.
type StatusResponse struct {
	Attached    bool
	IP          string
	InternalMAC string
	DynamicMAC  string
	LeaseExpiry time.Time
	// Path says how frames travel (e.g. "user-space switch", "kernel bridge").
	Path     string
	Counters map[string]uint64
	// Details are extra lines for `anka show` (key: value).
	Details map[string]string
}

// SuspendRequest and ResumeRequest name the VM.
type SuspendRequest struct {
	VM   VMRef
	Type string
}

// SuspendResponse is empty.
type SuspendResponse struct{}

// ResumeRequest names the VM.
type ResumeRequest struct {
	VM   VMRef
	Type string
}

// ResumeResponse is empty.
type ResumeResponse struct{}

// PortForward is one host->guest rule.
type PortForward struct {
	Name      string
	Protocol  string // tcp or udp
	HostIP    string
	HostPort  int
	GuestPort int
}

// PortForwardRequest adds or removes one rule of a VM.
type PortForwardRequest struct {
	VM   VMRef
	Type string
	Rule PortForward
}

// PortForwardResponse is empty.
type PortForwardResponse struct{}

// ListPortForwardsRequest names the VM.
type ListPortForwardsRequest struct {
	VM   VMRef
	Type string
}

// ListPortForwardsResponse lists the rules in force.
type ListPortForwardsResponse struct {
	Rules []PortForward
}
