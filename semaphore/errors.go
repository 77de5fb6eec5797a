package semaphore

import "errors"

var (
	// ErrNoPermits is returned by TryAcquire when the permits asked for are
	// not free at once (or earlier requests are waiting).
	ErrNoPermits = errors.New("semaphore: no permits available")
	// ErrLost is the cause of a permit's context when it can no longer be
	// trusted (its lease was lost or its key deleted), and the error of an
	// Acquire whose request lost its lease or key while waiting.
	ErrLost = errors.New("semaphore: lost")
	// ErrExpired is the cause of a permit's context when it reached the
	// bound set by WithMaxHold. It comes wrapped together with ErrLost.
	ErrExpired = errors.New("semaphore: permit expired")
	// ErrReleased is the cause of a permit's context after Release.
	ErrReleased = errors.New("semaphore: released")
	// ErrLimitMismatch is returned when the limit stored with the semaphore
	// differs from the one this Semaphore was opened with; call SetLimit to
	// change it deliberately.
	ErrLimitMismatch = errors.New("semaphore: stored limit differs")
	// ErrCorrupt reports a value under the semaphore's keys that concord did
	// not write.
	ErrCorrupt = errors.New("semaphore: corrupt value")
	// ErrInUse is returned by Delete while permits are held or requested.
	ErrInUse = errors.New("semaphore: in use")
)
