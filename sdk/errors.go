package sdk

import (
	"errors"
	"fmt"
)

// Code is a stable error class that crosses the wire; the core maps it to
// its exit codes. Never renumber or rename one.
type Code string

const (
	CodeInvalid     Code = "invalid"     // the request or card is wrong
	CodeNotFound    Code = "not-found"   // unknown VM, rule or type
	CodeConflict    Code = "conflict"    // clashes with existing state
	CodeUnavailable Code = "unavailable" // a resource is missing or busy
	CodeUnsupported Code = "unsupported" // the type cannot do this
	CodeInternal    Code = "internal"    // a bug or unexpected failure
)

// Error is an error with a code and a sentence a person can act on, e.g.
// "interface wlan0 is Wi-Fi; bridge mode needs an Ethernet interface".
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string { return e.Message }

// Errorf builds an *Error.
func Errorf(code Code, format string, a ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, a...)}
}

// CodeOf returns err's code: the first *Error in its chain, else internal.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}
