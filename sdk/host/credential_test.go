package host_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
)

// testUID is a uid with no passwd entry: the plugin user of these tests.
const testUID, testGID = 4_242_001, 4_242_001

// openBinary copies the test binary (which is also the test plugin) into
// a folder others may enter, as /usr/local/lib/anka/plugins is; go test
// builds into a private one.
func openBinary(t *testing.T) string {
	t.Helper()
	dir := openDir(t)
	dst := filepath.Join(dir, "anka-net-test")
	in, err := os.Open(self(t))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// openDir is a temp folder others may pass through (0711), as a state
// dir is.
func openDir(t *testing.T) string {
	t.Helper()
	d := shortDir(t)
	if err := os.Chmod(d, 0o711); err != nil {
		t.Fatal(err)
	}
	return d
}

// procStatus reads the fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

func capField(t *testing.T, st map[string]string, field string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(st[field], 16, 64)
	if err != nil {
		t.Fatalf("%s is %q: %v", field, st[field], err)
	}
	return v
}

func TestLaunchAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running a plugin as another user needs root")
	}
	for _, caps := range [][]string{
		{sdk.PrivNetAdmin, sdk.PrivNetRaw, sdk.PrivNetBindService},
		{sdk.PrivNetAdmin},
		nil,
	} {
		t.Run(strings.Join(append([]string{"caps"}, caps...), "-"), func(t *testing.T) {
			base := openDir(t)
			cfg := config(t)
			cfg.Path = openBinary(t)
			cfg.SocketDir = filepath.Join(base, "sock")
			cfg.DataDir = filepath.Join(base, "data")
			// A data dir left by a plugin that ran as root: handed over.
			if err := os.MkdirAll(filepath.Join(cfg.DataDir, "leases"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(cfg.DataDir, "leases", "db"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg.Credential = &host.Credential{UID: testUID, GID: testGID, Caps: caps}
			p := launch(t, cfg)

			st := procStatus(t, p.Pid())
			want := fmt.Sprintf("%d %d %d %d", testUID, testUID, testUID, testUID)
			if st["Uid"] != want || st["Gid"] != strings.ReplaceAll(want, fmt.Sprint(testUID), fmt.Sprint(testGID)) || st["Groups"] != "" {
				t.Errorf("plugin runs as Uid %q Gid %q Groups %q, want %s and no groups", st["Uid"], st["Gid"], st["Groups"], want)
			}
			mask, err := host.CapMask(caps)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"CapEff", "CapPrm", "CapAmb", "CapBnd"} {
				if got := capField(t, st, f); got != mask {
					t.Errorf("%s = %016x, want %016x (%v)", f, got, mask, caps)
				}
			}
			// The plugin works: it answers and logs into its own folder.
			ctx := context.Background()
			resp, err := p.Client().Status(ctx, &sdk.StatusRequest{VM: sdk.VMRef{ID: "u", Name: "v"}, Type: "alpha"})
			if err != nil || resp.Details["data_dir"] != cfg.DataDir {
				t.Fatalf("Status: %+v %v", resp, err)
			}
			for _, f := range []string{cfg.DataDir, cfg.SocketDir, filepath.Join(cfg.DataDir, "leases", "db"), filepath.Join(cfg.DataDir, "plugin.log")} {
				fi, err := os.Lstat(f)
				if err != nil {
					t.Fatal(err)
				}
				if s := fi.Sys().(*syscall.Stat_t); s.Uid != testUID || s.Gid != testGID {
					t.Errorf("%s is owned by %d:%d, want the plugin user %d:%d", f, s.Uid, s.Gid, testUID, testGID)
				}
			}
			// The host (root) still reaches the plugin's socket: a
			// reattach from a new host works.
			ri, err := p.ReattachInfo()
			if err != nil {
				t.Fatal(err)
			}
			q, err := host.Reattach(ctx, ri, host.Config{Logger: cfg.Logger})
			if err != nil {
				t.Fatalf("reattaching to the plugin running as %d: %v", testUID, err)
			}
			q.Disconnect()
		})
	}
}

func TestLaunchAsUserRefusals(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running a plugin as another user needs root")
	}
	t.Run("binary in a private folder", func(t *testing.T) {
		cfg := config(t) // the test binary sits in go test's private folder
		base := openDir(t)
		cfg.SocketDir, cfg.DataDir = filepath.Join(base, "sock"), filepath.Join(base, "data")
		cfg.Credential = &host.Credential{UID: testUID, GID: testGID}
		_, err := host.Launch(context.Background(), cfg)
		var re *host.ReachError
		if !errors.As(err, &re) || !strings.Contains(err.Error(), "chmod o+x") {
			t.Fatalf("Launch = %v, want a ReachError saying what to chmod", err)
		}
	})
	t.Run("state dir the user cannot enter", func(t *testing.T) {
		cfg := config(t) // shortDir is 0700
		cfg.Path = openBinary(t)
		cfg.Credential = &host.Credential{UID: testUID, GID: testGID}
		_, err := host.Launch(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "cannot reach") || !strings.Contains(err.Error(), "mode 0700") {
			t.Fatalf("Launch = %v, want an error naming the closed folder", err)
		}
	})
	t.Run("a capability anka never grants", func(t *testing.T) {
		base := openDir(t)
		cfg := config(t)
		cfg.Path = openBinary(t)
		cfg.SocketDir, cfg.DataDir = filepath.Join(base, "sock"), filepath.Join(base, "data")
		cfg.Credential = &host.Credential{UID: testUID, GID: testGID, Caps: []string{"CAP_SYS_ADMIN"}}
		_, err := host.Launch(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
			t.Fatalf("Launch = %v, want a refusal naming the capability and the allowed ones", err)
		}
	})
}

func TestDescribeAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running a plugin as another user needs root")
	}
	cfg := config(t)
	cfg.Path = openBinary(t)
	cfg.Credential = &host.Credential{UID: testUID, GID: testGID}
	info, err := host.Describe(context.Background(), cfg)
	if err != nil || info.Name != "anka-net-test" {
		t.Fatalf("Describe as uid %d: %+v %v", testUID, info, err)
	}
}
