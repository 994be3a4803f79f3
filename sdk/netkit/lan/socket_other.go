//go:build !linux

package lan

func socketLive(string) bool { return false }
