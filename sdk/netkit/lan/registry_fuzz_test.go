package lan

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzRegistry reads an arbitrary <lan>-vms.json, the list a LAN keeps
// of its VMs across restarts. A refusal names the file; what is read is
// saved and read back unchanged.
func FuzzRegistry(f *testing.F) {
	f.Add([]byte(`{"schema":1,"vms":[{"id":"6f1c0e4e-5c1b-4a4e-9a57-0d1b0c7d2f10","name":"web","static_ip":"192.168.64.9","dynamic_mac":"0e:61:6e:6b:00:01","internal_mac":"52:54:00:12:34:56"},{"id":"a2c8e0f2","dynamic_mac":"0e:61:6e:6b:00:02"}]}`))
	f.Add([]byte(`{"schema":2,"vms":[]}`))
	f.Add([]byte(`{"schema":1,"vms":[{"id":"x","static_ip":"999.1.1.1"}]}`))
	f.Add([]byte(`{"schema":1,"vms":[{"id":"x","static_ip":"fe80::1%eth0"}]}`))
	f.Add([]byte(`{"schema":1,"vms":[{"id":"x"`))
	f.Add([]byte(`null`))
	dir := f.TempDir()
	if d, err := os.MkdirTemp("/dev/shm", "anka-fuzz-"); err == nil {
		dir = d // saveRegistry syncs; on tmpfs that costs nothing
		f.Cleanup(func() { os.RemoveAll(d) })
	}
	path := filepath.Join(dir, "shared-vms.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		recs, err := loadRegistry(path)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if err := saveRegistry(path, recs); err != nil {
			t.Fatalf("a registry read does not save: %v", err)
		}
		again, err := loadRegistry(path)
		if err != nil {
			t.Fatalf("a saved registry does not read back: %v", err)
		}
		if len(recs) == 0 && len(again) == 0 {
			return
		}
		if !reflect.DeepEqual(recs, again) {
			t.Fatalf("round trip %+v -> %+v", recs, again)
		}
	})
}
