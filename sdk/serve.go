package sdk

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/anka-net/anka/sdk/internal/logging"
	"github.com/anka-net/anka/sdk/internal/wire"
)

// Env is what anka hands a plugin process when it starts it.
type Env struct {
	// DataDir is the plugin's private directory (0700): leases, state and
	// its log live there, so a restarted plugin gives every VM the same
	// address again. Empty when run without anka (and for --describe).
	DataDir string
	// LogLevel is trace, debug, info, warn or error.
	LogLevel string
	// Settings are the plugin's options from anka's configuration.
	Settings map[string]string
	// Logger writes to the plugin's log file (or to stderr, which anka
	// relays into its own log). sdk.Serve also makes it slog's default.
	Logger *slog.Logger
	// Describe is true when the binary only runs to print its Info
	// (--describe): build what Info needs and start nothing.
	Describe bool
}

// DataDir is the plugin's private data directory as anka passed it, for a
// plugin built with Serve rather than ServeFunc.
func DataDir() string { return os.Getenv(wire.EnvDataDir) }

// ServeOption changes how Serve runs.
type ServeOption func(*serveOptions)

type serveOptions struct {
	logOutput io.Writer
}

// WithLogOutput sets where the plugin logs when anka gives no log file
// (default: stderr).
func WithLogOutput(w io.Writer) ServeOption {
	return func(o *serveOptions) { o.logOutput = w }
}

// Serve runs p as a plugin and returns when anka stops it; a plugin's main
// is `sdk.Serve(myplugin.New())`. It hides go-plugin: the handshake, the
// protocol version, logging, and `--describe`, which prints Info as JSON.
// On a failure it prints why and exits the process with status 1.
func Serve(p NetworkPlugin, opts ...ServeOption) {
	ServeFunc(func(Env) (NetworkPlugin, error) { return p, nil }, opts...)
}

// ServeFunc is Serve for a plugin that needs its environment (data dir,
// settings, logger) to be built.
func ServeFunc(newPlugin func(env Env) (NetworkPlugin, error), opts ...ServeOption) {
	// A plugin outlives the daemon that started it; once the daemon is
	// gone, a write to the stderr pipe it held raises SIGPIPE, which kills
	// a Go program writing to fd 1 or 2. Ignored, the write just fails.
	signal.Ignore(syscall.SIGPIPE)
	o := serveOptions{logOutput: os.Stderr}
	for _, opt := range opts {
		opt(&o)
	}
	if code := serve(newPlugin, os.Args, os.Stdout, os.Stderr, o); code != 0 {
		os.Exit(code)
	}
}

