package macpool

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/anka-net/anka/core/errs"
)

// openTest opens a pool in dir whose host identity is machineID.
func openTest(t *testing.T, dir, machineID string) *Pool {
	t.Helper()
	idPath := filepath.Join(dir, "machine-id")
	if err := os.WriteFile(idPath, []byte(machineID+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := Open(Options{Path: filepath.Join(dir, FileName), MachineIDPaths: []string{idPath}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustAcquire(t *testing.T, p *Pool, owner string) net.HardwareAddr {
	t.Helper()
	m, err := p.Acquire(owner)
	if err != nil {
		t.Fatalf("Acquire(%q): %v", owner, err)
	}
	return m
}

func index(m net.HardwareAddr) int { return int(m[4])<<8 | int(m[5]) }

func checkDynamic(t *testing.T, p *Pool, m net.HardwareAddr) {
	t.Helper()
	if len(m) != 6 || m[0]&0x01 != 0 || m[0]&0x02 == 0 {
		t.Errorf("%s is not a locally administered unicast MAC", m)
	}
	if !bytes.Equal(m[:4], p.Prefix()) {
		t.Errorf("%s does not start with the host prefix %s", m, p.Prefix())
	}
	if index(m) == 0 {
		t.Errorf("%s uses the reserved index 0", m)
	}
}

func TestAcquireUniqueAndIdempotent(t *testing.T) {
	p := openTest(t, t.TempDir(), "host-a")
	seen := map[string]string{}
	got := map[string]net.HardwareAddr{}
	for i := 0; i < 200; i++ {
		owner := fmt.Sprintf("vm-%03d", i)
		m := mustAcquire(t, p, owner)
		checkDynamic(t, p, m)
		if other, dup := seen[m.String()]; dup {
			t.Fatalf("%s handed to %s and %s", m, other, owner)
		}
		seen[m.String()] = owner
		got[owner] = m
		if index(m) != i+1 {
			t.Fatalf("%s got index %d, want the lowest free %d", owner, index(m), i+1)
		}
	}
	for owner, want := range got {
		if m := mustAcquire(t, p, owner); m.String() != want.String() {
			t.Fatalf("second Acquire(%s) = %s, first gave %s", owner, m, want)
		}
	}
	list, err := p.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(got) {
		t.Fatalf("List has %d owners, want %d", len(list), len(got))
	}
}

func TestAcquireEmptyOwner(t *testing.T) {
	p := openTest(t, t.TempDir(), "host-a")
	if _, err := p.Acquire(""); !errs.Is(err, errs.Invalid) {
		t.Fatalf("Acquire(\"\") = %v, want an invalid error", err)
	}
}

func TestReleaseThenReuseLowest(t *testing.T) {
	p := openTest(t, t.TempDir(), "host-a")
	if err := p.Release("nobody"); err != nil {
		t.Fatalf("Release on an empty pool: %v", err)
	}
	a := mustAcquire(t, p, "a")
	b := mustAcquire(t, p, "b")
	c := mustAcquire(t, p, "c")
	if err := p.Release("b"); err != nil {
		t.Fatal(err)
	}
	if err := p.Release("b"); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if _, ok, _ := p.Lookup("b"); ok {
		t.Fatal("b still holds a MAC after Release")
	}
	if d := mustAcquire(t, p, "d"); d.String() != b.String() {
		t.Fatalf("d got %s, want b's released %s", d, b)
	}
	for _, o := range []string{"a", "c"} {
		if err := p.Release(o); err != nil {
			t.Fatal(err)
		}
	}
	if e := mustAcquire(t, p, "e"); e.String() != a.String() {
		t.Fatalf("e got %s, want the lowest free %s", e, a)
	}
	if f := mustAcquire(t, p, "f"); f.String() != c.String() {
		t.Fatalf("f got %s, want %s", f, c)
	}
	if g := mustAcquire(t, p, "g"); index(g) != 4 {
		t.Fatalf("g got %s, want index 4", g)
	}
}

func TestPersistenceAcrossOpen(t *testing.T) {
	dir := t.TempDir()
	p1 := openTest(t, dir, "host-a")
	want := map[string]string{}
	for _, o := range []string{"x", "y", "z"} {
		want[o] = mustAcquire(t, p1, o).String()
	}
	p2 := openTest(t, dir, "host-a")
	if p2.Prefix().String() != p1.Prefix().String() {
		t.Fatalf("prefix changed across Open: %s vs %s", p1.Prefix(), p2.Prefix())
	}
	for o, w := range want {
		m, ok, err := p2.Lookup(o)
		if err != nil || !ok || m.String() != w {
			t.Fatalf("Lookup(%s) = %s, %v, %v; want %s", o, m, ok, err, w)
		}
	}
	if _, ok, err := p2.Lookup("unknown"); ok || err != nil {
		t.Fatalf("Lookup(unknown) = %v, %v", ok, err)
	}
	if m := mustAcquire(t, p2, "w"); index(m) != 4 {
		t.Fatalf("new owner after reopen got %s, want index 4", m)
	}
}

func TestPrefixPerHost(t *testing.T) {
	pa := openTest(t, t.TempDir(), "0123456789abcdef0123456789abcdef")
	pb := openTest(t, t.TempDir(), "fedcba9876543210fedcba9876543210")
	if pa.Prefix().String() == pb.Prefix().String() {
		t.Fatalf("two machine-ids share prefix %s", pa.Prefix())
	}
	for _, p := range []*Pool{pa, pb} {
		for i := 0; i < 20; i++ {
			checkDynamic(t, p, mustAcquire(t, p, fmt.Sprint(i)))
		}
	}
	// The forced bits hold for any identity, and distinct ids spread out.
	prefixes := map[[4]byte]bool{}
	for i := 0; i < 5000; i++ {
		pf := prefixFor(fmt.Sprintf("id-%d", i))
		if pf[0]&0x01 != 0 || pf[0]&0x02 == 0 {
			t.Fatalf("prefix %x is not locally administered unicast", pf)
		}
		prefixes[pf] = true
	}
	if len(prefixes) < 4990 {
		t.Fatalf("only %d distinct prefixes for 5000 ids", len(prefixes))
	}
}

func TestHostIdentitySources(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	etc := write("etc-machine-id", "aaaa\n")
	dbus := write("dbus-machine-id", "bbbb\n")
	empty := write("empty", "\n")
	uninit := write("uninit", "uninitialized\n")
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name  string
		paths []string
		want  string
	}{
		{"first wins", []string{etc, dbus}, "aaaa"},
		{"missing falls through", []string{missing, dbus}, "bbbb"},
		{"empty falls through", []string{empty, dbus}, "bbbb"},
		{"uninitialized falls through", []string{uninit, dbus}, "bbbb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Open(Options{Path: filepath.Join(t.TempDir(), FileName), MachineIDPaths: tt.paths})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := p.prefix, prefixFor(tt.want); got != want {
				t.Fatalf("prefix %x, want the one of %q (%x)", got, tt.want, want)
			}
		})
	}

	t.Run("unreadable is an error, not a silent fallback", func(t *testing.T) {
		_, err := Open(Options{Path: filepath.Join(t.TempDir(), FileName), MachineIDPaths: []string{dir, dbus}})
		if err == nil || !strings.Contains(err.Error(), dir) {
			t.Fatalf("Open with a directory as machine-id = %v, want an error naming it", err)
		}
	})

	t.Run("persisted random host-id", func(t *testing.T) {
		state := t.TempDir()
		opts := Options{Path: filepath.Join(state, FileName), MachineIDPaths: []string{missing, empty}}
		p1, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(state, HostIDFile))
		if err != nil {
			t.Fatalf("host-id not persisted: %v", err)
		}
		if id := strings.TrimSpace(string(b)); len(id) != 32 || p1.prefix != prefixFor(id) {
			t.Fatalf("host-id %q does not give the prefix in use", id)
		}
		p2, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		if p1.prefix != p2.prefix {
			t.Fatalf("prefix changed across Open: %x vs %x", p1.prefix, p2.prefix)
		}
		other, err := Open(Options{Path: filepath.Join(t.TempDir(), "sub", FileName), MachineIDPaths: []string{}})
		if err != nil {
			t.Fatal(err)
		}
		if other.prefix == p1.prefix {
			t.Fatal("two random host-ids gave one prefix")
		}
	})

	t.Run("explicit state dir", func(t *testing.T) {
		state := filepath.Join(t.TempDir(), "state")
		_, err := Open(Options{Path: filepath.Join(t.TempDir(), FileName), StateDir: state, MachineIDPaths: []string{}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(state, HostIDFile)); err != nil {
			t.Fatalf("host-id not in StateDir: %v", err)
		}
	})

	t.Run("concurrent first Open agrees", func(t *testing.T) {
		state := t.TempDir()
		var wg sync.WaitGroup
		prefixes := make([][4]byte, 10)
		for i := range prefixes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := Open(Options{Path: filepath.Join(state, FileName), MachineIDPaths: []string{}})
				if err != nil {
					t.Error(err)
					return
				}
				prefixes[i] = p.prefix
			}()
		}
		wg.Wait()
		for _, pf := range prefixes[1:] {
			if pf != prefixes[0] {
				t.Fatalf("concurrent Opens disagree: %x vs %x", pf, prefixes[0])
			}
		}
	})
}

