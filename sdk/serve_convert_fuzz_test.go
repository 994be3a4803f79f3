package sdk

import (
	"reflect"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	ankav1 "github.com/anka-net/anka/sdk/proto/v1"
)

// fromWire is one message the other side of the plugin wire sends: bytes
// decoded into protocol v1, then converted to the public type.
type fromWire struct {
	name string
	run  func(t *testing.T, b []byte)
}

// viaWire checks one converter pair on arbitrary bytes: whatever decodes
// converts without a panic, and the public value goes to the wire and
// back unchanged.
func viaWire[S any, P proto.Message](name string, newP func() P, to func(S) P, from func(P) S) fromWire {
	return fromWire{name: name, run: func(t *testing.T, b []byte) {
		p := newP()
		if proto.Unmarshal(b, p) != nil {
			return
		}
		v := from(p)
		out, err := proto.Marshal(to(v))
		if err != nil {
			t.Fatalf("%s: a decoded message does not encode again: %v", name, err)
		}
		p2 := newP()
		if err := proto.Unmarshal(out, p2); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if v2 := from(p2); !reflect.DeepEqual(v, v2) {
			t.Fatalf("%s: round trip changed\n%#v\nto\n%#v", name, v, v2)
		}
	}}
}

func fromWireCases() []fromWire {
	return []fromWire{
		viaWire("InfoResponse", func() *ankav1.InfoResponse { return new(ankav1.InfoResponse) }, infoResponseToPB, infoResponseFromPB),
		viaWire("ValidateRequest", func() *ankav1.ValidateRequest { return new(ankav1.ValidateRequest) }, validateRequestToPB, validateRequestFromPB),
		viaWire("AttachRequest", func() *ankav1.AttachRequest { return new(ankav1.AttachRequest) }, attachRequestToPB, attachRequestFromPB),
		viaWire("AttachResponse", func() *ankav1.AttachResponse { return new(ankav1.AttachResponse) }, attachResponseToPB, attachResponseFromPB),
		viaWire("DetachRequest", func() *ankav1.DetachRequest { return new(ankav1.DetachRequest) }, detachRequestToPB, detachRequestFromPB),
		viaWire("ReleaseRequest", func() *ankav1.ReleaseRequest { return new(ankav1.ReleaseRequest) }, releaseRequestToPB, releaseRequestFromPB),
		viaWire("StatusRequest", func() *ankav1.StatusRequest { return new(ankav1.StatusRequest) }, statusRequestToPB, statusRequestFromPB),
		viaWire("StatusResponse", func() *ankav1.StatusResponse { return new(ankav1.StatusResponse) }, statusResponseToPB, statusResponseFromPB),
		viaWire("SuspendRequest", func() *ankav1.SuspendRequest { return new(ankav1.SuspendRequest) }, suspendRequestToPB, suspendRequestFromPB),
		viaWire("ResumeRequest", func() *ankav1.ResumeRequest { return new(ankav1.ResumeRequest) }, resumeRequestToPB, resumeRequestFromPB),
		viaWire("PortForwardRequest", func() *ankav1.PortForwardRequest { return new(ankav1.PortForwardRequest) }, portForwardRequestToPB, portForwardRequestFromPB),
		viaWire("ListPortForwardsRequest", func() *ankav1.ListPortForwardsRequest { return new(ankav1.ListPortForwardsRequest) }, listPortForwardsRequestToPB, listPortForwardsRequestFromPB),
		viaWire("ListPortForwardsResponse", func() *ankav1.ListPortForwardsResponse { return new(ankav1.ListPortForwardsResponse) }, listPortForwardsResponseToPB, listPortForwardsResponseFromPB),
		viaWire("CaptureRequest", func() *ankav1.CaptureRequest { return new(ankav1.CaptureRequest) }, captureRequestToPB, captureRequestFromPB),
		viaWire("CaptureResponse", func() *ankav1.CaptureResponse { return new(ankav1.CaptureResponse) }, captureResponseToPB, captureResponseFromPB),
	}
}

// FuzzConvertFromWire decodes arbitrary bytes as every message of
// protocol v1, as the core and a plugin do with what the other sends, and
// checks the public value survives a trip over the wire and back.
func FuzzConvertFromWire(f *testing.F) {
	for _, msg := range []proto.Message{
		infoResponseToPB(&InfoResponse{Name: "anka-net-shared", Version: "1.2.0", ProtocolVersions: []int{1},
			Types: []TypeInfo{{Name: "shared", Description: "NAT", Capabilities: []string{CapTraffic, CapPortForward}, Endpoints: []EndpointKind{EndpointDgram}}}}),
		attachRequestToPB(&AttachRequest{VM: fullVM, Card: fullCard, Settings: map[string]string{"mtu": "9000"}, Endpoints: []EndpointKind{EndpointStream, EndpointTAP}, RunDir: "/run/anka/vm1", MTU: 1500}),
		attachResponseToPB(&AttachResponse{Endpoint: Endpoint{Kind: EndpointDgram, PluginPath: "/run/p.sock", VMPath: "/run/vm.sock", MAC: "02:00:00:00:00:01", LinkUp: true, MTU: 1500}}),
		statusResponseToPB(&StatusResponse{Attached: true, IP: "192.168.64.5", LeaseExpiry: lease, Path: "user-space switch",
			Counters: map[string]uint64{"rx_frames": 1 << 40}, Details: map[string]string{"gateway": "192.168.64.1"}}),
		portForwardRequestToPB(&PortForwardRequest{VM: fullVM, Type: "shared", Rule: fullRule}),
		listPortForwardsResponseToPB(&ListPortForwardsResponse{Rules: []PortForward{fullRule, fullRule}}),
		captureRequestToPB(&CaptureRequest{VM: fullVM, Type: "shared", Path: "/tmp/v.pcap", Snaplen: 96}),
	} {
		b, err := proto.Marshal(msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2]) // cut short
	}
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})                   // length beyond the input
	f.Add([]byte{0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80}) // unterminated varint
	f.Add([]byte{0x0a, 0x02, 0xc3, 0x28})                               // invalid UTF-8
	cases := fromWireCases()
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, c := range cases {
			c.run(t, b)
		}
	})
}

