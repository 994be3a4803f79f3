package main

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ethFlagLRO is ETH_FLAG_LRO in ETHTOOL_GFLAGS/SFLAGS.
const ethFlagLRO = 1 << 15

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct {
	cmd  uint32
	data uint32
}

// ifreqData is struct ifreq with ifr_data, as SIOCETHTOOL wants it.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// ethtool runs one get or set command on ifname (SIOCETHTOOL, as
// `ethtool -k` and `-K` do) and returns the value.
func ethtool(ifname string, cmd, data uint32) (uint32, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	v := &ethtoolValue{cmd: cmd, data: data}
	var ifr ifreqData
	copy(ifr.name[:unix.IFNAMSIZ-1], ifname)
	ifr.data = unsafe.Pointer(v)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); e != 0 {
		return 0, e
	}
	return v.data, nil
}

// lro reports whether LRO is on.
func lro(ifname string) (bool, error) {
	flags, err := ethtool(ifname, unix.ETHTOOL_GFLAGS, 0)
	if err != nil {
		return false, fmt.Errorf("reading the offloads of %s: %w", ifname, err)
	}
	return flags&ethFlagLRO != 0, nil
}

// setLRO switches LRO on or off.
func setLRO(ifname string, on bool) error {
	flags, err := ethtool(ifname, unix.ETHTOOL_GFLAGS, 0)
	if err != nil {
		return fmt.Errorf("reading the offloads of %s: %w", ifname, err)
	}
	if on {
		flags |= ethFlagLRO
	} else {
		flags &^= ethFlagLRO
	}
	if _, err := ethtool(ifname, unix.ETHTOOL_SFLAGS, flags); err != nil {
		return fmt.Errorf("switching LRO of %s %s: %w", ifname, onOff(on), err)
	}
	return nil
}

// gro reports whether GRO is on; setGRO switches it. The plugin leaves
// GRO alone (it cuts what GRO merged); tests use them to make merged
// packets.
func gro(ifname string) (bool, error) {
	v, err := ethtool(ifname, unix.ETHTOOL_GGRO, 0)
	return v != 0, err
}

func setGRO(ifname string, on bool) error {
	v := uint32(0)
	if on {
		v = 1
	}
	_, err := ethtool(ifname, unix.ETHTOOL_SGRO, v)
	return err
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}
