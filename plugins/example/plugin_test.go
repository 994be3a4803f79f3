package main

import (
	"testing"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/plugintest"
)

func TestConformance(t *testing.T) {
	c := plugintest.Config{
		Type: typeName,
		ValidCard: func(sdk.VMRef) sdk.Card {
			return sdk.Card{Type: typeName, Options: map[string]string{"segment": "test-net"}}
		},
		InvalidCards: []sdk.Card{
			{Options: map[string]string{"segment": "Build_Net"}},
			{Options: map[string]string{"segment": ""}},
			{Options: map[string]string{"segment": "a-name-longer-than-thirty-two-chars"}},
			{Options: map[string]string{"segmnet": "typo"}},
			{Bridge: "eth0"},
			{IP: "192.168.64.9"},
		},
		PassesTraffic: true,
	}
	plugintest.RunAll(t, c, func() sdk.NetworkPlugin { return New() })
}
