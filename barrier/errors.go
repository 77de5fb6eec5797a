package barrier

import "errors"

// ErrLeft is the cause of a seat's context after Leave deleted it.
var ErrLeft = errors.New("barrier: left the double barrier")
var (
	// ErrLost is the cause of a double-barrier seat's context when the seat
	// can no longer be trusted (its lease was lost or its key deleted), and
	// the error of an Enter whose seat was lost while it waited.
	ErrLost = errors.New("barrier: lost")
	// ErrCorrupt reports a value under a barrier's keys that it did not write.
	ErrCorrupt = errors.New("barrier: corrupt value")
	// ErrCountMismatch reports a latch created elsewhere with another count.
	ErrCountMismatch = errors.New("barrier: latch count mismatch")
	// ErrDeleted reports a latch deleted while waited on.
	ErrDeleted = errors.New("barrier: latch deleted")
)
