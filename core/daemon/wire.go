package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/anka-net/anka/core/config"
	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/plugins"
	"github.com/anka-net/anka/core/runtime"
	"github.com/anka-net/anka/core/vm"
	"github.com/anka-net/anka/sdk"
)

// The files a daemon keeps in the state dir.
const (
	SocketName = "anka.sock"
	LockName   = "daemon.lock"
	PIDName    = "daemon.pid"
	LogName    = "daemon.log"
)

// SocketPath is where the daemon of stateDir listens.
func SocketPath(stateDir string) string { return filepath.Join(stateDir, SocketName) }

// The operations, one URL path each: POST /v1/<op>.
const (
	opStart          = "start"
	opSuspend        = "suspend"
	opStop           = "stop"
	opStopAll        = "stop-all"
	opDelete         = "delete"
	opSetCard        = "set-card"
	opDeleteCard     = "delete-card"
	opAddForward     = "add-forward"
	opDeleteForward  = "delete-forward"
	opShow           = "show"
	opRestartPlugin  = "restart-plugin"
	opStatus         = "status"
	opShutdown       = "shutdown"
	opCaptureStart   = "capture-start"
	opCaptureStop    = "capture-stop"
	protocolVersion  = 1
	protocolVersionH = "Anka-Daemon-Protocol"
)

// request carries one call and the configuration the CLI resolved.
type request struct {
	Config  config.Snapshot `json:"config"`
	Name    string          `json:"name,omitempty"`
	Force   bool            `json:"force,omitempty"`
	All     bool            `json:"all,omitempty"`
	Add     bool            `json:"add,omitempty"`
	Timeout time.Duration   `json:"timeout,omitempty"`
	Card    *vm.CardChange  `json:"card,omitempty"`
	Rule    *vm.PortForward `json:"rule,omitempty"`
	// RuleName names the rule to delete; Type the plugin to restart.
	RuleName string `json:"rule_name,omitempty"`
	Type     string `json:"type,omitempty"`
	// Path is where a capture is written.
	Path string `json:"path,omitempty"`
}

type response struct {
	Status   *vm.Status           `json:"status,omitempty"`
	Rule     *vm.PortForward      `json:"rule,omitempty"`
	Names    []string             `json:"names,omitempty"`
	PID      int                  `json:"pid,omitempty"`
	Daemon   *Status              `json:"daemon,omitempty"`
	Shutdown *ShutdownReport      `json:"shutdown,omitempty"`
	Capture  *sdk.CaptureResponse `json:"capture,omitempty"`
	Error    *wireError           `json:"error,omitempty"`
}

// wireError keeps an error's kind (the CLI's exit code) and its sentence.
type wireError struct {
	Kind    errs.Kind `json:"kind"`
	Message string    `json:"message"`
}

func toWire(err error) *wireError {
	if err == nil {
		return nil
	}
	return &wireError{Kind: errs.KindOf(err), Message: err.Error()}
}

// err rebuilds the error on the CLI side. A kind this anka does not know
// (a missing one reads as 0, which would exit 0) counts as Internal, and an
// empty message gets a sentence, so a failure never looks like success.
func (w *wireError) err() error {
	if w == nil {
		return nil
	}
	k, msg := w.Kind, w.Message
	if k < errs.Internal || k > errs.Unavailable {
		k = errs.Internal
	}
	if msg == "" {
		msg = "the anka daemon reported a failure without saying what failed: see its log, " + LogName + " in the state dir"
	}
	return &errs.Error{Kind: k, Msg: msg, Err: errors.New(msg)}
}

// Status is what `anka daemon status` shows.
type Status struct {
	PID        int            `json:"pid"`
	Version    string         `json:"version"`
	StateDir   string         `json:"state_dir"`
	Socket     string         `json:"socket"`
	Started    time.Time      `json:"started"`
	Uptime     string         `json:"uptime"`
	Subreaper  bool           `json:"subreaper"`
	Plugins    []PluginStatus `json:"plugins"`
	VMsRunning int            `json:"vms_running"`
	// Resources is the daemon's own footprint at the time of the call.
	Resources Resources `json:"resources"`
}

// PluginStatus is one plugin binary as the daemon sees it.
type PluginStatus struct {
	Binary   string   `json:"binary"`
	Types    []string `json:"types,omitempty"`
	PID      int      `json:"pid,omitempty"`
	Running  bool     `json:"running"`
	Restarts int      `json:"restarts"`
	LastErr  string   `json:"last_error,omitempty"`
	// Resources is the running plugin's footprint from /proc.
	Resources *Resources `json:"resources,omitempty"`
}

// ShutdownReport says what `anka daemon stop` stopped and left running.
type ShutdownReport struct {
	StoppedVMs     []string `json:"stopped_vms"`
	StoppedPlugins []string `json:"stopped_plugins"`
	KeptPlugins    []string `json:"kept_plugins"`
}

// LiveProcesses counts what outlived a daemon under stateDir: plugin
// processes (by their reattach files), QEMU processes (by their pid files)
// and attached external VMs.
func LiveProcesses(stateDir string) int {
	n := 0
	files, _ := filepath.Glob(filepath.Join(stateDir, "plugins", "*", "reattach.json"))
	for _, f := range files {
		if _, ok := plugins.Running(stateDir, filepath.Base(filepath.Dir(f))); ok {
			n++
		}
	}
	pids, _ := filepath.Glob(filepath.Join(stateDir, "vms", "*", runtime.QEMUPid))
	for _, f := range pids {
		b, err := os.ReadFile(f)
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 && runtime.ProcessAlive(pid) {
			n++
		}
	}
	ext, _ := filepath.Glob(filepath.Join(stateDir, "vms", "*", runtime.EndpointFile))
	return n + len(ext)
}
