// Command udpecho is the test guest's UDP echo service (busybox has no UDP
// server): every datagram to the port is sent back to its sender. It is
// built static into the guest's initramfs by test/guest/build.sh.
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	port := "7"
	if len(os.Args) > 1 {
		port = os.Args[1]
	}
	c, err := net.ListenPacket("udp", ":"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "udpecho:", err)
		os.Exit(1)
	}
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			continue
		}
		c.WriteTo(buf[:n], from)
	}
}
