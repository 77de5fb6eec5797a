package semaphore

import (
	"crypto/rand"
	"encoding/hex"
)

// Waiting uses internal/watch's pool, as package lock does: one watch on the
// semaphore's whole prefix with no start revision, reused across
// acquisitions (internal/wait watches one predecessor, where a semaphore
// needs the whole queue).

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return hex.EncodeToString(b[:])
}
