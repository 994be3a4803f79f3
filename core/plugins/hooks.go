package plugins

import (
	"context"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/runtime"
	"github.com/anka-net/anka/core/vm"
)

// UnservedHooks are the lifecycle hooks while no plugin host runs: a VM
// without a card boots; a VM with one is refused with a message naming
// its type, so nothing boots with a NIC that has no network behind it.
type UnservedHooks struct {
	vm.NoHooks
	Finder Finder
}

// BeforeStart refuses any card, naming the type and the way out.
func (h UnservedHooks) BeforeStart(_ context.Context, v *vm.VM, _ string) (*runtime.NIC, error) {
	if v.NetworkCard == nil {
		return nil, nil
	}
	t := v.NetworkCard.Type
	fd, err := h.Finder.Find(t)
	if err != nil {
		return nil, &errs.Error{Kind: errs.Unavailable, Err: err, Msg: err.Error() + "; or boot without a NIC: `anka modify " + v.Name + " delete network-card`"}
	}
	return nil, errs.Unavailablef("network type %q: %s was found, but this anka cannot launch network plugins; boot without a NIC: `anka modify %s delete network-card`", t, fd.Path, v.Name)
}
