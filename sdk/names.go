package sdk

import (
	"fmt"
	"regexp"
)

// BinaryPrefix starts the file name of every plugin binary: the binary
// serving type "shared" is anka-net-shared.
const BinaryPrefix = "anka-net-"

// MaxTypeNameLen bounds a type name so it fits interface and file names.
const MaxTypeNameLen = 32

// Type names are lower case letters, digits and dashes, starting with a
// letter. Underscores are excluded on purpose: config keys map a type to
// ANKA_PLUGINS_<TYPE>_PATH with dashes turned into underscores, and that
// must map back to exactly one type.
var typeNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)

// ValidateTypeName reports why name cannot be a network type name, or nil.
func ValidateTypeName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("network type name is empty: use lower case letters, digits and dashes, e.g. \"my-net\"")
	case len(name) > MaxTypeNameLen:
		return fmt.Errorf("network type name %q is longer than %d characters", name, MaxTypeNameLen)
	case !typeNameRE.MatchString(name):
		return fmt.Errorf("network type name %q is not valid: use lower case letters, digits and dashes, starting with a letter, e.g. \"my-net\"", name)
	}
	return nil
}

// BinaryName is the file name of the plugin binary that serves typ.
func BinaryName(typ string) string { return BinaryPrefix + typ }
