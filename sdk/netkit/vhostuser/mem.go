//go:build linux

package vhostuser

import (
	"fmt"
	"os"

	"github.com/anka-net/anka/sdk/netkit/vhostuser/internal/vuproto"
	"golang.org/x/sys/unix"
)

// region is one mapped region of the front-end's memory.
type region struct {
	gpa, uva, size uint64
	mem            []byte // the region itself, a window into mapping
	mapping        []byte // what mmap returned (page-aligned start)
}

// memTable is the front-end's memory as SET_MEM_TABLE described it.
type memTable struct {
	regions []region
}

// mapMemTable maps every region; it closes the fds whatever happens.
func mapMemTable(rs []vuproto.MemRegion, fds []int) (*memTable, error) {
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	mt := &memTable{}
	page := uint64(os.Getpagesize())
	for i, r := range rs {
		if r.MemorySize == 0 {
			mt.unmap()
			return nil, fmt.Errorf("region %d has size 0", i)
		}
		if r.GuestPhysAddr+r.MemorySize < r.GuestPhysAddr || r.UserspaceAddr+r.MemorySize < r.UserspaceAddr ||
			r.MmapOffset+r.MemorySize < r.MmapOffset || r.MemorySize > 1<<46 {
			mt.unmap()
			return nil, fmt.Errorf("region %d (offset %#x, size %#x) wraps around the address space", i, r.MmapOffset, r.MemorySize)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fds[i], &st); err != nil {
			mt.unmap()
			return nil, fmt.Errorf("region %d: fstat: %w", i, err)
		}
		// A mapping past the end of a file faults (SIGBUS) when touched:
		// refuse it here. One shrunk later faults too; the data path
		// turns that fault into a dropped connection (see guard).
		if st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Size) < r.MmapOffset+r.MemorySize {
			mt.unmap()
			return nil, fmt.Errorf("region %d ends at file offset %#x but its file holds only %#x bytes", i, r.MmapOffset+r.MemorySize, st.Size)
		}
		start := r.MmapOffset &^ (page - 1)
		skip := r.MmapOffset - start
		m, err := unix.Mmap(fds[i], int64(start), int(skip+r.MemorySize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			mt.unmap()
			return nil, fmt.Errorf("region %d: mmap %#x bytes at offset %#x: %w", i, r.MemorySize, r.MmapOffset, err)
		}
		mt.regions = append(mt.regions, region{
			gpa: r.GuestPhysAddr, uva: r.UserspaceAddr, size: r.MemorySize,
			mem: m[skip : skip+r.MemorySize : skip+r.MemorySize], mapping: m,
		})
	}
	return mt, nil
}

func (mt *memTable) unmap() {
	if mt == nil {
		return
	}
	for _, r := range mt.regions {
		unix.Munmap(r.mapping)
	}
	mt.regions = nil
}

// gpa returns the n bytes at guest physical address a, or nil when they
// are not all inside one region.
func (mt *memTable) gpa(a uint64, n uint32) []byte {
	for i := range mt.regions {
		r := &mt.regions[i]
		if a >= r.gpa {
			off := a - r.gpa
			if off < r.size && uint64(n) <= r.size-off {
				return r.mem[off : off+uint64(n) : off+uint64(n)]
			}
		}
	}
	return nil
}

// uva returns the n bytes at the front-end's user address a, or nil.
func (mt *memTable) uva(a uint64, n int) []byte {
	for i := range mt.regions {
		r := &mt.regions[i]
		if a >= r.uva {
			off := a - r.uva
			if off < r.size && uint64(n) <= r.size-off {
				return r.mem[off : off+uint64(n) : off+uint64(n)]
			}
		}
	}
	return nil
}
