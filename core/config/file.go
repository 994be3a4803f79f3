package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/fsutil"
)

// readFile reads one config file into a layer. A missing file is an empty
// layer; an unreadable one is an error, since silently skipping a config
// the user wrote is worse than stopping.
func readFile(path string, src Source) (layer, []string, error) {
	l := layer{source: src, file: path, values: map[string]string{}}
	if path == "" {
		return l, nil, nil
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
		return l, nil, nil
	case errors.Is(err, fs.ErrPermission):
		return l, nil, errs.Permissionf("cannot read the %s config %s: %v: make it readable (chmod 644), or point %s elsewhere", src, path, err, fileKnob(src))
	default:
		return l, nil, errs.Invalidf("cannot read the %s config %s: %v: it must be a YAML file, or absent", src, path, err)
	}
	return parseFile(data, path, src)
}

func fileKnob(src Source) string {
	if src == SourceSystem {
		return EnvSystemConfig
	}
	return "--config or " + EnvConfig
}

// parseFile parses YAML with viper and checks each key. Viper folds keys to
// lower case and merges dotted keys with nested ones, so a first pass over
// the YAML nodes refuses those spellings to keep one meaning per file.
func parseFile(data []byte, path string, src Source) (layer, []string, error) {
	l := layer{source: src, file: path, values: map[string]string{}}
	where := fmt.Sprintf("%s config %s", src, path)
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
		var pe viper.ConfigParseError
		if errors.As(err, &pe) && pe.Unwrap() != nil {
			err = pe.Unwrap()
		}
		return l, nil, errs.Invalidf("the %s is not valid YAML: %v: fix it, or move it away to use the defaults", where, err)
	}
	var problems []string
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) == nil {
		problems = checkKeySpelling(&doc, "", where)
	}
	keys := v.AllKeys()
	sort.Strings(keys)
	for _, k := range keys {
		val := v.Get(k)
		if val == nil { // "key:" with nothing after it counts as not set
			if !knownKey(k) && !isKeyPrefix(k) {
				problems = append(problems, unknownKeyError(k, " in the "+where))
			}
			continue
		}
		if !knownKey(k) {
			problems = append(problems, unknownKeyError(k, " in the "+where))
			continue
		}
		s, problem := scalar(val)
		if problem != "" {
			problems = append(problems, fmt.Sprintf("%s %v in the %s %s", k, val, where, problem))
			continue
		}
		l.values[k] = s
	}
	return l, problems, nil
}

// isKeyPrefix allows "plugins:" and "plugins: {x:}" left empty.
func isKeyPrefix(k string) bool {
	if k == "plugins" {
		return true
	}
	t, ok := strings.CutPrefix(k, pluginsPrefix)
	return ok && knownKey(PluginKey(t, fieldPath))
}

// checkKeySpelling refuses mapping keys that are not lower case or that
// contain a dot, which viper would otherwise accept silently.
func checkKeySpelling(n *yaml.Node, prefix, where string) []string {
	var problems []string
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			problems = append(problems, checkKeySpelling(c, prefix, where)...)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			full := prefix + k
			switch {
			case k != strings.ToLower(k):
				problems = append(problems, fmt.Sprintf("key %q in the %s (line %d) is not lower case: write %s", full, where, n.Content[i].Line, strings.ToLower(full)))
			case strings.Contains(k, "."):
				problems = append(problems, fmt.Sprintf("key %q in the %s (line %d) contains a dot: nest it instead, e.g. plugins: {shared: {path: ...}}", full, where, n.Content[i].Line))
			default:
				problems = append(problems, checkKeySpelling(n.Content[i+1], full+".", where)...)
			}
		}
	}
	return problems
}

// scalar turns a YAML value into the string a flag or env var would give.
func scalar(v any) (string, string) {
	switch v := v.(type) {
	case string:
		return v, ""
	case int:
		return strconv.Itoa(v), ""
	case int64:
		return strconv.FormatInt(v, 10), ""
	case uint64:
		return strconv.FormatUint(v, 10), ""
	case bool:
		return strconv.FormatBool(v), ""
	case float64:
		// A digits-only checksum lands here and has lost digits already.
		return "", "is read by YAML as a decimal number: write a whole number, or put the value in quotes if it is a checksum or name"
	case []any:
		return "", "is a list: give a single value"
	case map[string]any:
		return "", "is a mapping: give a single value"
	}
	return "", "is not a plain value: give a string or a number"
}

