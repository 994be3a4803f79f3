package benchpeers

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"time"
)

// A bulk TCP transfer, the harness's own stand-in for iperf3 TCP when
// iperf3 is not installed (the smoke test under make test). The client
// sends a 9-byte header, 'S' (it sends) or 'R' (the server sends) and
// the duration; the sender writes for the duration. With 'S' the server
// counts what arrives in that time and answers with the count; with 'R'
// the client counts until the server closes. No half-close: not every
// user-space network passes one on.

const bulkChunk = 128 << 10

// ServeBulk serves bulk transfers on ln.
func ServeBulk(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			var hdr [9]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			d := time.Duration(binary.BigEndian.Uint64(hdr[1:]))
			switch hdr[0] {
			case 'S':
				c.SetReadDeadline(time.Now().Add(d))
				n, _ := io.Copy(io.Discard, c)
				var out [8]byte
				binary.BigEndian.PutUint64(out[:], uint64(n))
				c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				c.Write(out[:])
				// Wait for the client to read it and hang up.
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				io.Copy(io.Discard, c)
			case 'R':
				sendFor(c, d)
			}
		}()
	}
}

// sendFor writes until d has passed; a write blocked then returns.
func sendFor(c net.Conn, d time.Duration) int64 {
	buf := make([]byte, bulkChunk)
	end := time.Now().Add(d)
	c.SetWriteDeadline(end)
	var n int64
	for time.Now().Before(end) {
		k, err := c.Write(buf)
		n += int64(k)
		if err != nil {
			break
		}
	}
	c.SetWriteDeadline(time.Time{})
	return n
}

// RunBulk transfers for d to the server at addr (reverse: from it) and
// returns the bytes the receiver counted and their rate in bit/s.
func RunBulk(addr string, d time.Duration, reverse bool) (bytes int64, bps float64, err error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	var hdr [9]byte
	hdr[0] = 'S'
	if reverse {
		hdr[0] = 'R'
	}
	binary.BigEndian.PutUint64(hdr[1:], uint64(d))
	if _, err := c.Write(hdr[:]); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	var secs float64
	if reverse {
		c.SetReadDeadline(start.Add(d + 30*time.Second))
		bytes, err = io.Copy(io.Discard, c)
		secs = time.Since(start).Seconds()
		if bytes > 0 && !errors.Is(err, os.ErrDeadlineExceeded) {
			err = nil // a reset after the data still counts what came
		}
	} else {
		sendFor(c, d)
		secs = d.Seconds()
		var out [8]byte
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err = io.ReadFull(c, out[:]); err == nil {
			bytes = int64(binary.BigEndian.Uint64(out[:]))
		}
	}
	if err != nil {
		return bytes, 0, err
	}
	if bytes == 0 {
		return 0, 0, errors.New("bulk: no bytes arrived")
	}
	return bytes, float64(bytes) * 8 / secs, nil
}
