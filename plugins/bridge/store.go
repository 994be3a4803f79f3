package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// record is what the plugin keeps of a VM in its data folder, so `anka
// show` still knows a stopped VM's interface and last address after the
// plugin restarted.
type record struct {
	ID          string    `json:"id"`
	Name        string    `json:"name,omitempty"`
	DynamicMAC  string    `json:"dynamic_mac"`
	InternalMAC string    `json:"internal_mac,omitempty"`
	Interface   string    `json:"interface"`
	Why         string    `json:"why"`
	IP          string    `json:"ip,omitempty"`
	Source      string    `json:"source,omitempty"` // dhcp or manual
	Expiry      time.Time `json:"lease_expiry,omitzero"`
	Server      string    `json:"dhcp_server,omitempty"`
}

// Files in the data folder.
const (
	vmsFile      = "bridge-vms.json"
	offloadsFile = "bridge-offloads.json"
)

// store writes the plugin's files, each replaced atomically.
type store struct {
	dir string
	mu  sync.Mutex
	lro map[string]bool // interfaces whose LRO we switched off
}

func openStore(dir string) (*store, []record, error) {
	st := &store{dir: dir, lro: map[string]bool{}}
	var recs []record
	if err := readJSON(filepath.Join(dir, vmsFile), &recs); err != nil {
		return nil, nil, err
	}
	if err := readJSON(filepath.Join(dir, offloadsFile), &st.lro); err != nil {
		return nil, nil, err
	}
	return st, recs, nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s is damaged (%v): move it away to start afresh", path, err)
	}
	return nil
}

func (s *store) saveVMs(recs []record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, _ := json.MarshalIndent(recs, "", "  ")
	return writeAtomic(filepath.Join(s.dir, vmsFile), b)
}

// noteLRO records that we switched LRO off on ifname (before we do), or
// gave it back.
func (s *store) noteLRO(ifname string, off bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if off {
		s.lro[ifname] = true
	} else {
		delete(s.lro, ifname)
	}
	if len(s.lro) == 0 {
		err := os.Remove(filepath.Join(s.dir, offloadsFile))
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
		return err
	}
	b, _ := json.Marshal(s.lro)
	return writeAtomic(filepath.Join(s.dir, offloadsFile), b)
}

// offloads are the interfaces whose LRO a run switched off and did not
// give back.
func (s *store) offloads() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.lro))
}

// writeAtomic replaces path with b: a crash leaves the old or the new
// file, never half of one.
func writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// saveSoon asks the saver to write the VMs' records; it never blocks, as
// the forwarding goroutines call it when a lease is seen.
func (p *Plugin) saveSoon() {
	select {
	case p.saveCh <- struct{}{}:
	default:
	}
}

func (p *Plugin) saver() {
	defer p.wg.Done()
	for {
		select {
		case <-p.saveCh:
			p.save()
		case <-p.done:
			p.save()
			return
		}
	}
}

func (p *Plugin) save() {
	if p.st == nil {
		return
	}
	p.mu.Lock()
	recs := make([]record, 0, len(p.vms))
	for _, v := range p.vms {
		r := v.rec
		if a := v.att; a != nil {
			p.amu.Lock()
			if a.addr.IsValid() {
				r.IP, r.Source, r.Expiry, r.Server = a.addr.String(), a.source, a.expiry, ""
				if a.server.IsValid() {
					r.Server = a.server.String()
				}
			}
			p.amu.Unlock()
		}
		recs = append(recs, r)
	}
	p.mu.Unlock()
	slices.SortFunc(recs, func(a, b record) int { return strings.Compare(a.ID, b.ID) })
	if err := p.st.saveVMs(recs); err != nil {
		p.log.Warn("cannot write the VMs' records; `anka show` may miss what a restarted plugin knew", "error", err)
	}
}
