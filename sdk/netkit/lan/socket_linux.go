//go:build linux

package lan

import "golang.org/x/sys/unix"

// socketLive reports whether a process has a unix datagram socket bound
// at path: connecting reaches it without sending anything (a datagram,
// even empty, would reach QEMU as a frame).
func socketLive(path string) bool {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
	// EPERM: bound and connected to another peer, so alive.
	return err == nil || err == unix.EPERM
}
