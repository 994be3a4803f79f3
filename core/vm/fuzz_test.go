package vm

import (
	"bytes"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// FuzzDecodeVM feeds arbitrary bytes to the vm.yaml reader. A rejected
// file gets an error naming it; an accepted one has a valid name and a
// uuid, and survives write-then-read unchanged (what `anka modify` does
// to every file it touches).
func FuzzDecodeVM(f *testing.F) {
	for _, s := range []string{
		"version: 1\nname: vm1\nuuid: 6f1c0e4e-5c1b-4a4e-9a57-0d1b0c7d2f10\ncreated: 2026-11-01T10:00:00Z\nruntime:\n  cpu: 1\n  ram_mib: 512\nstate: stopped\n",
		"version: 1\nname: web\nuuid: u\nruntime: {kind: external, cpu: 2, ram_mib: 1024}\nnetwork_card:\n  type: shared\n  mac: 52:54:00:12:34:56\n  ip: 192.168.64.9\n  options: {segment: a}\n  port_forwarding:\n    - {name: ssh, protocol: tcp, host_ip: 127.0.0.1, host_port: 2222, guest_port: 22}\nstate: running\n",
		"version: 2\nname: vm1\nuuid: x\n",
		"version: 1\nname: ../etc\nuuid: x\n",
		"version: 1\nname: vm1\nuuid: x\nextra: 1\n",
		"version: 1\nname: vm1\nuuid: x\nnetwork_card: null\n",
		"version: 1\nname: vm1\nuuid: x\ncreated: 99999-01-01T00:00:00Z\n",
		"version: 1\nname: vm1\nuuid: x\nnetwork_card:\n  port_forwa",
		"",
	} {
		f.Add([]byte(s))
	}
	const path = "/state/vms/x/vm.yaml"
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decode(path, data)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if ValidateName("VM", v.Name) != nil || v.UUID == "" || v.Version != SchemaVersion {
			t.Fatalf("accepted %+v", v)
		}
		enc, err := encode(v)
		if err != nil {
			t.Fatalf("an accepted VM does not encode: %v", err)
		}
		v2, err := decode(path, enc)
		if err != nil {
			t.Fatalf("a written VM does not read back: %v\n%s", err, enc)
		}
		enc2, err := encode(v2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("write-read-write changed the file:\n%s\n---\n%s", enc, enc2)
		}
		if !v.Created.Equal(v2.Created) || v.Name != v2.Name || v.UUID != v2.UUID || v.State != v2.State || !sameRuntime(v.Runtime, v2.Runtime) {
			t.Fatalf("read back %+v, wrote %+v", v2, v)
		}
	})
}

// sameRuntime compares runtime specs; an empty endpoint list is no list.
func sameRuntime(a, b RuntimeSpec) bool {
	if !slices.Equal(a.Endpoints, b.Endpoints) {
		return false
	}
	a.Endpoints, b.Endpoints = nil, nil
	return reflect.DeepEqual(a, b)
}
