// Package vuproto is the wire format of the vhost-user protocol and the
// layout of a split virtqueue, shared by the back-end (vhostuser) and the
// front-end (vhostuserdriver). Everything is little-endian, as on every
// platform vhost-user runs on.
package vuproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// Requests (front-end to back-end).
const (
	GetFeatures         = 1
	SetFeatures         = 2
	SetOwner            = 3
	ResetOwner          = 4
	SetMemTable         = 5
	SetLogBase          = 6
	SetLogFD            = 7
	SetVringNum         = 8
	SetVringAddr        = 9
	SetVringBase        = 10
	GetVringBase        = 11
	SetVringKick        = 12
	SetVringCall        = 13
	SetVringErr         = 14
	GetProtocolFeatures = 15
	SetProtocolFeatures = 16
	GetQueueNum         = 17
	SetVringEnable      = 18
	SendRARP            = 19
	NetSetMTU           = 20
	SetBackendReqFD     = 21
	IOTLBMsg            = 22
	SetVringEndian      = 23
	GetConfig           = 24
	SetConfig           = 25
	GetInflightFD       = 31
	SetInflightFD       = 32
	ResetDevice         = 34
	GetMaxMemSlots      = 36
	AddMemReg           = 37
	RemMemReg           = 38
	SetStatus           = 39
	GetStatus           = 40
)

var names = map[uint32]string{
	GetFeatures: "GET_FEATURES", SetFeatures: "SET_FEATURES", SetOwner: "SET_OWNER",
	ResetOwner: "RESET_OWNER", SetMemTable: "SET_MEM_TABLE", SetLogBase: "SET_LOG_BASE",
	SetLogFD: "SET_LOG_FD", SetVringNum: "SET_VRING_NUM", SetVringAddr: "SET_VRING_ADDR",
	SetVringBase: "SET_VRING_BASE", GetVringBase: "GET_VRING_BASE", SetVringKick: "SET_VRING_KICK",
	SetVringCall: "SET_VRING_CALL", SetVringErr: "SET_VRING_ERR",
	GetProtocolFeatures: "GET_PROTOCOL_FEATURES", SetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	GetQueueNum: "GET_QUEUE_NUM", SetVringEnable: "SET_VRING_ENABLE", SendRARP: "SEND_RARP",
	NetSetMTU: "NET_SET_MTU", SetBackendReqFD: "SET_BACKEND_REQ_FD", IOTLBMsg: "IOTLB_MSG",
	SetVringEndian: "SET_VRING_ENDIAN", GetConfig: "GET_CONFIG", SetConfig: "SET_CONFIG",
	GetInflightFD: "GET_INFLIGHT_FD", SetInflightFD: "SET_INFLIGHT_FD", ResetDevice: "RESET_DEVICE",
	GetMaxMemSlots: "GET_MAX_MEM_SLOTS", AddMemReg: "ADD_MEM_REG", RemMemReg: "REM_MEM_REG",
	SetStatus: "SET_STATUS", GetStatus: "GET_STATUS",
}

// Name is a request's name for logs.
func Name(req uint32) string {
	if n, ok := names[req]; ok {
		return n
	}
	return fmt.Sprintf("request %d", req)
}

// Header flags.
const (
	Version       = 0x1
	VersionMask   = 0x3
	FlagReply     = 1 << 2
	FlagNeedReply = 1 << 3
)

// Feature bits (virtio and vhost-user).
const (
	NetFCsum          = 0  // the driver may leave checksums partial (TX)
	NetFGuestCsum     = 1  // the device may hand over partial checksums (RX)
	NetFGuestTSO4     = 7  // the device may hand over TCP/IPv4 GSO frames (RX)
	NetFGuestTSO6     = 8  // the device may hand over TCP/IPv6 GSO frames (RX)
	NetFHostTSO4      = 11 // the driver may send TCP/IPv4 GSO frames (TX)
	NetFHostTSO6      = 12 // the driver may send TCP/IPv6 GSO frames (TX)
	NetFHostECN       = 13 // ... with the ECN bit (CWR) set
	NetFMTU           = 3
	NetFMAC           = 5
	NetFMrgRxbuf      = 15
	NetFStatus        = 16
	FRingIndirectDesc = 28
	FRingEventIdx     = 29
	FProtocolFeatures = 30 // VHOST_USER_F_PROTOCOL_FEATURES
	FVersion1         = 32
)

// Protocol feature bits.
const (
	PFMQ       = 0
	PFReplyAck = 3
	PFNetMTU   = 4
	PFConfig   = 9
)

// Sizes and limits.
const (
	HeaderSize = 12
	// MaxPayload bounds a message's payload: the largest request a
	// net back-end takes is SET_MEM_TABLE with 8 regions (264 bytes);
	// GET_CONFIG carries up to 256 bytes of config space.
	MaxPayload = 4096
	// MaxFDs is the most file descriptors one message may carry (one per
	// memory region).
	MaxFDs     = 8
	MaxRegions = 8
	// VringIdxMask and VringNoFDMask split the u64 of SET_VRING_KICK/CALL/ERR.
	VringIdxMask  = 0xff
	VringNoFDMask = 1 << 8

	MemRegionSize    = 32
	VringAddrSize    = 40
	VringStateSize   = 8
	ConfigHeaderSize = 12
)

