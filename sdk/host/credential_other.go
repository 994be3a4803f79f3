//go:build !linux

package host

import (
	"errors"
	"io/fs"
	"syscall"

	"github.com/hashicorp/go-plugin"
)

// Credential is the user a plugin runs as; only Linux supports it.
type Credential struct {
	Name     string
	UID, GID uint32
	Caps     []string
}

var errCredential = errors.New("running a plugin as another user needs Linux")

func (c *Credential) apply(*syscall.SysProcAttr) {}

func (c *Credential) prepare(string, string, string, string) error { return errCredential }

func (c *Credential) reach(string, fs.FileMode, string) error { return errCredential }

func (c *Credential) start(client *plugin.Client) (plugin.ClientProtocol, error) {
	if c == nil {
		return client.Client()
	}
	return nil, errCredential
}
