package portfwd

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxDatagram holds any UDP payload (65507 over IPv4, 65527 over IPv6).
const maxDatagram = 65535

// bufPool holds datagram buffers. A session takes one only while a
// datagram is in hand, not while it waits, so a thousand idle sessions do
// not pin 64 MiB.
var bufPool = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}

// udpForward relays datagrams: one session per client address, each with
// its own socket connected to the guest, so the guest's replies map back
// to the client by the session's source port.
type udpForward struct {
	ln          *net.UDPConn
	to          Target
	guestPort   uint16
	idle        time.Duration
	maxSessions int
	log         *slog.Logger
	dropLog     logLimiter
	epoch       time.Time
	// pktinfo is set on a wildcard listener: it learns which host address
	// each datagram was sent to and answers from that address, so a client
	// that wrote to a secondary address (or 127.0.0.2) does not get its
	// answer from the address the routing table would pick.
	pktinfo bool
	wg      sync.WaitGroup // the read loop and every session's reply loop

	mu       sync.Mutex
	sessions map[sessionKey]*udpSession
	closed   bool
}

// sessionKey is a client and, on a wildcard listener, the host address it
// wrote to.
type sessionKey struct {
	client netip.AddrPort
	local  netip.Addr
}

type udpSession struct {
	key  sessionKey
	oob  []byte       // control message setting the reply's source address, or nil
	conn *net.UDPConn // connected to the guest
	raw  syscall.RawConn
	last atomic.Int64 // nanoseconds since epoch of the last datagram either way
}

func startUDP(r Rule, to Target, idle time.Duration, maxSessions int, log *slog.Logger) (*udpForward, error) {
	network := "udp4"
	if r.HostIP.Is6() {
		network = "udp6"
	}
	ln, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(r.hostAddr()))
	if err != nil {
		return nil, err
	}
	u := &udpForward{
		ln:          ln,
		to:          to,
		guestPort:   uint16(r.GuestPort),
		idle:        idle,
		maxSessions: maxSessions,
		log:         log,
		epoch:       time.Now(),
		sessions:    make(map[sessionKey]*udpSession),
	}
	if r.HostIP.IsUnspecified() {
		if err := setPktinfo(ln, r.HostIP.Is6()); err != nil {
			ln.Close()
			return nil, err
		}
		u.pktinfo = true
	}
	u.wg.Add(1)
	go u.readLoop()
	return u, nil
}

func (u *udpForward) now() int64 { return int64(time.Since(u.epoch)) }

// readLoop takes datagrams from clients and sends each on its session.
func (u *udpForward) readLoop() {
	defer u.wg.Done()
	buf := make([]byte, maxDatagram)
	var oob []byte
	if u.pktinfo {
		oob = make([]byte, 128)
	}
	for {
		n, oobn, _, from, err := u.ln.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			u.dropLog.warn(u.log, "portfwd: read failed", "err", err)
			time.Sleep(5 * time.Millisecond) // never spin on a persistent error
			continue
		}
		key := sessionKey{client: netip.AddrPortFrom(from.Addr().Unmap(), from.Port())}
		var ifindex uint32
		if u.pktinfo {
			key.local, ifindex = parsePktinfo(oob[:oobn])
		}
		s := u.session(key, ifindex)
		if s == nil {
			continue
		}
		if _, err := s.conn.Write(buf[:n]); errors.Is(err, syscall.ECONNREFUSED) {
			// The error of an earlier datagram (ICMP port unreachable:
			// nothing listened in the guest then) failed this send; retry.
			s.conn.Write(buf[:n])
		}
	}
}

// session returns key's session, creating it if there is room and the
// guest's address is known; nil means drop the datagram. Only the read
// loop creates sessions.
func (u *udpForward) session(key sessionKey, ifindex uint32) *udpSession {
	from := key.client
	u.mu.Lock()
	s, ok := u.sessions[key]
	if ok {
		s.last.Store(u.now()) // under mu: expire sees it
	}
	n := len(u.sessions)
	u.mu.Unlock()
	if ok {
		return s
	}
	if n >= u.maxSessions {
		u.dropLog.warn(u.log, "portfwd: too many sessions; dropping", "from", from, "max", u.maxSessions)
		return nil
	}
	ip, ok := u.to()
	if !ok {
		u.dropLog.warn(u.log, "portfwd: guest address not known yet; dropping", "from", from)
		return nil
	}
	guest := netip.AddrPortFrom(ip, u.guestPort)
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(guest))
	if err != nil {
		u.dropLog.warn(u.log, "portfwd: cannot open a socket to the guest; dropping", "from", from, "guest", guest, "err", err)
		return nil
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil
	}
	s = &udpSession{key: key, oob: replyPktinfo(key.local, ifindex), conn: conn, raw: raw}
	s.last.Store(u.now())
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		conn.Close()
		return nil
	}
	u.sessions[key] = s
	u.wg.Add(1)
	u.mu.Unlock()
	u.log.Debug("portfwd: session", "from", from, "guest", guest)
	go u.replies(s)
	return s
}