func TestOpenNeedsPath(t *testing.T) {
	if _, err := Open(Options{}); !errs.Is(err, errs.Invalid) {
		t.Fatalf("Open without a path = %v", err)
	}
}

func TestConcurrentPools(t *testing.T) {
	dir := t.TempDir()
	openTest(t, dir, "host-a") // writes the machine-id file
	opts := Options{Path: filepath.Join(dir, FileName), MachineIDPaths: []string{filepath.Join(dir, "machine-id")}}
	shared, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 20, 10
	var mu sync.Mutex
	got := map[string]string{} // owner -> MAC
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := shared
			if w%2 == 0 { // half use their own handle, half share one
				own, err := Open(opts)
				if err != nil {
					t.Error(err)
					return
				}
				p = own
			}
			for i := 0; i < each; i++ {
				owner := fmt.Sprintf("w%d-%d", w, i)
				m, err := p.Acquire(owner)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got[owner] = m.String()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	checkAllDistinct(t, shared, got, workers*each)
}

// checkAllDistinct checks that got has n owners with n MACs, indexes 1..n
// (nothing skipped or lost), and that the file agrees.
func checkAllDistinct(t *testing.T, p *Pool, got map[string]string, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("%d owners, want %d", len(got), n)
	}
	byMAC := map[string]string{}
	for o, m := range got {
		if other, dup := byMAC[m]; dup {
			t.Fatalf("%s handed to %s and %s", m, other, o)
		}
		byMAC[m] = o
	}
	list, err := p.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != n {
		t.Fatalf("file has %d owners, want %d", len(list), n)
	}
	var idx []int
	for o, m := range list {
		if got[o] != m.String() {
			t.Fatalf("file says %s has %s, Acquire said %s", o, m, got[o])
		}
		idx = append(idx, index(m))
	}
	sort.Ints(idx)
	for i, x := range idx {
		if x != i+1 {
			t.Fatalf("indexes not dense from 1: %v", idx)
		}
	}
}

