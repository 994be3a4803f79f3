package frameio

import (
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// chunkReader hands out data a few bytes at a time, as a socket may.
type chunkReader struct {
	data  []byte
	chunk int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), r.chunk, len(r.data))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

// FuzzStreamDecode feeds arbitrary bytes, in arbitrary pieces, to the
// stream reader and checks it against a plain decoder: same frames, and
// the same end (a bad length, or the input running out), never a panic
// or a buffer sized by the input.
func FuzzStreamDecode(f *testing.F) {
	frame := make([]byte, 60)
	f.Add(AppendStreamFrame(nil, frame), uint8(1))
	f.Add(AppendStreamFrame(AppendStreamFrame(nil, frame), frame[:14]), uint8(200))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}, uint8(3))
	f.Add([]byte{0, 0, 0, 0}, uint8(4))
	f.Add(AppendStreamFrame(nil, make([]byte, 1518))[:700], uint8(255))
	const mtu = 1500
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		r := newFrameReader(&chunkReader{data: data, chunk: int(chunk) + 1}, mtu, 0)
		batch := NewBatch(3, mtu)
		var got [][]byte
		var err error
		for err == nil {
			var n int
			n, _, _, err = r.readBatch(batch)
			for i := 0; i < n; i++ {
				got = append(got, append([]byte(nil), batch[i].Bytes()...))
			}
			if n == 0 && err == nil {
				t.Fatal("readBatch returned nothing and no error")
			}
		}
		if len(r.buf) != 2*(StreamHeaderLen+FrameSize(mtu)) && len(r.buf) != DefaultStreamReadBuffer {
			t.Fatalf("reassembly buffer grew to %d bytes", len(r.buf))
		}

		// The plain decoder.
		var want [][]byte
		var wantErr error = io.EOF
		rest := data
		for len(rest) >= StreamHeaderLen {
			l := binary.BigEndian.Uint32(rest)
			if l < MinFrameLen || l > uint32(FrameSize(mtu)) {
				wantErr = &FrameLengthError{Length: l, Max: FrameSize(mtu)}
				break
			}
			if len(rest)-StreamHeaderLen < int(l) {
				break
			}
			want = append(want, rest[StreamHeaderLen:StreamHeaderLen+int(l)])
			rest = rest[StreamHeaderLen+int(l):]
		}
		if len(got) != len(want) {
			t.Fatalf("decoded %d frames, want %d", len(got), len(want))
		}
		for i := range got {
			if string(got[i]) != string(want[i]) {
				t.Fatalf("frame %d differs", i)
			}
		}
		var le, wle *FrameLengthError
		switch {
		case errors.As(wantErr, &wle):
			if !errors.As(err, &le) || *le != *wle {
				t.Fatalf("ended with %v, want %v", err, wantErr)
			}
		case err != io.EOF:
			t.Fatalf("ended with %v, want EOF", err)
		}
	})
}
