package frameio

import (
	"encoding/binary"
	"fmt"
	"io"
)

// StreamHeaderLen is the big-endian length before each frame on a stream
// socket (QEMU's -netdev stream and socket, socket_vmnet).
const StreamHeaderLen = 4

// DefaultStreamReadBuffer is how much one read of a stream socket may
// take, so one system call yields many frames.
const DefaultStreamReadBuffer = 256 << 10

// FrameLengthError is a length prefix no frame of the port can have. The
// stream is desynchronised from then on: nothing after it can be trusted,
// so the connection is closed.
type FrameLengthError struct {
	Length uint32
	Max    int
}

func (e *FrameLengthError) Error() string {
	return fmt.Sprintf("frameio: stream length prefix %d is outside %d..%d: the stream is desynchronised", e.Length, MinFrameLen, e.Max)
}

// AppendStreamFrame appends frame to dst as a stream carries it.
func AppendStreamFrame(dst, frame []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(frame)))
	return append(dst, frame...)
}

// frameReader splits a length-prefixed byte stream into frames. Its buffer
// is allocated once and never grows: a length is checked against maxFrame
// before anything waits for that many bytes, so a prefix of 0xFFFFFFFF
// costs nothing but the connection.
type frameReader struct {
	src      io.Reader
	buf      []byte
	r, w     int // unread input is buf[r:w]
	maxFrame int
	err      error // ends the stream once buffered frames are handed over
	// cut is set when the stream ended inside a frame (a peer that
	// closed half way through one) or on a length no frame can have:
	// one frame lost, for the caller to count.
	cut bool
}

func newFrameReader(src io.Reader, mtu, bufSize int) frameReader {
	max := FrameSize(mtu)
	if min := 2 * (StreamHeaderLen + max); bufSize < min {
		bufSize = min
	}
	return frameReader{src: src, buf: make([]byte, bufSize), maxFrame: max}
}

// readBatch copies whole frames into frames, reading from src only while
// it has none to hand over. It returns the frames, their bytes, and the
// frames dropped because a buffer was too small for them; err (io.EOF, a
// *FrameLengthError, a read error) comes only with n == 0.
func (d *frameReader) readBatch(frames []Frame) (n, bytes, dropped int, err error) {
	for n < len(frames) {
		if avail := d.w - d.r; avail >= StreamHeaderLen {
			l := binary.BigEndian.Uint32(d.buf[d.r:])
			if l < MinFrameLen || uint64(l) > uint64(d.maxFrame) {
				d.err = &FrameLengthError{Length: l, Max: d.maxFrame}
				d.r, d.w, d.cut = 0, 0, true
				continue
			}
			if avail-StreamHeaderLen >= int(l) {
				f := d.buf[d.r+StreamHeaderLen : d.r+StreamHeaderLen+int(l)]
				d.r += StreamHeaderLen + int(l)
				b := frames[n].Buf[:cap(frames[n].Buf)]
				if len(b) < len(f) {
					dropped++
					continue
				}
				frames[n].N = copy(b, f)
				bytes += len(f)
				n++
				continue
			}
		}
		if n > 0 || dropped > 0 {
			return n, bytes, dropped, nil
		}
		if d.err != nil {
			if d.r != d.w {
				d.r, d.w, d.cut = 0, 0, true // the rest of a frame never came
			}
			return 0, 0, 0, d.err
		}
		if d.r == d.w {
			d.r, d.w = 0, 0
		} else if len(d.buf)-d.r < StreamHeaderLen+d.maxFrame {
			d.w = copy(d.buf, d.buf[d.r:d.w])
			d.r = 0
		}
		m, rerr := d.src.Read(d.buf[d.w:])
		d.w += m
		if rerr != nil {
			d.err = rerr
		}
	}
	return n, bytes, dropped, nil
}
