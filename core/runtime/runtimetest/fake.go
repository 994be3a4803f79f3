// Package runtimetest gives tests an in-memory Runtime, so lifecycle and
// CLI tests run without QEMU. The real runtime has its own tests with real
// guests.
package runtimetest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/anka-net/anka/core/runtime"
)

// Fake records VMs by folder. Set FailStart to make the next Start fail.
type Fake struct {
	mu        sync.Mutex
	vms       map[string]*fakeVM
	nextPID   int
	FailStart error
	Starts    []runtime.Spec
}

type fakeVM struct {
	state runtime.State
	pid   int
}

// New returns an empty fake runtime.
func New() *Fake { return &Fake{vms: map[string]*fakeVM{}, nextPID: 1000} }

func (f *Fake) Name() string { return "fake" }

func (f *Fake) Start(_ context.Context, s *runtime.Spec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.FailStart != nil {
		err := f.FailStart
		f.FailStart = nil
		return err
	}
	if v := f.vms[s.Dir]; v != nil && v.state != runtime.Stopped {
		return fmt.Errorf("fake: %s already runs", s.Dir)
	}
	f.nextPID++
	f.vms[s.Dir] = &fakeVM{state: runtime.Running, pid: f.nextPID}
	f.Starts = append(f.Starts, *s)
	return nil
}

func (f *Fake) Info(_ context.Context, dir string) (runtime.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.vms[dir]
	if v == nil || v.state == runtime.Stopped {
		return runtime.Info{State: runtime.Stopped}, nil
	}
	return runtime.Info{State: v.state, PID: v.pid}, nil
}

func (f *Fake) set(dir string, from, to runtime.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.vms[dir]
	if v == nil || v.state != from {
		return fmt.Errorf("fake: %s is not %s", dir, from)
	}
	v.state = to
	return nil
}

func (f *Fake) Suspend(_ context.Context, dir string) error {
	return f.set(dir, runtime.Running, runtime.Paused)
}

func (f *Fake) Resume(_ context.Context, dir string) error {
	return f.set(dir, runtime.Paused, runtime.Running)
}

func (f *Fake) Stop(_ context.Context, dir string, _ bool, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v := f.vms[dir]; v != nil {
		v.state = runtime.Stopped
	}
	return nil
}

func (f *Fake) SetLink(context.Context, string, bool) error { return nil }

// Crash makes the VM in dir die on its own, as a killed QEMU would.
func (f *Fake) Crash(dir string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v := f.vms[dir]; v != nil {
		v.state = runtime.Stopped
	}
}

// Live counts VM processes that run or are paused.
func (f *Fake) Live() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, v := range f.vms {
		if v.state != runtime.Stopped {
			n++
		}
	}
	return n
}
