package main

import (
	"testing"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/plugintest"
)

func TestConformance(t *testing.T) {
	c := plugintest.Config{
		Type:      typeName,
		ValidCard: func(sdk.VMRef) sdk.Card { return sdk.Card{Type: typeName} },
		InvalidCards: []sdk.Card{
			{Bridge: "eth0"},
			{IP: "192.168.64.9"},
			{Options: map[string]string{"segment": "a"}},
		},
		LinkDown: true,
	}
	plugintest.RunAll(t, c, func() sdk.NetworkPlugin { return New() })
}
