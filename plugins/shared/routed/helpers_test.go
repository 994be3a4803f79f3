package routed

import "github.com/anka-net/anka/sdk"

func sdkRule(name, proto, ip string, hp, gp int) sdk.PortForward {
	return sdk.PortForward{Name: name, Protocol: proto, HostIP: ip, HostPort: hp, GuestPort: gp}
}
