package dhcpserver

import (
	"context"
	"encoding/binary"
	"net"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// Frame layout of what the server receives and sends: untagged Ethernet,
// IPv4, UDP.
const (
	ethLen     = 14
	ipv4Len    = 20
	udpLen     = 8
	serverPort = 67
	clientPort = 68
	// minDHCPLen is the fixed BOOTP header and the magic cookie.
	minDHCPLen = 240
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// dhcpPayload finds the DHCP message in a frame addressed to a DHCP
// server on this network, without allocating: the switch calls it on
// every frame. Checksums are not verified: the frame came over a local
// socket, and guests with checksum offload leave the UDP sum partial.
func (s *Server) dhcpPayload(frame []byte) ([]byte, bool) {
	if len(frame) < ethLen+ipv4Len+udpLen || frame[12] != 0x08 || frame[13] != 0x00 {
		return nil, false
	}
	ip := frame[ethLen:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < ipv4Len || ip[9] != 17 || len(ip) < ihl+udpLen {
		return nil, false
	}
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return nil, false // a fragment; DHCP never fragments
	}
	if dst := binary.BigEndian.Uint32(ip[16:]); dst != 0xffffffff && dst != s.serverIP && dst != s.broadcast {
		return nil, false
	}
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if total < ihl+udpLen || total > len(ip) {
		return nil, false
	}
	udp := ip[ihl:total]
	if binary.BigEndian.Uint16(udp[2:]) != serverPort {
		return nil, false
	}
	n := int(binary.BigEndian.Uint16(udp[4:]))
	if n < udpLen || n > len(udp) {
		return nil, false
	}
	return udp[udpLen:n], true
}

// IsDHCP reports whether frame is a DHCP request for this server, the
// test HandleFrame applies before taking a frame.
func (s *Server) IsDHCP(frame []byte) bool {
	_, ok := s.dhcpPayload(frame)
	return ok
}

type job struct {
	identity string
	frame    []byte
	send     func([]byte)
}

// HandleFrame takes a frame from identity's port. It returns false, at
// once and without allocating, for anything but a DHCP request to this
// server, which the switch then forwards as usual. A DHCP request is
// copied and queued, and true returned: the caller never waits for the
// disk. Workers answer it, and send gets the reply frame (valid only
// during the call) for delivery to the same port. When the queue, or the
// port's share of it (an eighth), is full the frame is dropped and
// counted: a flooding guest loses its own requests, not its neighbours'.
func (s *Server) HandleFrame(identity string, frame []byte, send func(frame []byte)) bool {
	payload, ok := s.dhcpPayload(frame)
	if !ok {
		return false
	}
	if len(payload) < minDHCPLen || payload[0] != byte(dhcpv4.OpcodeBootRequest) {
		s.stats.ignored.Add(1)
		return true
	}
	if s.closed.Load() || !s.admit(identity) {
		s.stats.dropped.Add(1)
		return true
	}
	j := job{identity: identity, frame: append([]byte(nil), frame...), send: send}
	select {
	case s.queues[shard(identity, len(s.queues))] <- j:
	default:
		s.leave(identity)
		s.stats.dropped.Add(1)
	}
	return true
}

func (s *Server) admit(identity string) bool {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if s.queued[identity] >= s.portLimit {
		return false
	}
	s.queued[identity]++
	return true
}

func (s *Server) leave(identity string) {
	s.qmu.Lock()
	if n := s.queued[identity] - 1; n > 0 {
		s.queued[identity] = n
	} else {
		delete(s.queued, identity)
	}
	s.qmu.Unlock()
}

// Close stops the workers, drops the frames still queued and waits for
// the commits they started. The Store stays open for the caller to close.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.done)
		s.workers.Wait()
		s.inflight.Wait()
		s.st.inUse.Store(false)
	})
	return nil
}

