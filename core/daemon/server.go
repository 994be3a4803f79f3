package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anka-net/anka/core/config"
	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/fsutil"
	"github.com/anka-net/anka/core/plugins"
	"github.com/anka-net/anka/core/vm"
	"github.com/anka-net/anka/sdk"
)

// Server is the daemon of one state dir.
type Server struct {
	// Config is the daemon's own configuration: its state dir, and what
	// the supervisor uses until a CLI call brings newer values.
	Config  *config.Config
	Wiring  Wiring
	Logger  *slog.Logger
	Version string
	// StopTimeout bounds each VM's graceful stop at `daemon stop --all`.
	StopTimeout time.Duration

	conns     *plugins.Conns
	started   time.Time
	subreaper bool
	mu        sync.Mutex
	last      *config.Config // the newest configuration a call brought
	sup       *supervisor
	quit      chan struct{}
	quitOnce  sync.Once
}

// Run serves until ctx ends or `anka daemon stop` asks. Plugins and VMs
// keep running when it returns (but for what the stop request stopped).
func (s *Server) Run(ctx context.Context) error {
	stateDir := s.Config.StateDir
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	if s.StopTimeout == 0 {
		s.StopTimeout = 30 * time.Second
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return vm.PathError(stateDir, err)
	}
	lock, err := fsutil.TryLockFile(filepath.Join(stateDir, LockName))
	if err != nil {
		if errors.Is(err, fsutil.ErrLocked) {
			pid, _ := os.ReadFile(filepath.Join(stateDir, PIDName))
			return errs.Conflictf("a daemon already serves %s (pid %s): `anka daemon status` shows it, `anka daemon stop` stops it", stateDir, strings.TrimSpace(string(pid)))
		}
		return vm.PathError(stateDir, err)
	}
	defer lock.Unlock()
	pidFile := filepath.Join(stateDir, PIDName)
	if err := fsutil.WriteFileAtomic(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return vm.PathError(stateDir, err)
	}
	defer os.Remove(pidFile)

	s.started = time.Now()
	s.conns = &plugins.Conns{}
	s.last = s.Config
	s.quit = make(chan struct{})
	if err := becomeSubreaper(); err != nil {
		s.Logger.Warn("cannot become a child subreaper; orphans of the VMs it starts go to init", "err", err)
	} else {
		s.subreaper = true
		go reap(ctx, s.Logger)
	}

	ln, err := listen(SocketPath(stateDir))
	if err != nil {
		return err
	}
	sockPath := SocketPath(stateDir)
	defer os.Remove(sockPath)

	// Reattach to the plugins that outlived the previous daemon, and bring
	// back any that died while no daemon watched.
	s.sup = &supervisor{host: s.host, cfg: s.current, log: s.Logger, state: map[string]*pluginState{}, kick: make(chan struct{}, 1)}
	s.sup.adopt(ctx)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s.sup.run(runCtx)

	srv := &http.Server{
		Handler:     s.handler(),
		ConnContext: withPeer,
		ReadTimeout: 30 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.Logger.Info("daemon serving", "socket", sockPath, "pid", os.Getpid())
	select {
	case <-ctx.Done():
	case <-s.quit:
	case err := <-errc:
		return err
	}
	shutCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	srv.Shutdown(shutCtx)
	s.conns.Close() // plugins keep running: they own the data plane
	s.Logger.Info("daemon stopped")
	return nil
}

// host is a plugin host with cfg, sharing the daemon's connections.
func (s *Server) host(cfg *config.Config) (*Local, error) {
	w := s.Wiring
	w.Conns = s.conns
	w.Logger = s.Logger
	return NewLocal(cfg, w)
}

// current is the newest configuration a call brought.
func (s *Server) current() *config.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// listen opens the socket readable and writable by the daemon's user
// only; a socket left by a daemon that died is replaced (the lock says
// none serves it now).
func listen(path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, vm.PathError(filepath.Dir(path), err)
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, vm.PathError(filepath.Dir(path), err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, vm.PathError(filepath.Dir(path), err)
	}
	return ln, nil
}

type peerKey struct{}

// withPeer records the connecting process's uid (SO_PEERCRED).
func withPeer(ctx context.Context, c net.Conn) context.Context {
	uid := -1
	if uc, ok := c.(*net.UnixConn); ok {
		if raw, err := uc.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) {
				if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
					uid = int(cred.Uid)
				}
			})
		}
	}
	return context.WithValue(ctx, peerKey{}, uid)
}

// allowed: root and the daemon's own user. The socket's mode already
// keeps others out; this holds even if someone loosens it.
func allowed(ctx context.Context) bool {
	uid, _ := ctx.Value(peerKey{}).(int)
	return uid == 0 || uid == os.Geteuid()
}

func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/{op}", func(w http.ResponseWriter, r *http.Request) {
		var resp response
		status := http.StatusOK
		if !allowed(r.Context()) {
			status = http.StatusForbidden
			resp.Error = toWire(errs.Permissionf("the anka daemon for %s serves root and its own user only: run anka as root (sudo)", s.Config.StateDir))
		} else {
			var req request
			if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<20)).Decode(&req); err != nil {
				status = http.StatusBadRequest
				resp.Error = toWire(errs.Invalidf("a malformed request reached the daemon: %v", err))
			} else {
				resp = s.dispatch(r.Context(), r.PathValue("op"), &req)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set(protocolVersionH, strconv.Itoa(protocolVersion))
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(resp)
		if r.PathValue("op") == opShutdown && resp.Error == nil {
			s.quitOnce.Do(func() { close(s.quit) })
		}
	})
	return mux
}

