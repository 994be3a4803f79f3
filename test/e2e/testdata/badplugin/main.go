// Command anka-net-bad is a broken network plugin for the hostile-input
// tests: type "bad" misbehaves in the call its card options name.
//
//	-o attach=hang|garbage|exit   Attach never answers, answers an unusable
//	                              endpoint, or the process exits mid-call
//	-o status=hang|garbage        the same for Status
//	-o validate=hang              Validate never answers
//
// Before hanging it logs "hanging in <Call>", so a test knows the call is
// pending.
package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/anka-net/anka/sdk"
)

const typeName = "bad"

type plugin struct {
	mu    sync.Mutex
	cards map[string]sdk.Card // attached VMs by ID
}

func main() { sdk.Serve(&plugin{cards: map[string]sdk.Card{}}) }

func (p *plugin) Info(context.Context, *sdk.InfoRequest) (*sdk.InfoResponse, error) {
	return &sdk.InfoResponse{
		Name: sdk.BinaryName(typeName), Version: "test", ProtocolVersions: []int{sdk.ProtocolVersion},
		Types: []sdk.TypeInfo{{Name: typeName, Description: "a plugin that hangs, lies or dies on request (tests only)",
			Endpoints: []sdk.EndpointKind{sdk.EndpointDgram}}},
	}, nil
}

// misbehave acts on the card's option for call; it returns true when the
// call should answer garbage.
func misbehave(call, mode string) bool {
	switch mode {
	case "hang":
		slog.Info("hanging in " + call)
		select {} // ignores its context, like a plugin stuck in a syscall
	case "exit":
		slog.Info("exiting in " + call)
		os.Exit(3)
	case "garbage":
		return true
	}
	return false
}

func (p *plugin) Validate(_ context.Context, req *sdk.ValidateRequest) (*sdk.ValidateResponse, error) {
	misbehave("Validate", req.Card.Options["validate"])
	for k := range req.Card.Options {
		switch k {
		case "attach", "status", "validate":
		default:
			return nil, sdk.Errorf(sdk.CodeInvalid, "type bad has no option %q", k)
		}
	}
	return &sdk.ValidateResponse{}, nil
}

func (p *plugin) Attach(_ context.Context, req *sdk.AttachRequest) (*sdk.AttachResponse, error) {
	ep := sdk.Endpoint{Kind: sdk.EndpointDgram, PluginPath: filepath.Join(req.RunDir, "bad.sock"),
		VMPath: filepath.Join(req.RunDir, "bad-vm.sock"), MAC: req.Card.GuestMAC(), LinkUp: true}
	if misbehave("Attach", req.Card.Options["attach"]) {
		// Another VM's socket, and a kind nobody offered.
		ep.Kind, ep.PluginPath = "carrier-pigeon", "/run/../etc/passwd"
	}
	p.mu.Lock()
	p.cards[req.VM.ID] = req.Card
	p.mu.Unlock()
	return &sdk.AttachResponse{Endpoint: ep}, nil
}

func (p *plugin) Detach(_ context.Context, req *sdk.DetachRequest) (*sdk.DetachResponse, error) {
	p.mu.Lock()
	delete(p.cards, req.VM.ID)
	p.mu.Unlock()
	return &sdk.DetachResponse{}, nil
}

func (p *plugin) Release(ctx context.Context, req *sdk.ReleaseRequest) (*sdk.ReleaseResponse, error) {
	p.Detach(ctx, &sdk.DetachRequest{VM: req.VM})
	return &sdk.ReleaseResponse{}, nil
}

func (p *plugin) Status(_ context.Context, req *sdk.StatusRequest) (*sdk.StatusResponse, error) {
	p.mu.Lock()
	c, ok := p.cards[req.VM.ID]
	p.mu.Unlock()
	if !ok {
		return nil, sdk.Errorf(sdk.CodeNotFound, "VM %s is not attached", req.VM.Name)
	}
	st := &sdk.StatusResponse{Attached: true, DynamicMAC: c.DynamicMAC, InternalMAC: c.InternalMAC}
	if misbehave("Status", c.Options["status"]) {
		st.IP, st.DynamicMAC = "999.1.2.3\x00; rm -rf /", "not-a-mac"
	}
	return st, nil
}