// shard picks an identity's queue (FNV-1a), without allocating.
func shard(identity string, n int) int {
	h := uint32(2166136261)
	for i := 0; i < len(identity); i++ {
		h ^= uint32(identity[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

func (s *Server) work(queue chan job) {
	defer s.workers.Done()
	for {
		select {
		case <-s.done:
			return
		case j := <-queue:
			s.leave(j.identity)
			s.serve(j)
		}
	}
}

// serve answers one queued frame. A reply that needs a commit is sent
// from its own goroutine once the commit is done, so a worker goes on
// parsing while the disk syncs and many commits share one fsync.
func (s *Server) serve(j job) {
	req, reply, t := s.answerFrame(j.identity, j.frame)
	if req == nil {
		return
	}
	if t == nil {
		if reply != nil {
			j.send(reply)
		}
		return
	}
	s.inflight.Add(1)
	finish := func() {
		defer s.inflight.Done()
		if s.commit(t) == nil && reply != nil {
			j.send(reply)
		}
	}
	select {
	case s.slots <- struct{}{}:
		go func() {
			defer func() { <-s.slots }()
			finish()
		}()
	case <-s.done:
		finish()
	}
}

// answerFrame decides a frame's reply; t, when not nil, must be committed
// before the reply may leave.
func (s *Server) answerFrame(identity string, frame []byte) (*dhcpv4.DHCPv4, []byte, *txn) {
	payload, ok := s.dhcpPayload(frame)
	if !ok {
		return nil, nil, nil
	}
	req, err := dhcpv4.FromBytes(payload)
	if err != nil {
		s.stats.ignored.Add(1)
		return nil, nil, nil
	}
	if forgedChaddr(frame, req) {
		s.stats.ignored.Add(1)
		return nil, nil, nil
	}
	d, t := s.process(identity, req)
	if d.kind == dhcpv4.MessageTypeNone {
		return req, nil, t
	}
	return req, s.replyFrame(frame, req, d), t
}

// forgedChaddr reports a request whose client hardware address is not the
// frame's source: a client asks for itself, so that is a guest speaking
// for another, and its reply (sent to chaddr) would land on another port,
// or flood every port for an unknown MAC. A relayed request (giaddr set)
// comes from the relay's MAC and is exempt; its reply goes back to the
// frame's source anyway.
func forgedChaddr(frame []byte, req *dhcpv4.DHCPv4) bool {
	if req.HWType != iana.HWTypeEthernet || len(req.ClientHWAddr) != 6 {
		return false
	}
	if ipU32(req.GatewayIPAddr) != 0 {
		return false
	}
	return string(req.ClientHWAddr) != string(frame[6:12])
}

// HandleFrameSync answers frame on the caller's goroutine and returns the
// reply frame (nil when none is due). handled is false for frames that
// are not DHCP requests to this server. Tests and tools use it; the data
// path uses HandleFrame.
func (s *Server) HandleFrameSync(ctx context.Context, identity string, frame []byte) (reply []byte, handled bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	if s.closed.Load() {
		return nil, false, ErrClosed
	}
	if _, ok := s.dhcpPayload(frame); !ok {
		return nil, false, nil
	}
	req, reply, t := s.answerFrame(identity, frame)
	if req == nil {
		return nil, true, nil
	}
	if t != nil {
		if err := s.commit(t); err != nil {
			return nil, true, err
		}
	}
	return reply, true, nil
}

// replyFrame builds the reply frame, addressed per RFC 2131 4.1: to a
// relay through giaddr; NAKs broadcast; to ciaddr when the client has an
// address; broadcast when the client asks for it; else unicast to yiaddr
// at chaddr, which a client with no address yet accepts.
func (s *Server) replyFrame(reqFrame []byte, req *dhcpv4.DHCPv4, d decision) []byte {
	const hdr = ethLen + ipv4Len + udpLen
	f := s.appendReply(make([]byte, hdr, hdr+400), req, d)
	srcMAC := net.HardwareAddr(reqFrame[6:12])
	clientMAC := srcMAC
	if req.HWType == iana.HWTypeEthernet && len(req.ClientHWAddr) == 6 {
		clientMAC = req.ClientHWAddr
	}
	dstIP, dstMAC, dstPort := uint32(0xffffffff), broadcastMAC, uint16(clientPort)
	switch giaddr, ciaddr := ipU32(req.GatewayIPAddr), ipU32(req.ClientIPAddr); {
	case giaddr != 0:
		dstIP, dstMAC, dstPort = giaddr, srcMAC, serverPort
	case d.kind == dhcpv4.MessageTypeNak:
	case ciaddr != 0:
		dstIP, dstMAC = ciaddr, clientMAC
	case req.IsBroadcast() || d.yiaddr == 0:
	default:
		dstIP, dstMAC = d.yiaddr, clientMAC
	}
	copy(f[0:6], dstMAC)
	copy(f[6:12], s.cfg.ServerMAC)
	f[12], f[13] = 0x08, 0x00
	ip := f[ethLen : ethLen+ipv4Len]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(f)-ethLen))
	ip[8] = 64 // TTL
	ip[9] = 17 // UDP
	binary.BigEndian.PutUint32(ip[12:], s.serverIP)
	binary.BigEndian.PutUint32(ip[16:], dstIP)
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum(0, ip)))
	udp := f[ethLen+ipv4Len:]
	binary.BigEndian.PutUint16(udp[0:], serverPort)
	binary.BigEndian.PutUint16(udp[2:], dstPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	// Pseudo header: addresses, protocol, UDP length.
	acc := sum(0, ip[12:20]) + 17 + uint32(len(udp))
	c := ^fold(sum(acc, udp))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
	return f
}

// sum adds b as big-endian 16-bit words to acc.
func sum(acc uint32, b []byte) uint32 {
	for len(b) >= 2 {
		acc += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return acc
}

func fold(acc uint32) uint16 {
	for acc > 0xffff {
		acc = acc>>16 + acc&0xffff
	}
	return uint16(acc)
}