// The virtio-net header (struct virtio_net_hdr) before each frame.
const (
	NetHdrFNeedsCsum = 1    // flags: the checksum at csum_start+csum_offset is partial
	NetHdrGSONone    = 0    // gso_type
	NetHdrGSOTCPv4   = 1    // gso_type
	NetHdrGSOUDP     = 3    // gso_type (UFO, not offered)
	NetHdrGSOTCPv6   = 4    // gso_type
	NetHdrGSOECN     = 0x80 // gso_type bit: the TCP segment carries CWR
)

// Split-ring flags.
const (
	DescFNext         = 1
	DescFWrite        = 2
	DescFIndirect     = 4
	UsedFNoNotify     = 1
	AvailFNoInterrupt = 1
	MaxQueueSize      = 32768
)

// Header is a message header.
type Header struct {
	Request, Flags, Size uint32
}

// ErrMalformed wraps every parsing error.
var ErrMalformed = errors.New("malformed vhost-user message")

// ParseHeader decodes and checks a header.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: %d bytes of header, want %d", ErrMalformed, len(b), HeaderSize)
	}
	h := Header{
		Request: binary.LittleEndian.Uint32(b[0:]),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
	if h.Flags&VersionMask != Version {
		return h, fmt.Errorf("%w: %s has version %d, want 1", ErrMalformed, Name(h.Request), h.Flags&VersionMask)
	}
	if h.Size > MaxPayload {
		return h, fmt.Errorf("%w: %s has a payload of %d bytes, more than %d", ErrMalformed, Name(h.Request), h.Size, MaxPayload)
	}
	return h, nil
}

// PutHeader encodes h into b[:HeaderSize].
func PutHeader(b []byte, h Header) {
	binary.LittleEndian.PutUint32(b[0:], h.Request)
	binary.LittleEndian.PutUint32(b[4:], h.Flags)
	binary.LittleEndian.PutUint32(b[8:], h.Size)
}

func need(req uint32, p []byte, n int) error {
	if len(p) < n {
		return fmt.Errorf("%w: %s has a payload of %d bytes, want %d", ErrMalformed, Name(req), len(p), n)
	}
	return nil
}

// U64 decodes a u64 payload.
func U64(req uint32, p []byte) (uint64, error) {
	if err := need(req, p, 8); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(p), nil
}

// VringState is the payload of SET_VRING_NUM/BASE/ENABLE and GET_VRING_BASE.
type VringState struct{ Index, Num uint32 }

// ParseVringState decodes a vring state.
func ParseVringState(req uint32, p []byte) (VringState, error) {
	if err := need(req, p, VringStateSize); err != nil {
		return VringState{}, err
	}
	return VringState{binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:])}, nil
}

// Put encodes s.
func (s VringState) Put(b []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, s.Index)
	return binary.LittleEndian.AppendUint32(b, s.Num)
}

// VringAddr is the payload of SET_VRING_ADDR: front-end user addresses.
type VringAddr struct {
	Index, Flags           uint32
	Desc, Used, Avail, Log uint64
}

// ParseVringAddr decodes a vring address.
func ParseVringAddr(req uint32, p []byte) (VringAddr, error) {
	if err := need(req, p, VringAddrSize); err != nil {
		return VringAddr{}, err
	}
	le := binary.LittleEndian
	return VringAddr{le.Uint32(p), le.Uint32(p[4:]), le.Uint64(p[8:]), le.Uint64(p[16:]), le.Uint64(p[24:]), le.Uint64(p[32:])}, nil
}

// Put encodes a.
func (a VringAddr) Put(b []byte) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, a.Index)
	b = le.AppendUint32(b, a.Flags)
	b = le.AppendUint64(b, a.Desc)
	b = le.AppendUint64(b, a.Used)
	b = le.AppendUint64(b, a.Avail)
	return le.AppendUint64(b, a.Log)
}

// MemRegion is one region of SET_MEM_TABLE.
type MemRegion struct {
	GuestPhysAddr, MemorySize, UserspaceAddr, MmapOffset uint64
}

// ParseMemTable decodes SET_MEM_TABLE's regions. fds must hold one fd per
// region.
func ParseMemTable(req uint32, p []byte, nfds int) ([]MemRegion, error) {
	if err := need(req, p, 8); err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint32(p)
	if n == 0 || n > MaxRegions {
		return nil, fmt.Errorf("%w: %s has %d regions, want 1 to %d", ErrMalformed, Name(req), n, MaxRegions)
	}
	if err := need(req, p, 8+int(n)*MemRegionSize); err != nil {
		return nil, err
	}
	if nfds != int(n) {
		return nil, fmt.Errorf("%w: %s has %d regions but %d file descriptors", ErrMalformed, Name(req), n, nfds)
	}
	rs := make([]MemRegion, n)
	le := binary.LittleEndian
	for i := range rs {
		q := p[8+i*MemRegionSize:]
		rs[i] = MemRegion{le.Uint64(q), le.Uint64(q[8:]), le.Uint64(q[16:]), le.Uint64(q[24:])}
	}
	return rs, nil
}

