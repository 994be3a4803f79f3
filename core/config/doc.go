// Package config resolves anka's settings. It is the only package that
// imports viper; everything else reads the typed fields of Config.
//
// Each key is looked up in these layers, the first that has it wins:
//
//  1. a global flag, the key with dashes: --start-address, --plugins-shared-path
//  2. an environment variable ANKA_<KEY>, upper case with dots and dashes
//     as underscores: ANKA_START_ADDRESS, ANKA_PLUGINS_MY_NET_PATH (type
//     names never contain '_', so this maps back to type my-net); an empty
//     variable counts as unset
//  3. the user file: --config, else ANKA_CONFIG, else
//     $XDG_CONFIG_HOME/anka/config.yaml, else ~/.config/anka/config.yaml
//  4. the system file /etc/anka/config.yaml, or the path in
//     ANKA_SYSTEM_CONFIG (for tests and packagers)
//  5. the built-in default
//
// Files are YAML with lower-case flat keys, except plugins, which nest:
//
//	bridge_name: eth0
//	lease_time: 12h
//	plugins:
//	  my-net:
//	    path: /opt/my-net/anka-net-my-net
//	    sha256: 9f86d0...
//
// A missing file is fine. A file that is not YAML, an unknown or
// mis-spelt key, or a bad value stops Load with an errs.Invalid error
// naming the key, the value and where it came from. Values are checked
// after precedence, so a flag can override a bad value in a file. Unknown
// ANKA_* variables are ignored, except malformed ANKA_PLUGINS_* ones.
//
// Plugin keys default to empty (no path: discover the binary; no sha256:
// no pin); an empty --plugins-<type>-path= clears a value set below it.
//
// Set, Unset and Apply edit the user file under a lock and refuse any edit
// after which the files (flags and env aside) would not load; Apply moves
// related keys together. Unset of a key the file lacks is errs.NotFound.
package config
