package benchpeers

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"
)

// ServeRR echoes every message of size bytes back on each TCP connection
// accepted on ln: the server half of the request/response test.
func ServeRR(ln net.Listener, size int) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetNoDelay(true)
			}
			buf := make([]byte, size)
			for {
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
}

// RRResult is one request/response run: a single TCP connection, one
// message in flight, so every transaction is one round trip through the
// network and back.
type RRResult struct {
	Transactions int     `json:"transactions"`
	Seconds      float64 `json:"seconds"`
	P50us        float64 `json:"p50_us"`
	P99us        float64 `json:"p99_us"`
	Meanus       float64 `json:"mean_us"`
	PerSecond    float64 `json:"per_second"`
}

// RunRR connects to addr and exchanges size-byte messages for d (or n
// transactions when n > 0), timing each round trip.
func RunRR(addr string, size int, d time.Duration, n int, connectTimeout time.Duration) (RRResult, error) {
	c, err := net.DialTimeout("tcp", addr, connectTimeout)
	if err != nil {
		return RRResult{}, err
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	if size < 1 {
		size = 1
	}
	out := make([]byte, size)
	in := make([]byte, size)
	rtts := make([]time.Duration, 0, 1<<16)
	start := time.Now()
	end := start.Add(d)
	// A stalled path must not hang the harness: each exchange has 5 s.
	for i := 0; ; i++ {
		if n > 0 && i >= n || n <= 0 && i%64 == 0 && time.Now().After(end) {
			break
		}
		out[0] = byte(i)
		t0 := time.Now()
		c.SetDeadline(t0.Add(5 * time.Second))
		if _, err := c.Write(out); err != nil {
			return RRResult{}, err
		}
		if _, err := io.ReadFull(c, in); err != nil {
			return RRResult{}, err
		}
		if in[0] != out[0] {
			return RRResult{}, errors.New("rr: reply out of step")
		}
		rtts = append(rtts, time.Since(t0))
	}
	total := time.Since(start)
	if len(rtts) == 0 {
		return RRResult{}, fmt.Errorf("rr: no transaction in %s", d)
	}
	var sum time.Duration
	for _, r := range rtts {
		sum += r
	}
	slices.Sort(rtts)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	return RRResult{
		Transactions: len(rtts),
		Seconds:      total.Seconds(),
		P50us:        us(rtts[len(rtts)/2]),
		P99us:        us(rtts[len(rtts)*99/100]),
		Meanus:       us(sum / time.Duration(len(rtts))),
		PerSecond:    float64(len(rtts)) / total.Seconds(),
	}, nil
}
