package vm

import (
	"context"

	"github.com/anka-net/anka/core/runtime"
)

// Hooks are called around every lifecycle transition; network plugins fill
// them. Every method gets the VM as it is at that moment. An error from a
// Before hook stops the transition; errors from After hooks are reported.
type Hooks interface {
	// BeforeStart attaches the card and returns the NIC the runtime
	// connects; nil means no network device.
	BeforeStart(ctx context.Context, v *VM, dynamicMAC string) (*runtime.NIC, error)
	AfterStart(ctx context.Context, v *VM) error
	BeforeSuspend(ctx context.Context, v *VM) error
	AfterResume(ctx context.Context, v *VM) error
	// AfterStop detaches the card; the address stays reserved.
	AfterStop(ctx context.Context, v *VM) error
	// BeforeDelete releases everything the network holds for the VM.
	BeforeDelete(ctx context.Context, v *VM) error
	// CardRemoved releases the network's state for a card taken away.
	CardRemoved(ctx context.Context, v *VM, old *NetworkCard) error
	// PortForwardsChanged applies the rules of a running VM at once.
	PortForwardsChanged(ctx context.Context, v *VM) error
	// ValidateCard lets the network refuse a card before it is saved.
	ValidateCard(ctx context.Context, v *VM, card *NetworkCard) error
}

// NoHooks does nothing; embed it to implement only some hooks.
type NoHooks struct{}

func (NoHooks) BeforeStart(context.Context, *VM, string) (*runtime.NIC, error) { return nil, nil }
func (NoHooks) AfterStart(context.Context, *VM) error                          { return nil }
func (NoHooks) BeforeSuspend(context.Context, *VM) error                       { return nil }
func (NoHooks) AfterResume(context.Context, *VM) error                         { return nil }
func (NoHooks) AfterStop(context.Context, *VM) error                           { return nil }
func (NoHooks) BeforeDelete(context.Context, *VM) error                        { return nil }
func (NoHooks) CardRemoved(context.Context, *VM, *NetworkCard) error           { return nil }
func (NoHooks) PortForwardsChanged(context.Context, *VM) error                 { return nil }