// FuzzConvertToWire builds public values from arbitrary fields, as a
// plugin's implementation returns them, and sends them over the wire. A
// value either encodes, and arrives unchanged, or is refused because a
// string is not UTF-8 (protocol buffers' rule); nothing panics.
func FuzzConvertToWire(f *testing.F) {
	f.Add("vm1", "6f1c0e4e", "shared", "192.168.64.5", "02:00:00:00:00:01", "segment", "a", int32(1500), int64(1_790_000_000_123_456_789), uint64(7))
	f.Add("", "", "", "", "", "", "", int32(-1), int64(-1), uint64(0))
	f.Add("\xc3\x28", "x", "bridge", "::1", "", "", "\xff", int32(1<<31-1), int64(-1<<63), uint64(1<<64-1))
	f.Fuzz(func(t *testing.T, name, id, typ, ip, mac, key, val string, n int32, ns int64, count uint64) {
		vm := VMRef{ID: id, Name: name}
		card := Card{Type: typ, Bridge: key, IP: ip, InternalMAC: mac, DynamicMAC: val, Options: map[string]string{key: val}}
		var lease time.Time
		if ns != 0 {
			lease = time.Unix(0, ns)
		}
		check := func(what string, msg proto.Message, back func([]byte) any, want any, strs ...string) {
			valid := true
			for _, s := range strs {
				valid = valid && utf8.ValidString(s)
			}
			b, err := proto.Marshal(msg)
			if err != nil {
				if valid {
					t.Fatalf("%s with valid strings refused: %v", what, err)
				}
				return
			}
			if !valid {
				t.Fatalf("%s: invalid UTF-8 went onto the wire", what)
			}
			if got := back(b); !reflect.DeepEqual(got, want) {
				t.Fatalf("%s: sent %+v\ngot %+v", what, want, got)
			}
		}
		ar := &AttachRequest{VM: vm, Card: card, Endpoints: []EndpointKind{EndpointKind(typ)}, RunDir: ip, MTU: int(n), Settings: map[string]string{key: val}}
		check("AttachRequest", attachRequestToPB(ar), func(b []byte) any {
			p := new(ankav1.AttachRequest)
			if err := proto.Unmarshal(b, p); err != nil {
				t.Fatal(err)
			}
			return attachRequestFromPB(p)
		}, ar, name, id, typ, ip, mac, key, val)
		sr := &StatusResponse{Attached: n%2 == 0, IP: ip, InternalMAC: mac, DynamicMAC: val, LeaseExpiry: lease, Path: typ,
			Counters: map[string]uint64{key: count}, Details: map[string]string{key: val}}
		check("StatusResponse", statusResponseToPB(sr), func(b []byte) any {
			p := new(ankav1.StatusResponse)
			if err := proto.Unmarshal(b, p); err != nil {
				t.Fatal(err)
			}
			got := statusResponseFromPB(p)
			if got.LeaseExpiry.Equal(sr.LeaseExpiry) {
				got.LeaseExpiry = sr.LeaseExpiry // same instant; the location is not sent
			}
			return got
		}, sr, ip, mac, val, typ, key)
		pf := &PortForwardRequest{VM: vm, Type: typ, Rule: PortForward{Name: name, Protocol: typ, HostIP: ip, HostPort: int(n), GuestPort: int(n / 2)}}
		check("PortForwardRequest", portForwardRequestToPB(pf), func(b []byte) any {
			p := new(ankav1.PortForwardRequest)
			if err := proto.Unmarshal(b, p); err != nil {
				t.Fatal(err)
			}
			return portForwardRequestFromPB(p)
		}, pf, name, id, typ, ip)
		ep := &AttachResponse{Endpoint: Endpoint{Kind: EndpointKind(typ), PluginPath: name, VMPath: id, TAP: key, MAC: mac, LinkUp: n > 0, MTU: int(n)}}
		check("AttachResponse", attachResponseToPB(ep), func(b []byte) any {
			p := new(ankav1.AttachResponse)
			if err := proto.Unmarshal(b, p); err != nil {
				t.Fatal(err)
			}
			return attachResponseFromPB(p)
		}, ep, typ, name, id, key, mac)
	})
}