const (
	helperEnv   = "MACPOOL_TEST_HELPER"
	helperPath  = "MACPOOL_TEST_PATH"
	helperProc  = "MACPOOL_TEST_PROC"
	helperCount = 50
)

// TestHelperProcess is not a test: TestMultiProcess runs the test binary
// again with this test selected to get real separate processes.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper for TestMultiProcess")
	}
	path := os.Getenv(helperPath)
	p, err := Open(Options{Path: path, MachineIDPaths: []string{filepath.Join(filepath.Dir(path), "machine-id")}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < helperCount; i++ {
		owner := fmt.Sprintf("p%s-%d", os.Getenv(helperProc), i)
		m, err := p.Acquire(owner)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("alloc %s %s\n", owner, m)
	}
}

func TestMultiProcess(t *testing.T) {
	if os.Getenv(helperEnv) == "1" {
		t.Skip("running as a helper")
	}
	dir := t.TempDir()
	p := openTest(t, dir, "host-multi")
	const procs = 4
	cmds := make([]*exec.Cmd, procs)
	outs := make([]*bytes.Buffer, procs)
	for k := range cmds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), helperEnv+"=1", helperPath+"="+p.Path(), fmt.Sprintf("%s=%d", helperProc, k))
		outs[k] = &bytes.Buffer{}
		cmd.Stdout = outs[k]
		cmd.Stderr = outs[k]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[k] = cmd
	}
	got := map[string]string{}
	for k, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper %d: %v\n%s", k, err, outs[k])
		}
		sc := bufio.NewScanner(outs[k])
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 3 && f[0] == "alloc" {
				got[f[1]] = f[2]
			}
		}
	}
	checkAllDistinct(t, p, got, procs*helperCount)
}

