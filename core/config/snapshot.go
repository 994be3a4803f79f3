package config

// Snapshot is a resolved configuration in a form that crosses a process
// boundary: the CLI resolves flags, env and files, and the daemon acts on
// exactly those values (so `ANKA_BRIDGE_NAME=x anka start vm` applies to
// that start, whatever the daemon's own environment says).
type Snapshot struct {
	Entries    []Entry `json:"entries"`
	UserFile   string  `json:"user_file,omitempty"`
	SystemFile string  `json:"system_file,omitempty"`
}

// Snapshot returns every key with its value and origin.
func (c *Config) Snapshot() Snapshot {
	return Snapshot{Entries: c.Entries(), UserFile: c.UserFile, SystemFile: c.SystemFile}
}

// FromSnapshot rebuilds a Config, checking every value again (a snapshot
// comes from another process). Each value keeps its origin, so an error
// still names the flag, variable or file it came from.
func FromSnapshot(s Snapshot) (*Config, error) {
	order := []Source{SourceFlag, SourceEnv, SourceUser, SourceSystem}
	layers := make([]layer, len(order))
	for i, src := range order {
		layers[i] = layer{source: src, values: map[string]string{}}
	}
	for _, e := range s.Entries {
		for i, src := range order {
			if e.Source == src {
				layers[i].values[e.Key] = e.Value
				if e.File != "" {
					layers[i].file = e.File
				}
			}
		}
	}
	return build(s.UserFile, s.SystemFile, nil, layers...)
}
