package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/fsutil"
)

// EndpointFile is where the external runtime records the NIC endpoint a
// hypervisor anka does not launch must connect to.
const EndpointFile = "endpoint.json"

// External is the runtime for hypervisors anka does not launch (vfkit,
// cloud-hypervisor, Firecracker, a test harness): the lifecycle and the
// network attach run as for QEMU, and the endpoint is handed to whoever
// runs the VM. "Running" means attached; anka cannot see the process.
type External struct{}

// ExternalState is the content of endpoint.json.
type ExternalState struct {
	State    State             `json:"state"`
	Endpoint *ExternalEndpoint `json:"endpoint,omitempty"`
}

// ExternalEndpoint is the NIC endpoint in the words a hypervisor's
// configuration uses.
type ExternalEndpoint struct {
	// Kind is dgram (one frame per datagram: bind VMPath, send to
	// PluginPath), stream (connect to PluginPath; 4-byte big-endian length
	// before each frame), vhost-user (a vhost-user front-end connecting to
	// PluginPath, the guest's memory shared) or tap.
	Kind       string `json:"kind"`
	PluginPath string `json:"plugin_path,omitempty"`
	VMPath     string `json:"vm_path,omitempty"`
	TAP        string `json:"tap,omitempty"`
	MAC        string `json:"mac"`
	LinkUp     bool   `json:"link_up"`
}

// Name is "external".
func (External) Name() string { return "external" }

func (External) file(dir string) string { return filepath.Join(dir, EndpointFile) }

// Read returns the recorded state; a VM never started is stopped.
func (e External) Read(dir string) (ExternalState, error) {
	data, err := os.ReadFile(e.file(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return ExternalState{State: Stopped}, nil
	}
	if err != nil {
		return ExternalState{}, err
	}
	var st ExternalState
	if err := json.Unmarshal(data, &st); err != nil {
		return ExternalState{}, errs.Invalidf("%s is not valid (%v): stop the VM with --force to reset it", e.file(dir), err)
	}
	return st, nil
}

func (e External) write(dir string, st ExternalState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(e.file(dir), data, 0o644)
}

// Start records the endpoint; the hypervisor connects to it.
func (e External) Start(_ context.Context, s *Spec) error {
	st := ExternalState{State: Running}
	if n := s.NIC; n != nil {
		st.Endpoint = &ExternalEndpoint{Kind: n.Kind, PluginPath: n.Path, VMPath: n.LocalPath, TAP: n.TAP, MAC: n.MAC.String(), LinkUp: n.LinkUp}
	}
	return e.write(s.Dir, st)
}

// Info reports the recorded state.
func (e External) Info(_ context.Context, dir string) (Info, error) {
	st, err := e.Read(dir)
	return Info{State: st.State}, err
}

func (e External) set(dir string, from, to State) error {
	st, err := e.Read(dir)
	if err != nil {
		return err
	}
	if st.State != from {
		return errs.Statef("VM is %s, not %s", st.State, from)
	}
	st.State = to
	return e.write(dir, st)
}

// Suspend records that the hypervisor paused the VM.
func (e External) Suspend(_ context.Context, dir string) error { return e.set(dir, Running, Paused) }

// Resume records that it runs again.
func (e External) Resume(_ context.Context, dir string) error { return e.set(dir, Paused, Running) }

// Stop forgets the endpoint; the network detaches the port.
func (e External) Stop(_ context.Context, dir string, _ bool, _ time.Duration) error {
	if err := os.Remove(e.file(dir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// SetLink records the cable state for the hypervisor to apply.
func (e External) SetLink(_ context.Context, dir string, up bool) error {
	st, err := e.Read(dir)
	if err != nil {
		return err
	}
	if st.Endpoint == nil {
		return errs.Statef("VM has no attached NIC")
	}
	st.Endpoint.LinkUp = up
	return e.write(dir, st)
}
