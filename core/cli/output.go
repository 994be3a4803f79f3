package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/anka-net/anka/core/errs"
)

// output prints results as a human table or in Anka's JSON envelope.
type output struct {
	f          *Factory
	json       bool
	reachedRun bool
}

type okEnvelope struct {
	Status  string `json:"status"`
	Body    any    `json:"body"`
	Message string `json:"message"`
}

type errEnvelope struct {
	Status  string `json:"status"`
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// ok prints body: as JSON when -j, otherwise through human.
func (o *output) ok(body any, human func(w io.Writer)) error {
	if o.json {
		return writeJSON(o.f.IO.Out, okEnvelope{Status: "OK", Body: body})
	}
	if human != nil {
		human(o.f.IO.Out)
	}
	return nil
}

// fail reports err and returns its exit code.
func (o *output) fail(err error) int {
	code := ExitCode(err)
	msg := printableMessage(err.Error())
	if o.json {
		_ = writeJSON(o.f.IO.Out, errEnvelope{Status: "ERROR", Code: code, Message: msg})
	} else {
		fmt.Fprintf(o.f.IO.ErrOut, "anka: %s\n", msg)
	}
	return code
}

// printableMessage escapes the control characters a hostile value may
// carry into an error (NUL, escape sequences), so a message never
// rewrites the user's terminal; newlines and tabs stay.
func printableMessage(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r == '\n' || r == '\t' || (r >= 0x20 && r != 0x7f) {
			b.WriteRune(r)
			continue
		}
		fmt.Fprintf(&b, `\x%02x`, r)
	}
	return b.String()
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes aligned columns; a header row first when given.
func table(w io.Writer, header []string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if header != nil {
		fmt.Fprintln(tw, strings.Join(header, "\t"))
	}
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

// dash shows an empty value as "-" so columns stay readable.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// cardIndex enforces Anka's single card: index 0 only.
func cardIndex(args []string) error {
	if len(args) == 0 || args[0] == "0" {
		return nil
	}
	return errs.Invalidf("network card index %q is not supported: anka VMs have one card, index 0 (as in Anka)", args[0])
}

func invalidf(format string, a ...any) error { return errs.Invalidf(format, a...) }
