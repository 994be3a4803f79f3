package vswitch

import (
	"errors"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
)

// forwarder is the per-goroutine state of forwarding: the batch read, the
// run of frames bound for one port, and a scratch frame for flooded copies.
// Everything is allocated once, so forwarding allocates nothing per frame.
type forwarder struct {
	in      []frameio.Frame
	run     []frameio.Frame
	scratch frameio.Frame
	one     []frameio.Frame
	seg     frameio.Segmenter
	segs    []frameio.Frame // a GSO frame's pieces, for a port that takes it cut (allocated once, at the first)
}

// newForwarder allocates a forwarder whose first large read buffers are
// frameio.MaxGSOLen bytes (for a frameio.GSOReader's reads).
func (s *Switch) newForwarder(large int) *forwarder {
	f := &forwarder{in: frameio.NewBatch(s.cfg.Batch, s.cfg.MTU), run: make([]frameio.Frame, 0, s.cfg.Batch)}
	copy(f.in, frameio.NewBatchSize(min(large, s.cfg.Batch), frameio.MaxGSOLen))
	f.scratch = frameio.NewBatch(1, s.cfg.MTU)[0]
	f.one = make([]frameio.Frame, 1)
	return f
}

func (p *Port) readLoop() {
	defer close(p.readDone)
	s := p.sw
	large := 0 // frames of frameio.MaxGSOLen: the rest stay MTU-sized, and the reader cuts what lands there
	if gr, ok := p.link.(frameio.GSOReader); ok {
		large = max(gr.GSOBuffers(), 0)
	}
	f := s.newForwarder(large)
	log := s.cfg.Logger.With("port", p.cfg.Name)
	for {
		n, err := p.link.ReadBatch(f.in)
		if err != nil {
			if errors.Is(err, frameio.ErrClosed) || p.closed.Load() {
				return
			}
			log.Warn("read failed", "err", err)
			time.Sleep(10 * time.Millisecond) // a persistent error must not spin a core
			continue
		}
		s.forward(p, f, f.in[:n])
	}
}

// forward delivers frames that port from sent. Consecutive frames for the
// same port go out in one batched write.
func (s *Switch) forward(from *Port, f *forwarder, frames []frameio.Frame) {
	var (
		now          = s.cfg.Now()
		rxF, rxB     uint64
		runTo        *Port
		interceptors = *s.interceptors.Load()
	)
	f.run = f.run[:0]
	flush := func() {
		if runTo != nil && len(f.run) > 0 {
			runTo.transmit(f.run, false)
		}
		f.run, runTo = f.run[:0], nil
	}
	for i := range frames {
		fr := frames[i].Bytes()
		rxF++
		rxB += uint64(len(fr))
		if len(fr) < frameio.MinFrameLen {
			from.stats.drops[dropMalformed].Add(1)
			continue
		}
		if from.cfg.FromLink != nil && !from.cfg.FromLink(fr) {
			from.stats.drops[dropHook].Add(1)
			continue
		}
		if from.cfg.Capture != nil {
			from.cfg.Capture.Write(fr)
		}
		if from.cfg.AntiSpoof {
			if r := s.checkSpoof(from, fr); r != dropNone {
				from.stats.drops[r].Add(1)
				continue
			}
		}
		consumed := false
		for _, ic := range interceptors {
			if ic(from, fr) {
				consumed = true
				break
			}
		}
		if consumed {
			continue
		}
		src := macAt(fr[6:12])
		if !src.IsMulticast() {
			s.table.learn(src, from, now)
		}
		dst := macAt(fr[0:6])
		if !dst.IsMulticast() {
			if e := s.table.lookup(dst); e != nil && !s.expired(e) {
				to := e.port
				switch {
				case to == from:
					from.stats.drops[dropNoRoute].Add(1) // hairpin: the frame's target is behind its sender
				case from.cfg.Isolated && to.cfg.Isolated:
					from.stats.drops[dropIsolated].Add(1)
				default:
					of := &frames[i]
					if of.Off.GSO != frameio.GSONone && !to.gso {
						flush()
						s.cut(from, f, of, to)
						continue
					}
					if (of.Off.Partial || of.Off.GSO != frameio.GSONone) && !of.Fit(to.partial, to.gso) {
						from.stats.drops[dropOffload].Add(1)
						continue
					}
					if to != runTo {
						flush()
						runTo = to
					}
					f.run = append(f.run, frames[i])
				}
				continue
			}
		}
		of := &frames[i]
		if of.Off.GSO != frameio.GSONone {
			flush()
			s.cut(from, f, of, nil) // flooded in complete pieces
			continue
		}
		if of.Off.Partial && !of.Fit(false, false) {
			from.stats.drops[dropOffload].Add(1) // a flood's copies carry no offload: complete it once
			continue
		}
		flush()
		s.flood(from, f, fr)
	}
	flush()
	from.stats.rxFrames.Add(rxF)
	from.stats.rxBytes.Add(rxB)
}

