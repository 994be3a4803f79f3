package main

import (
	"testing"

	"github.com/anka-net/anka/plugins/shared/routed/routedtest"
)

// The tests set up the host network (TAP, nftables, sysctls): in
// namespaces of their own, never the host's.
func TestMain(m *testing.M) { routedtest.Main(m) }
