package lan

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// record is what the LAN keeps about a VM across restarts: enough to
// answer Status for a VM not attached yet, and to refuse a fixed address
// another VM holds (the DHCP server keeps reservations but cannot list
// them).
type record struct {
	ID          string     `json:"id"`
	Name        string     `json:"name,omitempty"`
	StaticIP    netip.Addr `json:"static_ip,omitzero"`
	DynamicMAC  string     `json:"dynamic_mac,omitempty"`
	InternalMAC string     `json:"internal_mac,omitempty"`
}

// registryFile is the JSON list of records; schema 1.
type registryFile struct {
	Schema int      `json:"schema"`
	VMs    []record `json:"vms"`
}

const registrySchema = 1

func loadRegistry(path string) ([]record, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var f registryFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s is damaged (%v): move it away to start with no VMs known (leases are kept apart)", path, err)
	}
	if f.Schema > registrySchema {
		return nil, fmt.Errorf("%s was written by a newer plugin (schema %d; this one reads %d)", path, f.Schema, registrySchema)
	}
	return f.VMs, nil
}

// saveRegistry replaces the file atomically: a crash leaves the old list
// or the new one.
func saveRegistry(path string, recs []record) error {
	b, err := json.MarshalIndent(registryFile{Schema: registrySchema, VMs: recs}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename there is nothing left to remove
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