// Change is one edit of the user file.
type Change struct {
	Key   string
	Value string
	Unset bool // remove Key; Value is ignored
}

// Set writes key=value into the user file. See Apply.
func Set(o Options, key, value string) error {
	return Apply(o, Change{Key: key, Value: value})
}

// Unset removes key from the user file. See Apply. A key that is not in
// the file is an errs.NotFound error that says where its value comes from,
// so a user wondering why the value did not change learns why.
func Unset(o Options, key string) error {
	return Apply(o, Change{Key: key, Unset: true})
}

// Apply makes several edits to the user file at once, so related keys
// (start_address and end_address) can move together. It checks each value,
// then the effective configuration of the edited user file, the system
// file and the defaults (flags and env do not persist, so they are left
// out); on any problem the file is left byte for byte as it was. Other keys
// keep their order and comments. The read-modify-write holds
// <userfile>.lock; the file is replaced atomically, keeping its mode (0644
// for a new file) and writing through a symlink to its target.
func Apply(o Options, changes ...Change) error {
	o = o.withDefaults()
	userFile, systemFile, err := resolveFiles(o)
	if err != nil {
		return err
	}
	if userFile == "" {
		return errs.Invalidf("there is no user config file to write: HOME is not set; set HOME, %s or --config", EnvConfig)
	}
	changes = append([]Change(nil), changes...)
	for i, c := range changes {
		if c.Unset {
			continue // an unknown key may still be removed if the file has it
		}
		if !knownKey(c.Key) {
			return errs.Invalidf("%s", unknownKeyError(c.Key, ""))
		}
		norm, err := normalize(c.Key, c.Value)
		if err != nil {
			return errs.Invalidf("%s %q %v", c.Key, c.Value, err)
		}
		changes[i].Value = norm
	}

	if err := os.MkdirAll(filepath.Dir(userFile), 0o755); err != nil {
		return writeError(userFile, err)
	}
	lock, err := fsutil.LockFile(userFile + ".lock")
	if err != nil {
		return writeError(userFile+".lock", err)
	}
	defer lock.Unlock()

	target := userFile
	if t, err := filepath.EvalSymlinks(userFile); err == nil {
		target = t
	}
	old, err := os.ReadFile(target)
	mode := fs.FileMode(0o600) // the plugin user has no business reading it
	switch {
	case err == nil:
		if st, err := os.Stat(target); err == nil {
			mode = st.Mode().Perm()
		}
	case errors.Is(err, fs.ErrNotExist):
		old = nil
	case errors.Is(err, fs.ErrPermission):
		return errs.Permissionf("cannot read the user config %s: %v: run anka as the user who owns it, or point --config or %s at a file you can write", userFile, err, EnvConfig)
	default:
		return errs.Invalidf("cannot read the user config %s: %v", userFile, err)
	}

	doc, err := parseDoc(old)
	if err != nil {
		return errs.Invalidf("the user config %s is not valid YAML: %v: fix it by hand first, or move it away", userFile, err)
	}
	root := doc.Content[0]
	for _, c := range changes {
		path := splitKey(c.Key)
		if !c.Unset {
			setNode(root, path, valueNode(c.Key, c.Value))
			continue
		}
		if removeNode(root, path) {
			continue
		}
		if !knownKey(c.Key) {
			return errs.Invalidf("%s", unknownKeyError(c.Key, ""))
		}
		return errs.NotFoundf("%s is not set in the user config %s, so there is nothing to unset%s", c.Key, userFile, effectiveNote(o, c.Key))
	}
	data, err := encodeDoc(doc)
	if err != nil {
		return errs.Invalidf("cannot encode the user config %s: %v", userFile, err)
	}

	// Check the result as the next run will see it, minus flags and env.
	user, problems, err := parseFile(data, userFile, SourceUser)
	if err != nil {
		return err
	}
	system, p, err := readFile(systemFile, SourceSystem)
	if err != nil {
		return err
	}
	problems = append(problems, p...)
	if _, err := build(userFile, systemFile, problems, user, system); err != nil {
		return errs.Invalidf("refused, %s is unchanged: %w", userFile, err)
	}
	if bytes.Equal(old, data) {
		return nil
	}
	if err := fsutil.WriteFileAtomic(target, data, mode); err != nil {
		return writeError(userFile, err)
	}
	return nil
}