func TestCorruptFile(t *testing.T) {
	tests := []struct {
		name, content string
	}{
		{"garbage", "{{{ not yaml"},
		{"empty", ""},
		{"no version", "owners:\n  a: 02:00:00:00:00:01\n"},
		{"version zero", "version: 0\nowners: {}\n"},
		{"unknown field", "version: 1\nowners: {}\nextra: 1\n"},
		{"bad mac", "version: 1\nowners:\n  a: not-a-mac\n"},
		{"8-byte mac", "version: 1\nowners:\n  a: 02:00:00:00:00:00:00:01\n"},
		{"multicast mac", "version: 1\nowners:\n  a: 03:00:00:00:00:01\n"},
		{"global mac", "version: 1\nowners:\n  a: 00:00:00:00:00:01\n"},
		{"shared mac", "version: 1\nowners:\n  a: 02:00:00:00:00:01\n  b: 02:00:00:00:00:01\n"},
		{"duplicate owner", "version: 1\nowners:\n  a: 02:00:00:00:00:01\n  a: 02:00:00:00:00:02\n"},
		{"empty owner", "version: 1\nowners:\n  \"\": 02:00:00:00:00:01\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := openTest(t, dir, "host-a")
			if err := os.WriteFile(p.Path(), []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, aerr := p.Acquire("new")
			_, _, lerr := p.Lookup("a")
			_, serr := p.List()
			rerr := p.Release("a")
			for _, err := range []error{aerr, lerr, serr, rerr} {
				if err == nil {
					t.Fatal("a corrupt pool was accepted")
				}
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("error %v is not ErrCorrupt", err)
				}
				if msg := err.Error(); !strings.Contains(msg, p.Path()) || !strings.Contains(msg, "restore") {
					t.Fatalf("message does not name the file and the remedy: %s", msg)
				}
			}
			if b, _ := os.ReadFile(p.Path()); string(b) != tt.content {
				t.Fatalf("corrupt file was rewritten to %q", b)
			}
		})
	}
}