// replies relays the guest's datagrams to the session's client until the
// session is idle for u.idle or closed.
func (u *udpForward) replies(s *udpSession) {
	defer u.wg.Done()
	s.conn.SetReadDeadline(time.Now().Add(u.idle))
	for {
		b, n, err := s.read()
		switch {
		case err == nil:
			s.last.Store(u.now())
			_, _, err := u.ln.WriteMsgUDPAddrPort((*b)[:n], s.oob, s.key.client)
			if err != nil && s.oob != nil && errors.Is(err, syscall.EINVAL) {
				// The client wrote to an address we cannot send from (a
				// subnet broadcast): let the kernel pick from now on.
				s.oob = nil
				u.ln.WriteMsgUDPAddrPort((*b)[:n], nil, s.key.client)
			}
			bufPool.Put(b)
		case errors.Is(err, os.ErrDeadlineExceeded):
			if u.expire(s) {
				return
			}
		case errors.Is(err, syscall.ECONNREFUSED):
			// Nothing listens in the guest (yet); the client may retry.
		default:
			u.end(s)
			return
		}
	}
}

// read waits for a datagram and only then takes a buffer for it.
func (s *udpSession) read() (*[]byte, int, error) {
	var (
		b    *[]byte
		n    int
		rerr error
	)
	err := s.raw.Read(func(fd uintptr) bool {
		p := bufPool.Get().(*[]byte)
		for {
			n, rerr = syscall.Read(int(fd), *p)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			bufPool.Put(p)
			return false // wait until readable
		}
		b = p
		return true
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		if b != nil {
			bufPool.Put(b)
		}
		return nil, 0, err
	}
	return b, n, nil
}

// expire ends s if it has been idle for u.idle, else sets its deadline to
// when it will have been.
func (u *udpForward) expire(s *udpSession) bool {
	u.mu.Lock()
	left := time.Duration(s.last.Load() + int64(u.idle) - u.now())
	if left > 0 {
		u.mu.Unlock()
		s.conn.SetReadDeadline(time.Now().Add(left))
		return false
	}
	if u.sessions[s.key] == s {
		delete(u.sessions, s.key)
	}
	u.mu.Unlock()
	s.conn.Close()
	u.log.Debug("portfwd: session idle; closed", "from", s.key.client)
	return true
}

// end forgets s after an error or close.
func (u *udpForward) end(s *udpSession) {
	u.mu.Lock()
	if u.sessions[s.key] == s {
		delete(u.sessions, s.key)
	}
	u.mu.Unlock()
	s.conn.Close()
}

func (u *udpForward) close() {
	u.mu.Lock()
	u.closed = true
	sessions := u.sessions
	u.sessions = nil
	u.mu.Unlock()
	u.ln.Close()
	for _, s := range sessions {
		s.conn.Close()
	}
	u.wg.Wait()
}

// setPktinfo asks the kernel for each datagram's destination address.
func setPktinfo(ln *net.UDPConn, v6 bool) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if v6 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		}
	})
	if err == nil {
		err = serr
	}
	return err
}

// parsePktinfo returns the destination address (and, for IPv6, the
// interface) of a datagram from its control messages; the zero Addr if
// there is none.
func parsePktinfo(oob []byte) (netip.Addr, uint32) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.Addr{}, 0
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst, ipi_addr; }
			return netip.AddrFrom4([4]byte(m.Data[8:12])), 0
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			// struct in6_pktinfo { struct in6_addr ipi6_addr; unsigned ipi6_ifindex; }
			return netip.AddrFrom16([16]byte(m.Data[:16])), binary.NativeEndian.Uint32(m.Data[16:20])
		}
	}
	return netip.Addr{}, 0
}

// replyPktinfo is the control message that sends a reply from local.
func replyPktinfo(local netip.Addr, ifindex uint32) []byte {
	switch {
	case !local.IsValid() || local.IsMulticast() || local == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return nil // the kernel picks: no reply comes from a group address
	case local.Is4():
		return unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: local.As4()})
	default:
		return unix.PktInfo6(&unix.Inet6Pktinfo{Addr: local.As16(), Ifindex: ifindex})
	}
}
