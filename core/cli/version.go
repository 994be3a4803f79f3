package cli

import (
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/cobra"
)

// Version and Commit are set at build time with -ldflags -X.
var (
	Version = "0.1.0-dev"
	Commit  = "unknown"
)

// NewCmdVersion builds `anka version`.
func NewCmdVersion(f *Factory, out *output) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print anka's version",
		Args:  exactArgs(),
		RunE: func(*cobra.Command, []string) error {
			body := map[string]string{"version": Version, "commit": Commit, "go": runtime.Version()}
			return out.ok(body, func(w io.Writer) {
				fmt.Fprintf(w, "anka %s (commit %s, %s)\n", Version, Commit, runtime.Version())
			})
		},
	}
}
