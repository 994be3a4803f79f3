// Package errs gives core errors a kind, so the CLI maps every failure to an
// exit code and a JSON error code in one place, and a sentence a person can
// act on reaches the user unchanged.
package errs

import (
	"errors"
	"fmt"
)

// Kind classifies an error for exit codes; the numbers are part of the CLI
// contract (see docs/cli.md) and must not be renumbered.
type Kind int

const (
	// Internal is anything unexpected: a bug or an unclassified system error.
	Internal Kind = 1
	// Invalid is bad input: a malformed value, an unknown key or type.
	Invalid Kind = 2
	// NotFound names something that does not exist (a VM, a rule, a key).
	NotFound Kind = 3
	// Conflict is a clash with existing state (a name, a host port, a MAC).
	Conflict Kind = 4
	// State is an illegal lifecycle transition (suspend a stopped VM).
	State Kind = 5
	// Permission means the caller lacks the rights (anka runs as root).
	Permission Kind = 6
	// Unavailable means a needed component is missing (QEMU, a plugin).
	Unavailable Kind = 7
)

func (k Kind) String() string {
	switch k {
	case Invalid:
		return "invalid"
	case NotFound:
		return "not found"
	case Conflict:
		return "conflict"
	case State:
		return "state"
	case Permission:
		return "permission"
	case Unavailable:
		return "unavailable"
	default:
		return "internal"
	}
}

// Error is an error with a kind. Msg is the whole sentence shown to the
// user; Err, when set, is the cause kept for errors.Is/As.
type Error struct {
	Kind Kind
	Msg  string
	Err  error
}

func (e *Error) Error() string { return e.Msg }

func (e *Error) Unwrap() error { return e.Err }

func newf(k Kind, format string, a ...any) *Error {
	err := fmt.Errorf(format, a...)
	return &Error{Kind: k, Msg: err.Error(), Err: errors.Unwrap(err)}
}

// Invalidf reports bad input; %w keeps a cause.
func Invalidf(format string, a ...any) error { return newf(Invalid, format, a...) }

// NotFoundf reports a missing object.
func NotFoundf(format string, a ...any) error { return newf(NotFound, format, a...) }

// Conflictf reports a clash with existing state.
func Conflictf(format string, a ...any) error { return newf(Conflict, format, a...) }

// Statef reports an illegal lifecycle transition.
func Statef(format string, a ...any) error { return newf(State, format, a...) }

// Permissionf reports missing rights.
func Permissionf(format string, a ...any) error { return newf(Permission, format, a...) }

// Unavailablef reports a missing component.
func Unavailablef(format string, a ...any) error { return newf(Unavailable, format, a...) }

// KindOf returns the kind of the first *Error in err's chain, or Internal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Internal
}

// Is reports whether err carries kind k.
func Is(err error, k Kind) bool { return err != nil && KindOf(err) == k }
