package main

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"os"
	osexec "os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/anka-net/anka/plugins/shared/routed/routedtest"
	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// TestQEMUGuestOnTAP: a real QEMU guest on the TAP the plugin hands out
// (plain tap netdev, vhost-net when the host has it; software emulation
// here): it gets its lease from the plugin's DHCP server through the
// bridge, Status reports it on the kernel bridge, the host fetches its
// page, and it and a socket guest on the user-space switch reach each
// other.
func TestQEMUGuestOnTAP(t *testing.T) {
	routedtest.Skip(t)
	if testing.Short() {
		t.Skip("boots a VM")
	}
	qemu, err := osexec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("needs qemu-system-x86_64")
	}
	guest := frameiotest.GuestDir(t)
	p := start(t, t.TempDir(), nil)
	gs, _ := routedtest.AttachWith(t, p, vmRef("sock"), sdk.Card{Type: "shared", DynamicMAC: dyn(2)}, routedtest.Sockets)
	sip := gs.DHCP(t).IP

	vm := vmRef("q1")
	resp, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: vm, Card: sdk.Card{Type: "shared", DynamicMAC: dyn(1)},
		Endpoints: routedtest.QEMU, RunDir: frameiotest.TempDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	ep := resp.Endpoint
	if ep.Kind != sdk.EndpointTAP {
		t.Fatalf("endpoint %+v; want a TAP", ep)
	}
	netdev := "tap,id=n0,ifname=" + ep.TAP + ",script=no,downscript=no"
	if f, err := os.OpenFile("/dev/vhost-net", os.O_RDWR, 0); err == nil {
		f.Close()
		netdev += ",vhost=on"
	}
	console := filepath.Join(t.TempDir(), "console.log")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := osexec.CommandContext(ctx, qemu, "-accel", "tcg", "-cpu", "max", "-m", "256",
		"-kernel", filepath.Join(guest, "vmlinuz"), "-initrd", filepath.Join(guest, "initrd.img"),
		"-append", "console=ttyS0 anka.hostname=q1 anka.ipv6=0 anka.ping="+sip.String(),
		"-display", "none", "-vga", "none", "-serial", "file:"+console, "-no-reboot",
		"-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,mac="+ep.MAC)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("qemu %s", strings.Join(cmd.Args[1:], " "))
	defer func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("qemu output:\n%s\nconsole:\n%s", out.String(), b)
		}
	}()
	line := func(re *regexp.Regexp, within time.Duration) string {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			b, _ := os.ReadFile(console)
			if m := re.FindSubmatch(b); m != nil {
				return string(m[1])
			}
			if time.Now().After(deadline) {
				t.Fatalf("the guest's console never said %v", re)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	ip := line(regexp.MustCompile(`anka-guest: ip (\S+)\r?\n`), 90*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := status(t, p, vm)
		if st.IP == ip {
			if !strings.HasPrefix(st.Path, "kernel bridge (TAP "+ep.TAP) {
				t.Errorf("Status path %q", st.Path)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Status IP %q; the guest took %s", st.IP, ip)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	var page string
	for deadline := time.Now().Add(30 * time.Second); ; {
		if r, err := c.Get("http://" + ip + "/"); err == nil {
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			if page = string(b); strings.Contains(page, "anka-guest q1") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the host got no page from the guest at %s: %q", ip, page)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := line(regexp.MustCompile(`anka-guest: ping `+regexp.QuoteMeta(sip.String())+` (\S+)\r?\n`), 90*time.Second); got != "ok" {
		t.Errorf("the QEMU guest -> the socket guest: %s", got)
	}
	if !gs.Reaches(netip.MustParseAddr(ip), 10*time.Second) {
		t.Error("the socket guest cannot ping the QEMU guest")
	}
	cancel()
	cmd.Wait()
	if _, err := p.Detach(t.Context(), &sdk.DetachRequest{VM: vm}); err != nil {
		t.Fatal(err)
	}
	if routedtest.LinkExists(ep.TAP) {
		t.Error("Detach left the QEMU guest's TAP")
	}
}
