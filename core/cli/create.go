package cli

import (
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/vm"
)

// CreateOptions are the inputs of `anka create`.
type CreateOptions struct {
	f                            *Factory
	out                          *output
	Name                         string
	Kernel, Initrd, Append, Disk string
	CPU                          int
	RAM                          string
	Runtime                      string
	Endpoints                    []string
}

// NewCmdCreate builds `anka create NAME (--kernel PATH ... | --disk PATH)`.
func NewCmdCreate(f *Factory, out *output, runF func(*CreateOptions) error) *cobra.Command {
	opts := &CreateOptions{f: f, out: out}
	cmd := &cobra.Command{
		Use:   "create NAME (--kernel PATH [--initrd PATH] [--append ARGS] | --disk PATH | --runtime external)",
		Short: "Create a VM (stopped, with network card 0 of type shared)",
		Example: `  sudo anka create vm1 --kernel vmlinuz --initrd guest.img
  sudo anka create vm2 --disk debian.qcow2 --cpu 2 --ram 2G`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			if runF != nil {
				return runF(opts)
			}
			return createRun(cmd, opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Kernel, "kernel", "", "Linux kernel to boot (direct kernel boot)")
	fl.StringVar(&opts.Initrd, "initrd", "", "initramfs for --kernel")
	fl.StringVar(&opts.Append, "append", "", "kernel command line for --kernel (console=ttyS0 is added)")
	fl.StringVar(&opts.Disk, "disk", "", "disk image to boot (qcow2 or raw)")
	fl.IntVar(&opts.CPU, "cpu", 1, "number of virtual CPUs")
	fl.StringVar(&opts.RAM, "ram", "512M", "memory size, e.g. 512M or 2G")
	fl.StringVar(&opts.Runtime, "runtime", "qemu", "qemu, or external: a hypervisor anka does not launch connects to the endpoint `anka start` prints")
	fl.StringSliceVar(&opts.Endpoints, "endpoint", nil, "with --runtime external: the endpoint kinds its hypervisor connects to, preferred first (dgram, stream, vhost-user, tap; default dgram,stream)")
	return cmd
}

func createRun(cmd *cobra.Command, o *CreateOptions) error {
	if err := vm.ValidateName("VM", o.Name); err != nil {
		return err
	}
	if o.Runtime != vm.RuntimeQEMU && o.Runtime != vm.RuntimeExternal {
		return errs.Invalidf("--runtime %q is not known: use qemu or external", o.Runtime)
	}
	if cmd.Flags().Changed("endpoint") && len(o.Endpoints) == 0 {
		return errs.Invalidf("--endpoint is empty: name the endpoint kinds the hypervisor connects to (dgram, stream, vhost-user, tap), or leave --endpoint out")
	}
	ram, err := vm.ParseRAM(o.RAM)
	if err != nil {
		return err
	}
	paths := map[string]*string{"--kernel": &o.Kernel, "--initrd": &o.Initrd, "--disk": &o.Disk}
	for _, flag := range []string{"--kernel", "--initrd", "--disk"} {
		p := paths[flag]
		if *p == "" {
			if cmd.Flags().Changed(flag[2:]) {
				return errs.Invalidf("%s is empty: give the path of an existing file, or leave %s out", flag, flag)
			}
			continue
		}
		if err := checkPath(flag, *p); err != nil {
			return err
		}
		abs, err := regularFile(flag, *p)
		if err != nil {
			return err
		}
		*p = abs
	}
	m, err := o.f.Manager()
	if err != nil {
		return err
	}
	v := &vm.VM{
		Name: o.Name,
		Runtime: vm.RuntimeSpec{
			Kind:   runtimeKind(o.Runtime),
			Kernel: o.Kernel, Initrd: o.Initrd, Append: o.Append, Disk: o.Disk,
			CPU: o.CPU, RAMMiB: ram, Endpoints: o.Endpoints,
		},
		NetworkCard: &vm.NetworkCard{Type: "shared"},
	}
	if err := m.Create(cmd.Context(), v); err != nil {
		return err
	}
	st, err := m.Get(cmd.Context(), o.Name)
	if err != nil {
		return err
	}
	return o.out.ok(showBody(m, st), func(w io.Writer) { printShow(w, m, st) })
}

// regularFile resolves a path given on the command line, so the VM keeps
// working when anka later runs from another folder.
func regularFile(flag, p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", errs.Invalidf("%s %q: %v", flag, p, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", errs.Invalidf("%s %s: no such file: give the path of an existing file", flag, p)
	}
	if !st.Mode().IsRegular() {
		return "", errs.Invalidf("%s %s is not a regular file", flag, p)
	}
	return abs, nil
}

// runtimeKind stores the default runtime as "" so vm.yaml stays short.
func runtimeKind(s string) string {
	if s == vm.RuntimeQEMU {
		return ""
	}
	return s
}