func TestNewerVersionRefused(t *testing.T) {
	p := openTest(t, t.TempDir(), "host-a")
	if err := os.WriteFile(p.Path(), []byte("version: 2\nowners: {}\nfuture: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := p.Acquire("a")
	if err == nil || !strings.Contains(err.Error(), "upgrade anka") || !strings.Contains(err.Error(), p.Path()) {
		t.Fatalf("newer file = %v, want an upgrade hint naming the file", err)
	}
}

func TestExhaustion(t *testing.T) {
	p := openTest(t, t.TempDir(), "host-a")
	p.maxIndex = 3
	for _, o := range []string{"a", "b", "c"} {
		mustAcquire(t, p, o)
	}
	_, err := p.Acquire("d")
	if !errs.Is(err, errs.Conflict) || !strings.Contains(err.Error(), "all 3 dynamic MACs") {
		t.Fatalf("Acquire on a full pool = %v, want a conflict saying it is full", err)
	}
	if m, ok, _ := p.Lookup("d"); ok {
		t.Fatalf("a failed Acquire stored %s", m)
	}
	if m := mustAcquire(t, p, "b"); index(m) != 2 {
		t.Fatalf("existing owner lost its MAC on a full pool: %s", m)
	}
	if err := p.Release("b"); err != nil {
		t.Fatal(err)
	}
	if m := mustAcquire(t, p, "d"); index(m) != 2 {
		t.Fatalf("d got %s after a release, want index 2", m)
	}
}

func TestForeignPrefixEntriesKept(t *testing.T) {
	dir := t.TempDir()
	old := openTest(t, dir, "old-host")
	oldMAC := mustAcquire(t, old, "vm-old")
	p := openTest(t, dir, "new-host") // the machine-id changed
	if m := mustAcquire(t, p, "vm-old"); m.String() != oldMAC.String() {
		t.Fatalf("existing VM's MAC changed with the host id: %s -> %s", oldMAC, m)
	}
	if m := mustAcquire(t, p, "vm-new"); index(m) != 1 || !bytes.Equal(m[:4], p.Prefix()) {
		t.Fatalf("new VM got %s, want the new prefix at index 1", m)
	}
}

func TestPrune(t *testing.T) {
	p := openTest(t, t.TempDir(), "host-a")
	for _, o := range []string{"a", "b", "c", "d"} {
		mustAcquire(t, p, o)
	}
	live := map[string]bool{"b": true, "d": true}
	removed, err := p.Prune(func(o string) bool { return live[o] })
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(removed, ",") != "a,c" {
		t.Fatalf("Prune removed %v, want [a c]", removed)
	}
	list, _ := p.List()
	if len(list) != 2 || list["b"] == nil || list["d"] == nil {
		t.Fatalf("after Prune: %v", list)
	}
}

func TestFileFormat(t *testing.T) {
	dir := t.TempDir()
	p := openTest(t, dir, "host-a")
	mustAcquire(t, p, "b6f1c0de-0000-4000-8000-000000000002")
	mustAcquire(t, p, "a0a0a0a0-0000-4000-8000-000000000001")
	b, err := os.ReadFile(p.Path())
	if err != nil {
		t.Fatal(err)
	}
	pf := p.Prefix().String()
	want := fileHeader + "version: 1\nowners:\n" +
		"  a0a0a0a0-0000-4000-8000-000000000001: " + pf + ":00:02\n" +
		"  b6f1c0de-0000-4000-8000-000000000002: " + pf + ":00:01\n"
	if string(b) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", b, want)
	}
	// Closed to the plugin user, who may pass through the state dir.
	st, _ := os.Stat(p.Path())
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	// A hand-written file in the documented format is read back.
	hand := "version: 1\nowners:\n  vm1: 02:00:00:00:00:07\n"
	if err := os.WriteFile(p.Path(), []byte(hand), 0o644); err != nil {
		t.Fatal(err)
	}
	if m, ok, err := p.Lookup("vm1"); err != nil || !ok || m.String() != "02:00:00:00:00:07" {
		t.Fatalf("Lookup on a hand-written file = %s, %v, %v", m, ok, err)
	}
}

func TestParseStaticMAC(t *testing.T) {
	tests := []struct {
		in, want, errHas string
	}{
		{in: "52:54:00:12:34:56", want: "52:54:00:12:34:56"},
		{in: "52-54-00-AB-cd-EF", want: "52:54:00:ab:cd:ef"},
		{in: " 00:1c:42:00:00:08 ", want: "00:1c:42:00:00:08"}, // globally administered is fine
		{in: "02:00:00:00:00:00", want: "02:00:00:00:00:00"},
		{in: "", errHas: "six two-digit hex bytes"},
		{in: "auto", errHas: "e.g. 52:54:00:12:34:56"},
		{in: "52:54:00:12:34", errHas: "six two-digit hex bytes"},
		{in: "52:54:00:12:34:56:78", errHas: "six two-digit hex bytes"},
		{in: "52:54-00:12:34:56", errHas: "separated by ':' or '-'"},
		{in: "5254.0012.3456", errHas: "six two-digit hex bytes"},
		{in: "525400123456", errHas: "six two-digit hex bytes"},
		{in: "52:54:00:12:34:5g", errHas: "hex"},
		{in: "5:54:00:12:34:567", errHas: "hex"},
		{in: "01:00:5e:00:00:01", errHas: "multicast"},
		{in: "33-33-00-00-00-01", errHas: "bit 0x01"},
		{in: "ff:ff:ff:ff:ff:ff", errHas: "broadcast"},
		{in: "00:00:00:00:00:00", errHas: "all zeros"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseStaticMAC(tt.in)
			if tt.errHas == "" {
				if err != nil || got.String() != tt.want {
					t.Fatalf("ParseStaticMAC(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseStaticMAC(%q) = %v, want an error", tt.in, got)
			}
			if !errs.Is(err, errs.Invalid) || !strings.Contains(err.Error(), tt.errHas) || !strings.Contains(err.Error(), "e.g.") {
				t.Fatalf("ParseStaticMAC(%q) error %q: want invalid, mentioning %q and an example", tt.in, err, tt.errHas)
			}
		})
	}
}

func FuzzParseStaticMAC(f *testing.F) {
	for _, s := range []string{"52:54:00:12:34:56", "aa-bb-cc-dd-ee-ff", "ff:ff:ff:ff:ff:ff", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseStaticMAC(s)
		if err != nil {
			return
		}
		if len(m) != 6 || m[0]&0x01 != 0 || isZero(m) {
			t.Fatalf("ParseStaticMAC(%q) accepted %s", s, m)
		}
		if again, err := ParseStaticMAC(m.String()); err != nil || again.String() != m.String() {
			t.Fatalf("round trip of %s: %v, %v", m, again, err)
		}
	})
}
