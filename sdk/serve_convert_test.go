package sdk

import (
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

var (
	fullVM   = VMRef{ID: "6f1c0e4e-5c1b-4a4e-9a57-0d1b0c7d2f10", Name: "vm1"}
	fullCard = Card{
		Type: "shared", Bridge: "eth0", IP: "192.168.64.5",
		InternalMAC: "02:00:00:00:00:01", DynamicMAC: "0e:aa:bb:cc:dd:ee",
		Options: map[string]string{"segment": "a", "mtu": "9000"},
	}
	fullRule = PortForward{Name: "ssh", Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 2222, GuestPort: 22}
	lease    = time.Unix(1_790_000_000, 123_456_789)
)

// roundTrip converts v to protocol v1 and back; every field must survive.
type roundTrip struct {
	name string
	run  func(t *testing.T) (sent, got any, msg proto.Message)
}

func rt[S any, P proto.Message](name string, v S, to func(S) P, from func(P) S) roundTrip {
	return roundTrip{name: name, run: func(t *testing.T) (any, any, proto.Message) {
		p := to(v)
		// Through the bytes too, as the wire does.
		b, err := proto.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		p2 := p.ProtoReflect().New().Interface().(P)
		if err := proto.Unmarshal(b, p2); err != nil {
			t.Fatal(err)
		}
		return v, from(p2), p
	}}
}

func fullCases() []roundTrip {
	return []roundTrip{
		rt("VMRef", fullVM, vmRefToPB, vmRefFromPB),
		rt("Card", fullCard, cardToPB, cardFromPB),
		rt("InfoResponse", &InfoResponse{
			Name: "anka-net-shared", Version: "1.2.0", ProtocolVersions: []int{1, 2},
			Types: []TypeInfo{{Name: "shared", Description: "NAT", Capabilities: []string{CapTraffic, CapPortForward},
				Endpoints: []EndpointKind{EndpointDgram, EndpointTAP}}},
			Privileges: []string{PrivNetAdmin, PrivNetBindService}, Sysctls: []string{SysctlIPForward},
			Runtime: &ProcessRuntime{Goroutines: 42, HeapAlloc: 3 << 20},
		}, infoResponseToPB, infoResponseFromPB),
		rt("ValidateRequest", &ValidateRequest{VM: fullVM, Card: fullCard, Settings: map[string]string{"bridge_name": "eth1"}}, validateRequestToPB, validateRequestFromPB),
		rt("AttachRequest", &AttachRequest{VM: fullVM, Card: fullCard, Settings: map[string]string{"mtu": "9000", "bridge_name": "eth1"}, Endpoints: []EndpointKind{EndpointStream},
			RunDir: "/run/anka/vm1", MTU: 1500}, attachRequestToPB, attachRequestFromPB),
		rt("CaptureRequest", &CaptureRequest{VM: fullVM, Type: "shared", Path: "/tmp/v.pcap", Snaplen: 96}, captureRequestToPB, captureRequestFromPB),
		rt("CaptureResponse", &CaptureResponse{Frames: 7, Bytes: 900}, captureResponseToPB, captureResponseFromPB),
		rt("Endpoint", Endpoint{Kind: EndpointDgram, PluginPath: "/run/p.sock", VMPath: "/run/vm.sock", TAP: "tap0",
			MAC: "02:00:00:00:00:01", LinkUp: true, MTU: 1500}, endpointToPB, endpointFromPB),
		rt("AttachResponse", &AttachResponse{Endpoint: Endpoint{Kind: EndpointTAP, PluginPath: "p", VMPath: "v", TAP: "t",
			MAC: "m", LinkUp: true, MTU: 9000}}, attachResponseToPB, attachResponseFromPB),
		rt("DetachRequest", &DetachRequest{VM: fullVM, Type: "shared"}, detachRequestToPB, detachRequestFromPB),
		rt("ReleaseRequest", &ReleaseRequest{VM: fullVM, Type: "shared"}, releaseRequestToPB, releaseRequestFromPB),
		rt("StatusRequest", &StatusRequest{VM: fullVM, Type: "shared"}, statusRequestToPB, statusRequestFromPB),
		rt("StatusResponse", &StatusResponse{
			Attached: true, IP: "192.168.64.5", InternalMAC: "02:00:00:00:00:01", DynamicMAC: "0e:aa:bb:cc:dd:ee",
			LeaseExpiry: lease, Path: "user-space switch",
			Counters: map[string]uint64{"rx_frames": 1 << 40, "tx_frames": 7},
			Details:  map[string]string{"gateway": "192.168.64.1"},
		}, statusResponseToPB, statusResponseFromPB),
		rt("SuspendRequest", &SuspendRequest{VM: fullVM, Type: "shared"}, suspendRequestToPB, suspendRequestFromPB),
		rt("ResumeRequest", &ResumeRequest{VM: fullVM, Type: "shared"}, resumeRequestToPB, resumeRequestFromPB),
		rt("PortForward", fullRule, portForwardToPB, portForwardFromPB),
		rt("PortForwardRequest", &PortForwardRequest{VM: fullVM, Type: "shared", Rule: fullRule},
			portForwardRequestToPB, portForwardRequestFromPB),
		rt("ListPortForwardsRequest", &ListPortForwardsRequest{VM: fullVM, Type: "shared"},
			listPortForwardsRequestToPB, listPortForwardsRequestFromPB),
		rt("ListPortForwardsResponse", &ListPortForwardsResponse{Rules: []PortForward{fullRule, {Name: "dns", Protocol: "udp",
			HostIP: "0.0.0.0", HostPort: 5353, GuestPort: 53}}}, listPortForwardsResponseToPB, listPortForwardsResponseFromPB),
	}
}

func TestConvertRoundTripEveryField(t *testing.T) {
	for _, c := range fullCases() {
		t.Run(c.name, func(t *testing.T) {
			sent, got, msg := c.run(t)
			// A field added to a type but not to its fixture (or to the
			// converter) must fail here.
			if path := zeroField(reflect.ValueOf(sent), c.name); path != "" {
				t.Fatalf("fixture leaves %s unset: set every field", path)
			}
			if path := unsetProtoField(msg.ProtoReflect(), c.name); path != "" {
				t.Fatalf("converter leaves %s unset on the wire", path)
			}
			if !reflect.DeepEqual(sent, got) {
				t.Errorf("round trip changed the value:\nsent %+v\ngot  %+v", sent, got)
			}
		})
	}
}

func TestConvertZeroValues(t *testing.T) {
	cases := []roundTrip{
		rt("Card nil options", Card{Type: "shared"}, cardToPB, cardFromPB),
		rt("StatusResponse zero", &StatusResponse{}, statusResponseToPB, statusResponseFromPB),
		rt("InfoResponse zero", &InfoResponse{}, infoResponseToPB, infoResponseFromPB),
		rt("AttachRequest zero", &AttachRequest{}, attachRequestToPB, attachRequestFromPB),
		rt("ListPortForwardsResponse zero", &ListPortForwardsResponse{}, listPortForwardsResponseToPB, listPortForwardsResponseFromPB),
		rt("TypeInfo without lists", &InfoResponse{Types: []TypeInfo{{Name: "x"}}}, infoResponseToPB, infoResponseFromPB),
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sent, got, _ := c.run(t)
			if !reflect.DeepEqual(sent, got) {
				t.Errorf("round trip changed the value:\nsent %+v\ngot  %+v", sent, got)
			}
		})
	}
}