// dispatch runs one call with the configuration it brought.
func (s *Server) dispatch(ctx context.Context, op string, req *request) response {
	cfg, err := config.FromSnapshot(req.Config)
	if err != nil {
		return response{Error: toWire(err)}
	}
	if filepath.Clean(cfg.StateDir) != filepath.Clean(s.Config.StateDir) {
		return response{Error: toWire(errs.Invalidf("this daemon serves state dir %s, not %s", s.Config.StateDir, cfg.StateDir))}
	}
	s.mu.Lock()
	s.last = cfg
	s.mu.Unlock()
	l, err := s.host(cfg)
	if err != nil {
		return response{Error: toWire(err)}
	}
	var resp response
	switch op {
	case opStart:
		resp.Status, err = l.Start(ctx, req.Name)
	case opSuspend:
		resp.Status, err = l.Suspend(ctx, req.Name)
	case opStop:
		resp.Status, err = l.Stop(ctx, req.Name, req.Force, req.Timeout)
	case opStopAll:
		resp.Names, err = l.StopAll(ctx, req.Force, req.Timeout)
	case opDelete:
		err = l.Delete(ctx, req.Name, req.Force)
	case opSetCard:
		if req.Card == nil {
			err = errs.Invalidf("set-card without a card change")
			break
		}
		resp.Status, err = l.SetCard(ctx, req.Name, *req.Card, req.Add)
	case opDeleteCard:
		resp.Status, err = l.DeleteCard(ctx, req.Name)
	case opAddForward:
		if req.Rule == nil {
			err = errs.Invalidf("add-forward without a rule")
			break
		}
		resp.Rule, err = l.AddPortForward(ctx, req.Name, *req.Rule)
	case opDeleteForward:
		err = l.DeletePortForward(ctx, req.Name, req.RuleName, req.All)
	case opShow:
		resp.Status, err = l.Show(ctx, req.Name)
	case opRestartPlugin:
		resp.PID, err = l.RestartPlugin(ctx, req.Type)
		if err == nil {
			s.sup.restarted(l.Host, req.Type)
		}
	case opCaptureStart, opCaptureStop:
		resp.Capture, err = l.Capture(ctx, req.Name, req.Path, op == opCaptureStop)
	case opStatus:
		resp.Daemon = s.status(ctx, l)
	case opShutdown:
		resp.Shutdown, err = s.shutdown(ctx, l, req.All)
	default:
		err = errs.Invalidf("the daemon has no operation %q: is this anka older than the daemon? `anka daemon stop` and run the command again", op)
	}
	resp.Error = toWire(err)
	return resp
}

func (s *Server) status(ctx context.Context, l *Local) *Status {
	st := &Status{
		PID: os.Getpid(), Version: s.Version, StateDir: s.Config.StateDir, Socket: SocketPath(s.Config.StateDir),
		Started: s.started, Uptime: time.Since(s.started).Round(time.Second).String(), Subreaper: s.subreaper,
		Plugins: s.sup.report(l.Host), Resources: selfResources(),
	}
	if vms, _, err := l.Manager.List(ctx); err == nil {
		for _, v := range vms {
			if v.State != vm.Stopped {
				st.VMsRunning++
			}
		}
	}
	return st
}

// shutdown stops what `anka daemon stop [--all]` stops: with all, every
// VM and then every plugin; without, only plugins no running or
// suspended VM needs. The daemon exits after answering.
func (s *Server) shutdown(ctx context.Context, l *Local, all bool) (*ShutdownReport, error) {
	rep := &ShutdownReport{StoppedVMs: []string{}, StoppedPlugins: []string{}, KeptPlugins: []string{}}
	s.sup.pause()
	var errList []error
	if all {
		names, err := l.StopAll(ctx, false, s.StopTimeout)
		rep.StoppedVMs = names
		if err != nil {
			errList = append(errList, err)
		}
	}
	needed := map[string]bool{}
	if vms, _, err := l.Manager.List(ctx); err == nil {
		for _, v := range vms {
			if v.State != vm.Stopped && v.NetworkCard != nil {
				needed[v.NetworkCard.Type] = true
			}
		}
	} else {
		errList = append(errList, err)
	}
	for _, fd := range l.Host.Finder.All() {
		if _, ok := plugins.Running(l.Host.StateDir, fd.Path); !ok || slices.Contains(rep.StoppedPlugins, fd.Path) || slices.Contains(rep.KeptPlugins, fd.Path) {
			continue
		}
		types := []string{fd.Type}
		// A hung plugin costs the stop a bounded wait, then counts as
		// serving only the type it was found for.
		cctx, cancel := context.WithTimeout(ctx, plugins.StatusTimeout)
		if pl, err := l.Host.Connect(cctx, fd); err == nil {
			if info, err := pl.Info(cctx, &sdk.InfoRequest{}); err == nil {
				types = types[:0]
				for _, t := range info.Types {
					types = append(types, t.Name)
				}
			}
		}
		cancel()
		keep := slices.ContainsFunc(types, func(t string) bool { return needed[t] })
		if keep {
			rep.KeptPlugins = append(rep.KeptPlugins, fd.Path)
			continue
		}
		if err := l.Host.StopPlugin(fd.Path); err != nil {
			errList = append(errList, err)
			continue
		}
		rep.StoppedPlugins = append(rep.StoppedPlugins, fd.Path)
	}
	if len(errList) > 0 {
		s.sup.resume()
		return rep, fmt.Errorf("the daemon keeps running: %w", errors.Join(errList...))
	}
	return rep, nil
}
