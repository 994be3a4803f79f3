package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/anka-net/anka/core/errs"
)

// CaptureOptions are the inputs of `anka capture NAME -w FILE`.
type CaptureOptions struct {
	f        *Factory
	out      *output
	Name     string
	File     string
	Duration time.Duration
}

// NewCmdCapture builds `anka capture NAME -w FILE [--duration D]`.
func NewCmdCapture(f *Factory, out *output, runF func(*CaptureOptions) error) *cobra.Command {
	opts := &CaptureOptions{f: f, out: out}
	cmd := &cobra.Command{
		Use:   "capture NAME -w FILE.pcap [--duration D]",
		Short: "Record a running VM's network traffic to a pcap file (until --duration or Ctrl-C)",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			if opts.File == "" {
				return invalidf("capture needs -w FILE: the pcap file to write (open it with Wireshark or tcpdump -r)")
			}
			if err := checkPath("-w", opts.File); err != nil {
				return err
			}
			if opts.Duration < 0 {
				return invalidf("--duration %s is negative: give how long to record, e.g. 10s (0 records until Ctrl-C)", opts.Duration)
			}
			if runF != nil {
				return runF(opts)
			}
			return captureRun(cmd, opts)
		},
	}
	cmd.Flags().StringVarP(&opts.File, "write", "w", "", "pcap file to write (replaced when it exists)")
	cmd.Flags().DurationVar(&opts.Duration, "duration", 0, "how long to record (0: until Ctrl-C)")
	return cmd
}

// checkPath refuses a path the kernel would refuse anyway, before anything
// is asked of the daemon: a NUL byte, a name over NAME_MAX, a path over
// PATH_MAX.
func checkPath(flag, p string) error {
	if i := strings.IndexByte(p, 0); i >= 0 {
		return invalidf("%s %q has a NUL byte at %d: give a plain file path", flag, p, i)
	}
	if len(p) >= 4096 {
		return invalidf("%s is %d bytes long: Linux paths are at most 4095 bytes", flag, len(p))
	}
	for _, part := range strings.Split(p, "/") {
		if len(part) > 255 {
			return invalidf("%s has a name of %d bytes (%.40s...): Linux file names are at most 255 bytes", flag, len(part), part)
		}
	}
	return nil
}

// captureRun records into a file beside the destination and renames it
// into place once the plugin has closed it, so FILE is never half-written.
func captureRun(cmd *cobra.Command, o *CaptureOptions) error {
	dest, err := filepath.Abs(o.File)
	if err != nil {
		return invalidf("-w %s: %v", o.File, err)
	}
	if fi, err := os.Stat(filepath.Dir(dest)); err != nil || !fi.IsDir() {
		return invalidf("-w %s: the folder %s does not exist: create it or write elsewhere", o.File, filepath.Dir(dest))
	}
	if fi, err := os.Stat(dest); err == nil && fi.IsDir() {
		return invalidf("-w %s is a folder: name a file, e.g. %s", o.File, filepath.Join(o.File, o.Name+".pcap"))
	}
	tmp := filepath.Join(filepath.Dir(dest), "."+filepath.Base(dest)+".anka-partial")
	sv, err := o.f.Service()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	os.Remove(tmp) // left by a capture that was killed
	if _, err := sv.Capture(ctx, o.Name, tmp, false); err != nil {
		os.Remove(tmp)
		return err
	}
	if o.Duration > 0 {
		fmt.Fprintf(o.f.IO.ErrOut, "capturing %s's traffic for %s...\n", o.Name, o.Duration)
	} else {
		fmt.Fprintf(o.f.IO.ErrOut, "capturing %s's traffic; Ctrl-C stops\n", o.Name)
	}
	var wait <-chan time.Time
	if o.Duration > 0 {
		wait = time.After(o.Duration)
	}
	select {
	case <-wait:
	case <-ctx.Done():
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := sv.Capture(stopCtx, o.Name, tmp, true)
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, dest); err != nil {
		os.Remove(tmp)
		return errs.Permissionf("moving the capture into %s: %v", dest, err)
	}
	body := map[string]any{"name": o.Name, "file": dest, "frames": res.Frames, "bytes": res.Bytes}
	return o.out.ok(body, func(w io.Writer) {
		fmt.Fprintf(w, "wrote %d frames (%d bytes) to %s\n", res.Frames, res.Bytes, dest)
	})
}
