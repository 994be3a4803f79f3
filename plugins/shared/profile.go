package main

import (
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

// profileEnv names a file the plugin writes a CPU profile of itself to,
// for profiling the data plane under load (docs/profiles.md):
//
//	ANKA_PLUGIN_CPUPROFILE=/tmp/shared.pprof   # in the plugin's environment
//	kill -USR1 $(pidof anka-net-shared)        # ends the profile, writes it
//	go tool pprof -top bin/anka-net-shared /tmp/shared.pprof
//
// Profiling starts when the plugin starts and ends at the first SIGUSR1;
// a second SIGUSR1 starts a new profile at the same path. Unset, nothing
// happens.
const profileEnv = "ANKA_PLUGIN_CPUPROFILE"

func startProfiling() {
	path := os.Getenv(profileEnv)
	if path == "" {
		return
	}
	start := func() *os.File {
		f, err := os.Create(path)
		if err != nil {
			return nil
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil
		}
		return f
	}
	f := start()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	go func() {
		for range sig {
			if f != nil {
				pprof.StopCPUProfile()
				f.Close()
				f = nil
			} else {
				f = start()
			}
		}
	}()
}