// effectiveNote tells where a key's value comes from when not from the
// user file, best effort.
func effectiveNote(o Options, key string) string {
	c, err := Load(o)
	if err != nil {
		return ""
	}
	e, err := c.Get(key)
	if err != nil || e.Source == SourceUser {
		return ""
	}
	if e.Source == SourceDefault {
		return fmt.Sprintf(" (it has its built-in default %q)", e.Value)
	}
	return fmt.Sprintf(" (its value %q comes from %s)", e.Value, e.Origin())
}

// writeError turns a failed write into a sentence saying what to do.
func writeError(path string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return errs.Unavailablef("cannot write the user config %s: no space left on its filesystem (%v): free some space there and retry; the file is as it was", path, err)
	}
	if errors.Is(err, syscall.EROFS) {
		return errs.Permissionf("cannot write the user config %s: its filesystem is read-only (%v): remount it read-write, or point --config or %s at a writable file; the file is as it was", path, err, EnvConfig)
	}
	if errors.Is(err, fs.ErrPermission) {
		return errs.Permissionf("cannot write the user config %s: %v: run anka as the user who owns it, or point --config or %s at a file you can write", path, err, EnvConfig)
	}
	return fmt.Errorf("cannot write the user config %s: %w", path, err)
}

func splitKey(key string) []string { return strings.Split(key, ".") }

// valueNode writes numbers plain and everything else as a string, quoted
// when YAML would read it as something else (a digits-only checksum).
func valueNode(key, value string) *yaml.Node {
	tag := "!!str"
	if key == "mtu" || key == "portfwd_base" || key == "lease_time" {
		if _, err := strconv.Atoi(value); err == nil {
			tag = "!!int"
		}
	}
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: value}
}

// parseDoc returns a document whose first content node is a mapping.
func parseDoc(data []byte) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if doc.Kind != yaml.DocumentNode {
		doc = yaml.Node{Kind: yaml.DocumentNode}
	}
	if len(doc.Content) == 0 {
		doc.Content = []*yaml.Node{{Kind: yaml.MappingNode, Tag: "!!map"}}
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		*root = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", HeadComment: root.HeadComment, FootComment: root.FootComment}
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("the top level is not a mapping of keys to values")
	}
	return &doc, nil
}

func encodeDoc(doc *yaml.Node) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func findKey(m *yaml.Node, k string) int {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == k {
			return i
		}
	}
	return -1
}

// setNode sets path to val, creating mappings on the way and replacing a
// null or scalar in the way (plugins: with nothing after it).
func setNode(m *yaml.Node, path []string, val *yaml.Node) {
	for _, k := range path[:len(path)-1] {
		i := findKey(m, k)
		if i < 0 {
			next := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
			m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: k}, next)
			m = next
			continue
		}
		if v := m.Content[i+1]; v.Kind != yaml.MappingNode {
			m.Content[i+1] = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", LineComment: v.LineComment}
		}
		m = m.Content[i+1]
	}
	leaf := path[len(path)-1]
	if i := findKey(m, leaf); i >= 0 {
		old := m.Content[i+1]
		val.LineComment, val.HeadComment, val.FootComment = old.LineComment, old.HeadComment, old.FootComment
		m.Content[i+1] = val
		return
	}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: leaf}, val)
}

// removeNode deletes path and any mapping it leaves empty; false if the
// key was not there.
func removeNode(m *yaml.Node, path []string) bool {
	i := findKey(m, path[0])
	if i < 0 {
		return false
	}
	if len(path) > 1 {
		child := m.Content[i+1]
		if child.Kind != yaml.MappingNode || !removeNode(child, path[1:]) {
			return false
		}
		if len(child.Content) > 0 {
			return true
		}
	}
	m.Content = append(m.Content[:i], m.Content[i+2:]...)
	return true
}
