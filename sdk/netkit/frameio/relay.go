package frameio

import "context"

// Relay copies frames from src to dst in batches of up to batch frames
// until src fails (close src to stop it) or ctx is done; ctx is checked
// after each batch, so a quiet src holds Relay until its next frame.
//
// It is the raw relay the switch is measured against: one read and one
// write per batch, no parsing, so a benchmark of the switch with the same
// socket hops shows only what switching costs.
func Relay(ctx context.Context, src, dst Port, batch int) error {
	if batch <= 0 {
		batch = 64
	}
	mtu := src.MTU()
	if dst.MTU() > mtu {
		mtu = dst.MTU()
	}
	frames := NewBatch(batch, mtu)
	for {
		n, err := src.ReadBatch(frames)
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
