package frameio

import "context"

// Relay copies frames from src to dst in batches of up to batch frames
// until src fails (close src to stop it) or ctx is done; ctx is checked
// after each batch, so a quiet src holds Relay until its next frame.
//
// It is the raw relay the switch is measured against: one read and one
// write per batch, no parsing, so a benchmark of the switch with the same
// socket hops shows only what switching costs.
//
// Offloads cross when both ends speak them: from a src that reads them
// (OffloadReader), GSO frames go whole to a dst that takes them
// (GSOWriter) and partial checksums to one that completes them
// (PartialWriter); for any other dst, Relay completes a partial checksum
// itself and drops a GSO frame (Relay does not cut).
func Relay(ctx context.Context, src, dst Port, batch int) error {
	if batch <= 0 {
		batch = 64
	}
	mtu := src.MTU()
	if dst.MTU() > mtu {
		mtu = dst.MTU()
	}
	size := FrameSize(mtu)
	offload := false
	if r, ok := src.(OffloadReader); ok && r.ReadsOffload() {
		offload, size = true, max(size, MaxGSOLen)
	}
	partialOK, gsoOK := false, false
	if w, ok := dst.(PartialWriter); ok {
		partialOK = w.TakesPartial()
	}
	if w, ok := dst.(GSOWriter); ok {
		gsoOK = w.TakesGSO()
	}
	frames := NewBatchSize(batch, size)
	for {
		n, err := src.ReadBatch(frames)
		if offload && !(partialOK && gsoOK) {
			n = settle(frames[:n], partialOK, gsoOK)
		}
		if n > 0 {
			if _, werr := dst.WriteBatch(frames[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// settle makes frames fit a dst that takes partial checksums (partialOK)
// or GSO frames (gsoOK) or neither: partial checksums are completed, GSO
// frames it cannot take dropped; the frames kept move to the front.
func settle(frames []Frame, partialOK, gsoOK bool) int {
	k := 0
	for i := range frames {
		if !frames[i].Fit(partialOK, gsoOK) {
			continue
		}
		frames[i], frames[k] = frames[k], frames[i]
		k++
	}
	return k
}