// PutMemTable encodes regions.
func PutMemTable(b []byte, rs []MemRegion) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, uint32(len(rs)))
	b = le.AppendUint32(b, 0)
	for _, r := range rs {
		b = le.AppendUint64(b, r.GuestPhysAddr)
		b = le.AppendUint64(b, r.MemorySize)
		b = le.AppendUint64(b, r.UserspaceAddr)
		b = le.AppendUint64(b, r.MmapOffset)
	}
	return b
}

// Config is the payload of GET_CONFIG/SET_CONFIG.
type Config struct {
	Offset, Size, Flags uint32
	Data                []byte
}

// ParseConfig decodes a config payload; Data aliases p.
func ParseConfig(req uint32, p []byte) (Config, error) {
	if err := need(req, p, ConfigHeaderSize); err != nil {
		return Config{}, err
	}
	le := binary.LittleEndian
	c := Config{Offset: le.Uint32(p), Size: le.Uint32(p[4:]), Flags: le.Uint32(p[8:])}
	if uint64(c.Size) > uint64(len(p)-ConfigHeaderSize) {
		return c, fmt.Errorf("%w: %s asks for %d bytes of config but carries room for %d", ErrMalformed, Name(req), c.Size, len(p)-ConfigHeaderSize)
	}
	c.Data = p[ConfigHeaderSize : ConfigHeaderSize+int(c.Size)]
	return c, nil
}

// Msg is one message read from a connection.
type Msg struct {
	Header
	Payload []byte // aliases the reader's buffer until the next read
	FDs     []int  // the receiver owns these and must close them
}

// Conn reads and writes messages on a unix stream connection.
type Conn struct {
	C       *net.UnixConn
	buf     [HeaderSize + MaxPayload]byte
	oob     []byte
	wbuf    []byte
	Timeout time.Duration // for writes and, on the front-end side, replies; 0 = none
}

// NewConn wraps c.
func NewConn(c *net.UnixConn) *Conn {
	return &Conn{C: c, oob: make([]byte, unix.CmsgSpace(4*(MaxFDs+1)))}
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// readFull reads len(b) bytes, collecting the fds that come with them.
func (c *Conn) readFull(b []byte, fds []int) ([]int, error) {
	for got := 0; got < len(b); {
		n, oobn, flags, _, err := c.C.ReadMsgUnix(b[got:], c.oob)
		if oobn > 0 {
			more, perr := parseRights(c.oob[:oobn])
			fds = append(fds, more...)
			if perr != nil {
				return fds, perr
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return fds, fmt.Errorf("%w: more than %d file descriptors in one message", ErrMalformed, MaxFDs)
		}
		if len(fds) > MaxFDs {
			return fds, fmt.Errorf("%w: %d file descriptors in one message, more than %d", ErrMalformed, len(fds), MaxFDs)
		}
		if err != nil {
			return fds, err
		}
		if n == 0 {
			return fds, fmt.Errorf("connection closed mid-message")
		}
		got += n
	}
	return fds, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: bad control message: %v", ErrMalformed, err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		fds = append(fds, got...)
		if err != nil {
			return fds, fmt.Errorf("%w: bad SCM_RIGHTS: %v", ErrMalformed, err)
		}
	}
	return fds, nil
}

// Read reads one message. On error every fd received is closed.
func (c *Conn) Read() (Msg, error) {
	fds, err := c.readFull(c.buf[:HeaderSize], nil)
	if err != nil {
		closeAll(fds)
		return Msg{}, err
	}
	h, err := ParseHeader(c.buf[:HeaderSize])
	if err != nil {
		closeAll(fds)
		return Msg{}, err
	}
	p := c.buf[HeaderSize : HeaderSize+int(h.Size)]
	if fds, err = c.readFull(p, fds); err != nil {
		closeAll(fds)
		return Msg{}, err
	}
	return Msg{Header: h, Payload: p, FDs: fds}, nil
}

// Write sends one message with fds (may be nil).
func (c *Conn) Write(h Header, payload []byte, fds []int) error {
	h.Size = uint32(len(payload))
	c.wbuf = append(c.wbuf[:0], make([]byte, HeaderSize)...)
	PutHeader(c.wbuf, h)
	c.wbuf = append(c.wbuf, payload...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if c.Timeout > 0 {
		c.C.SetWriteDeadline(time.Now().Add(c.Timeout))
	}
	n, _, err := c.C.WriteMsgUnix(c.wbuf, oob, nil)
	if err == nil && n < len(c.wbuf) {
		_, err = c.C.Write(c.wbuf[n:])
	}
	return err
}

// Desc is one split-ring descriptor.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Ring sizes for a queue of num entries (without event-idx fields beyond
// the ones the layout always has).
func DescSize(num int) int  { return 16 * num }
func AvailSize(num int) int { return 4 + 2*num + 2 }
func UsedSize(num int) int  { return 4 + 8*num + 2 }