// cut forwards GSO frame fr cut to the MTU: to port to (the pieces'
// checksums partial when it takes them and fr is untagged, complete
// otherwise) in batches, or, with to nil, flooded one complete piece at
// a time. A frame the Segmenter refuses, or whose pieces outgrow the
// MTU, is dropped (what was cut of it goes) and counted.
func (s *Switch) cut(from *Port, f *forwarder, fr *frameio.Frame, to *Port) {
	b := fr.Bytes()
	if f.segs == nil {
		f.segs = frameio.NewBatch(s.cfg.Batch, s.cfg.MTU) // once per forwarder
	}
	if f.seg.Load(b, fr.Off) != nil {
		from.stats.drops[dropOffload].Add(1)
		return
	}
	partial := to != nil && to.partial && f.seg.PartialTravels()
	for f.seg.Pending() {
		n := 0
		for n < len(f.segs) && f.seg.Pending() {
			if !f.seg.Next(&f.segs[n], partial) {
				from.stats.drops[dropOffload].Add(1)
				break
			}
			n++
		}
		if to != nil {
			to.transmit(f.segs[:n], false)
			continue
		}
		for j := range n {
			s.flood(from, f, f.segs[j].Bytes())
		}
	}
}

// flood sends a broadcast, multicast or unknown-unicast frame to every
// other port. A port with a ToLink hook gets a private copy, so one port's
// rewrite never leaks into another's frame.
func (s *Switch) flood(from *Port, f *forwarder, fr []byte) {
	for _, to := range *s.ports.Load() {
		if to == from || (from.cfg.Isolated && to.cfg.Isolated) {
			continue
		}
		if to.cfg.ToLink != nil {
			f.scratch.N = copy(f.scratch.Buf, fr)
			f.one[0] = f.scratch
		} else {
			f.one[0] = frameio.Frame{Buf: fr, N: len(fr)}
		}
		to.transmit(f.one, true)
	}
}

// transmit writes frames to the port's link, or hands them to its service.
// They come fit for the port: forward completed partial checksums for a
// port that does not take them (frameio.Frame.Fit), and the frames of services
// carry none.
// A flood does not wait for room on a link that can say so
// (frameio.NoWaitWriter): a peer that does not read, such as an idle VM's
// full socket, must not hold up the forwarding goroutine WriteTimeout per
// broadcast, once per idle port.
func (p *Port) transmit(frames []frameio.Frame, flood bool) {
	if p.closed.Load() {
		return
	}
	var bytes uint64
	p.txMu.Lock()
	for i := range frames {
		b := frames[i].Bytes()
		bytes += uint64(len(b))
		if p.cfg.ToLink != nil {
			p.cfg.ToLink(b)
		}
		if p.cfg.Capture != nil {
			p.cfg.Capture.Write(b)
		}
	}
	sent := len(frames)
	if p.deliver != nil {
		p.deliver(frames)
	} else {
		var n int
		var err error
		if nw, ok := p.link.(frameio.NoWaitWriter); ok && flood {
			n, err = nw.WriteBatchNoWait(frames)
		} else {
			n, err = p.link.WriteBatch(frames)
		}
		if err != nil || n < len(frames) {
			p.stats.txErrors.Add(uint64(len(frames) - n))
			sent = n
		}
	}
	p.txMu.Unlock()
	p.stats.txFrames.Add(uint64(sent))
	p.stats.txBytes.Add(bytes)
}