// serve returns the process's exit status.
func serve(newPlugin func(Env) (NetworkPlugin, error), args []string, stdout, stderr io.Writer, o serveOptions) int {
	self := "this plugin"
	if len(args) > 0 {
		self = filepath.Base(args[0])
	}
	describe := false
	for _, a := range args[1:] {
		switch a {
		case wire.DescribeFlag:
			describe = true
		case "-h", "-help", "--help", "help":
			fmt.Fprint(stdout, byHand(self))
			return 0
		default:
			fmt.Fprintf(stderr, "%s: unknown argument %q\n\n%s", self, a, byHand(self))
			return 2
		}
	}
	if !describe && os.Getenv(wire.CookieKey) != wire.CookieValue {
		fmt.Fprint(stderr, byHand(self))
		return 1
	}

	levelName := os.Getenv(wire.EnvLogLevel)
	level, levelErr := logging.ParseLevel(levelName)
	var handler slog.Handler
	var logFile *os.File
	var logFileErr error
	switch path := os.Getenv(wire.EnvLog); {
	case describe:
		handler = logging.TextHandler(o.logOutput, level)
	case path != "":
		logFile, logFileErr = openLog(path)
		if logFileErr == nil {
			handler = logging.TextHandler(logFile, level)
			break
		}
		fallthrough
	default:
		// go-plugin's host re-logs JSON lines in hclog's shape at their level.
		handler = logging.StderrHandler(o.logOutput, level)
	}
	if logFile != nil {
		defer logFile.Close()
	}
	log := slog.New(handler)
	slog.SetDefault(log)
	if levelErr != nil {
		log.Warn("ignoring "+wire.EnvLogLevel, "error", levelErr)
	}
	if logFileErr != nil {
		log.Warn("cannot open the log file; logging to stderr", "error", logFileErr)
	}

	env := Env{
		DataDir:  os.Getenv(wire.EnvDataDir),
		LogLevel: logging.LevelName(level),
		Logger:   log,
		Describe: describe,
	}
	if s := os.Getenv(wire.EnvSettings); s != "" {
		if err := json.Unmarshal([]byte(s), &env.Settings); err != nil {
			return fatal(log, stderr, self, fmt.Errorf("%s is not a JSON object of strings: %v", wire.EnvSettings, err))
		}
	}
	if describe {
		env.DataDir = ""
	}

	p, err := newPlugin(env)
	if err != nil {
		return fatal(log, stderr, self, err)
	}
	if p == nil {
		return fatal(log, stderr, self, fmt.Errorf("the plugin constructor returned no plugin"))
	}
	info, err := checkInfo(p)
	if err != nil {
		return fatal(log, stderr, self, err)
	}

	if describe {
		info.ProtocolVersions = wire.ProtocolVersions()
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(info); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", self, err)
			return 1
		}
		return 0
	}

	log.Info("plugin starting", "name", info.Name, "version", info.Version, "types", typeNames(info), "pid", os.Getpid())
	// SIGTERM (anka stopping a plugin whose host is gone, systemd) is a
	// stop like the host's shutdown call: the plugin removes what it put
	// on the host before the process ends.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		log.Info("plugin stopping on SIGTERM")
		if c, ok := p.(io.Closer); ok {
			if err := c.Close(); err != nil {
				log.Error("closing the plugin", "error", err)
			}
		}
		os.Exit(0)
	}()
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  wire.Handshake,
		VersionedPlugins: wire.PluginSets(p, self, log),
		GRPCServer:       plugin.DefaultGRPCServer,
		Logger:           logging.HCLog(log, "go-plugin"),
	})
	log.Info("plugin stopping")
	if c, ok := p.(io.Closer); ok {
		if err := c.Close(); err != nil {
			log.Error("closing the plugin", "error", err)
		}
	}
	return 0
}

// byHand is what a person running the binary sees.
func byHand(self string) string {
	return fmt.Sprintf(`%[1]s is an anka network plugin: anka starts it when a VM needs one
of its network types, so it is not meant to be run by hand.

  %[1]s --describe    print the types and versions it serves, as JSON
  anka plugin list    list every plugin anka found
`, self)
}

func fatal(log *slog.Logger, stderr io.Writer, self string, err error) int {
	log.Error("plugin cannot start", "error", err)
	fmt.Fprintf(stderr, "%s: %v\n", self, err)
	return 1
}

func openLog(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
}

// checkInfo asks p for its Info and checks what anka relies on: at least
// one type, valid and distinct names.
func checkInfo(p NetworkPlugin) (*InfoResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := p.Info(ctx, &InfoRequest{})
	if err != nil {
		return nil, fmt.Errorf("the plugin's Info failed: %w", err)
	}
	if info == nil || len(info.Types) == 0 {
		return nil, fmt.Errorf("the plugin's Info lists no network types")
	}
	var seen []string
	for _, t := range info.Types {
		if err := ValidateTypeName(t.Name); err != nil {
			return nil, fmt.Errorf("the plugin's Info: %w", err)
		}
		if slices.Contains(seen, t.Name) {
			return nil, fmt.Errorf("the plugin's Info lists network type %q twice", t.Name)
		}
		seen = append(seen, t.Name)
	}
	return info, nil
}

func typeNames(info *InfoResponse) []string {
	var names []string
	for _, t := range info.Types {
		names = append(names, t.Name)
	}
	return names
}
