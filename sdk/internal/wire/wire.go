// Package wire holds what the plugin side (sdk.Serve) and the host side
// (sdk/host) must agree on besides the .proto: the go-plugin handshake, the
// environment a host hands a plugin, and the glue that builds the go-plugin
// plugin from package sdk's gRPC adapters.
package wire

import (
	"log/slog"

	"github.com/hashicorp/go-plugin"
)

// ProtocolVersions are the plugin protocol versions this sdk serves and
// dials, newest first. A v2 adds its entry here and in package sdk.
func ProtocolVersions() []int { return []int{1} }

// PluginName is the single go-plugin plugin every binary serves; the
// network types it serves are listed by Info, not by go-plugin.
const PluginName = "network"

// The magic cookie only tells a plugin it was started by anka (so a person
// running it by hand gets a friendly message); it is not a secret.
const (
	CookieKey   = "ANKA_PLUGIN"
	CookieValue = "7c3f9a61e2b84d0f-anka-network-plugin"
)

// Environment a host sets for a plugin.
const (
	EnvLog      = "ANKA_PLUGIN_LOG"       // log file (append, 0600); unset: stderr
	EnvLogLevel = "ANKA_PLUGIN_LOG_LEVEL" // trace, debug, info, warn, error
	EnvDataDir  = "ANKA_PLUGIN_DATA_DIR"  // the plugin's private data directory
	EnvSettings = "ANKA_PLUGIN_SETTINGS"  // JSON object of string settings
)

// DescribeFlag makes a plugin binary print its Info as JSON and exit
// without a handshake.
const DescribeFlag = "--describe"

// Handshake is the go-plugin handshake both sides use. ProtocolVersion is
// left to VersionedPlugins so go-plugin negotiates the newest common one.
var Handshake = plugin.HandshakeConfig{
	MagicCookieKey:   CookieKey,
	MagicCookieValue: CookieValue,
}

// NewPlugin builds the go-plugin plugin: impl is the sdk.NetworkPlugin a
// server serves (nil on the host side, which only dials); name labels the
// plugin in the errors a client returns; log gets the server's errors.
//
// Package sdk sets it in its init and nothing reassigns it: sdk owns the
// gRPC adapters and converters because sdk.Serve needs them, and sdk cannot
// import a package that imports sdk. Anything importing this package also
// imports sdk (for the types), so the hook is set before any use.
var NewPlugin func(impl any, name string, log *slog.Logger) plugin.Plugin

// PluginSets is VersionedPlugins for a go-plugin ServeConfig or
// ClientConfig.
func PluginSets(impl any, name string, log *slog.Logger) map[int]plugin.PluginSet {
	if NewPlugin == nil {
		panic("wire.NewPlugin is unset: import github.com/anka-net/anka/sdk")
	}
	sets := map[int]plugin.PluginSet{}
	for _, v := range ProtocolVersions() {
		sets[v] = plugin.PluginSet{PluginName: NewPlugin(impl, name, log)}
	}
	return sets
}
