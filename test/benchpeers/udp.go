package benchpeers

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The small-UDP test: the guest sends size-byte datagrams as fast as it
// can for a while, the host side counts what arrives. A TCP control
// connection to the sink frames the run: "start" zeroes the count,
// "stop" (sent once the sender is done and the path had a second to
// drain) returns it with the time between the first and the last
// datagram, so the rate is what the network delivered, whatever queued
// on the way.

// UDPResult is what the sink counted.
type UDPResult struct {
	Sent      int64   `json:"sent"`
	Received  int64   `json:"received"`
	Seconds   float64 `json:"seconds"` // first to last datagram received
	PerSecond float64 `json:"per_second"`
}

// ServeUDPSink counts datagrams on pc and answers control connections on
// ln.
func ServeUDPSink(ln net.Listener, pc net.PacketConn) error {
	var (
		count       atomic.Int64
		mu          sync.Mutex
		first, last time.Time
	)
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			now := time.Now()
			mu.Lock()
			if first.IsZero() {
				first = now
			}
			last = now
			mu.Unlock()
			count.Add(1)
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				switch strings.TrimSpace(line) {
				case "start":
					mu.Lock()
					count.Store(0)
					first, last = time.Time{}, time.Time{}
					mu.Unlock()
					fmt.Fprintln(c, "ok")
				case "stop":
					mu.Lock()
					res := UDPResult{Received: count.Load(), Seconds: last.Sub(first).Seconds()}
					mu.Unlock()
					if res.Seconds > 0 {
						res.PerSecond = float64(res.Received) / res.Seconds
					}
					json.NewEncoder(c).Encode(res)
				}
			}
		}()
	}
}

// RunUDPBlast sends size-byte datagrams to dataAddr for d, framed by the
// sink's control port ctrlAddr, and returns what the sink counted.
func RunUDPBlast(ctrlAddr, dataAddr string, size int, d time.Duration) (UDPResult, error) {
	ctl, err := net.DialTimeout("tcp", ctrlAddr, 5*time.Second)
	if err != nil {
		return UDPResult{}, err
	}
	defer ctl.Close()
	ctl.SetDeadline(time.Now().Add(d + 60*time.Second))
	r := bufio.NewReader(ctl)
	if _, err := fmt.Fprintln(ctl, "start"); err != nil {
		return UDPResult{}, err
	}
	if line, err := r.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ok" {
		return UDPResult{}, fmt.Errorf("udp sink: start: %q %v", line, err)
	}
	uc, err := net.Dial("udp", dataAddr)
	if err != nil {
		return UDPResult{}, err
	}
	buf := make([]byte, max(size, 1))
	var sent int64
	end := time.Now().Add(d)
	for i := 0; ; i++ {
		if i&255 == 0 && time.Now().After(end) {
			break
		}
		// A full queue (ENOBUFS) is the network not keeping up: go on.
		if _, err := uc.Write(buf); err == nil {
			sent++
		}
	}
	uc.Close()
	time.Sleep(time.Second) // let the queues on the way drain
	if _, err := fmt.Fprintln(ctl, "stop"); err != nil {
		return UDPResult{}, err
	}
	var res UDPResult
	if err := json.NewDecoder(r).Decode(&res); err != nil {
		return UDPResult{}, fmt.Errorf("udp sink: stop: %w", err)
	}
	res.Sent = sent
	return res, nil
}
