// Package netkit holds the data-plane parts every network type shares:
// frame I/O (frameio), the learning switch (switchx), the DHCP server
// (dhcpserver), ARP answers (arp), MAC translation (mactrans) and capture
// (capture). They need nothing from the plugin protocol, so a third party
// may use them on their own. They are the hot path: no allocation per
// frame, batched system calls, buffers reused.
package netkit