func TestConvertEmptyBecomesNil(t *testing.T) {
	got := cardFromPB(cardToPB(Card{Options: map[string]string{}}))
	if got.Options != nil {
		t.Errorf("empty options arrive as %#v, want nil", got.Options)
	}
	st := statusResponseFromPB(statusResponseToPB(&StatusResponse{Counters: map[string]uint64{}, Details: map[string]string{}}))
	if st.Counters != nil || st.Details != nil {
		t.Errorf("empty maps arrive as %#v, %#v; want nil", st.Counters, st.Details)
	}
	ar := attachRequestFromPB(attachRequestToPB(&AttachRequest{Endpoints: []EndpointKind{}}))
	if ar.Endpoints != nil {
		t.Errorf("empty endpoints arrive as %#v, want nil", ar.Endpoints)
	}
}

func TestConvertTime(t *testing.T) {
	now := time.Now() // carries a monotonic reading and a location
	cases := []struct {
		name string
		in   time.Time
	}{
		{"zero", time.Time{}},
		{"now", now},
		{"utc", time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)},
		{"before 1970", time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := statusResponseFromPB(statusResponseToPB(&StatusResponse{LeaseExpiry: c.in})).LeaseExpiry
			if !got.Equal(c.in) || got.IsZero() != c.in.IsZero() {
				t.Errorf("lease %v arrives as %v", c.in, got)
			}
		})
	}
	if n := timeToPB(time.Time{}); n != 0 {
		t.Errorf("zero time goes out as %d, want 0", n)
	}
}

func TestConvertNilMessages(t *testing.T) {
	// A peer may leave any sub-message out; getters make that the zero value.
	if got := attachRequestFromPB(nil); !reflect.DeepEqual(got, &AttachRequest{}) {
		t.Errorf("nil AttachRequest: %+v", got)
	}
	if got := portForwardRequestFromPB(nil); !reflect.DeepEqual(got, &PortForwardRequest{}) {
		t.Errorf("nil PortForwardRequest: %+v", got)
	}
	if got := statusResponseFromPB(nil); !reflect.DeepEqual(got, &StatusResponse{}) {
		t.Errorf("nil StatusResponse: %+v", got)
	}
}

// zeroField returns the path of the first zero field (or empty slice or
// map element) in v, or "".
func zeroField(v reflect.Value, path string) string {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return path
		}
		return zeroField(v.Elem(), path)
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			if v.Interface().(time.Time).IsZero() {
				return path
			}
			return ""
		}
		for i := range v.NumField() {
			if p := zeroField(v.Field(i), path+"."+v.Type().Field(i).Name); p != "" {
				return p
			}
		}
		return ""
	case reflect.Slice, reflect.Map:
		if v.Len() == 0 {
			return path
		}
		if v.Kind() == reflect.Slice {
			for i := range v.Len() {
				if p := zeroField(v.Index(i), path+"[]"); p != "" {
					return p
				}
			}
		}
		return ""
	}
	if v.IsZero() {
		return path
	}
	return ""
}

// unsetProtoField returns the first field of m (recursively) that is not
// populated, or "".
func unsetProtoField(m protoreflect.Message, path string) string {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		p := path + "." + string(fd.Name())
		if !m.Has(fd) {
			return p
		}
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := m.Get(fd).List()
			for j := range l.Len() {
				if q := unsetProtoField(l.Get(j).Message(), p+"[]"); q != "" {
					return q
				}
			}
		case fd.Message() != nil && !fd.IsMap():
			if q := unsetProtoField(m.Get(fd).Message(), p); q != "" {
				return q
			}
		}
	}
	return ""
}
