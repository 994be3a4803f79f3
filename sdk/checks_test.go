package sdk

import "testing"

func TestCardChecks(t *testing.T) {
	for _, tc := range []struct {
		card Card
		ok   bool
	}{
		{Card{}, true},
		{Card{DynamicMAC: "02:00:00:00:00:01", InternalMAC: "52:54:00:12:34:56"}, true},
		{Card{DynamicMAC: "zz"}, false},
		{Card{InternalMAC: "01:00:5e:00:00:01"}, false},
		{Card{DynamicMAC: "00:00:00:00:00:00"}, false},
		{Card{DynamicMAC: "02:00:00:00:00:01:02:03"}, false},
	} {
		if err := tc.card.CheckMACs(); (err == nil) != tc.ok || (err != nil && CodeOf(err) != CodeInvalid) {
			t.Errorf("%+v: %v", tc.card, err)
		}
	}
	if (Card{DynamicMAC: "d", InternalMAC: "i"}).GuestMAC() != "i" || (Card{DynamicMAC: "d"}).GuestMAC() != "d" {
		t.Fatal("GuestMAC")
	}
}

func TestCheckDgram(t *testing.T) {
	ok := AttachRequest{Card: Card{DynamicMAC: "02:00:00:00:00:01"}, RunDir: "/run/x"}
	if mtu, err := ok.CheckDgram("t"); err != nil || mtu != DefaultMTU {
		t.Fatalf("%d %v", mtu, err)
	}
	for _, tc := range []struct {
		mod  func(*AttachRequest)
		code Code
	}{
		{func(r *AttachRequest) { r.Card.DynamicMAC = "" }, CodeInvalid},
		{func(r *AttachRequest) { r.Endpoints = []EndpointKind{EndpointTAP} }, CodeUnsupported},
		{func(r *AttachRequest) { r.RunDir = "" }, CodeInvalid},
		{func(r *AttachRequest) { r.MTU = 70000 }, CodeInvalid},
	} {
		r := ok
		tc.mod(&r)
		if _, err := r.CheckDgram("t"); CodeOf(err) != tc.code {
			t.Errorf("%+v: %v, want %s", r, err, tc.code)
		}
	}
}
