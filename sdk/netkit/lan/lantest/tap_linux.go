//go:build linux

package lantest

import (
	"errors"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// OpenTAP opens the VM's TAP of p by name, as QEMU's -netdev
// tap,ifname=NAME does, in p.NS or the calling thread's namespace. The
// caller closes it; the TAP, persistent, stays.
func OpenTAP(p Plug) (*frameio.TAPPort, error) {
	if p.TAP == "" {
		return nil, errors.New("lantest: a tap endpoint without a TAP name")
	}
	var port *frameio.TAPPort
	open := func() (err error) {
		port, err = frameio.OpenTAP(p.TAP, frameio.TAPOptions{MTU: p.MTU, Logger: frameiotest.Quiet})
		return err
	}
	var err error
	if p.NS != nil {
		err = p.NS.Run(open)
	} else {
		err = open()
	}
	return port, err
}
