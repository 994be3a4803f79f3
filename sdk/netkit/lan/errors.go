package lan

import (
	"errors"
	"fmt"
)

// Kind classifies an error so a plugin can give it its protocol's code
// (sdk.CodeInvalid, ...) without lan knowing the protocol.
type Kind int

const (
	// Internal: a bug or an unexpected failure (a disk that refuses a write).
	Internal Kind = iota
	// Invalid: the request is wrong (an address outside the subnet).
	Invalid
	// Conflict: it clashes with another VM (an address or MAC taken).
	Conflict
	// Unavailable: the network is closed, or a socket cannot be made.
	Unavailable
	// Unsupported: the runtime offered no endpoint kind the LAN hands out.
	Unsupported
)

func (k Kind) String() string {
	switch k {
	case Invalid:
		return "invalid"
	case Conflict:
		return "conflict"
	case Unavailable:
		return "unavailable"
	case Unsupported:
		return "unsupported"
	}
	return "internal"
}

// Error is an error of a Kind with a sentence a person can act on.
type Error struct {
	Kind Kind
	Msg  string
	Err  error // the cause, if any
}

func (e *Error) Error() string { return e.Msg }

func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the Kind of the first *Error in err's chain, else Internal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Internal
}

func errorf(k Kind, format string, a ...any) error {
	err := fmt.Errorf(format, a...)
	return &Error{Kind: k, Msg: err.Error(), Err: errors.Unwrap(err)}
}
