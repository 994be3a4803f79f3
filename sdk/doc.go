// Package sdk is everything a third party needs to ship an anka network
// type. It is its own Go module so a plugin never pulls in the core's
// dependencies.
//
// A plugin implements NetworkPlugin (plus, optionally, Suspender and
// PortForwarder) and calls Serve (or ServeFunc) from main; Serve hides
// go-plugin, the handshake and version negotiation. The wire protocol is
// proto/v1; host launches and reattaches plugins; plugintest is the
// conformance suite; netkit holds the data-plane parts (frame I/O,
// switch, DHCP, ARP, MAC translation, capture). Plugins must not print
// to stdout or stderr: log through the slog default Serve installs.
package sdk
