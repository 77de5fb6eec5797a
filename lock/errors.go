package lock

import "errors"

var (
	// ErrLocked is returned by TryLock when another holder or an earlier
	// waiter is in the queue.
	ErrLocked = errors.New("lock: held by another holder")
	// ErrLost is the cause of a holding's context when the holding can no
	// longer be trusted (its lease was lost, or its key is gone), and the
	// error of a Lock whose waiter lost its lease or key while waiting.
	ErrLost = errors.New("lock: lost")
	// ErrRevoked is the cause of a holding's context when ForceRelease took
	// the lock away. It comes wrapped together with ErrLost, so code that
	// only checks ErrLost still stops.
	ErrRevoked = errors.New("lock: revoked")
	// ErrExpired is the cause of a holding's context when it reached the
	// bound set by WithMaxHold. It comes wrapped together with ErrLost.
	ErrExpired = errors.New("lock: hold expired")
	// ErrUnlocked is the cause of a holding's context after Unlock.
	ErrUnlocked = errors.New("lock: unlocked")
	// ErrNotHeld is returned by RequestRelease and ForceRelease when nobody
	// holds the lock.
	ErrNotHeld = errors.New("lock: not held")
	// ErrCorrupt reports a value under the lock's keys that concord did not
	// write.
	ErrCorrupt = errors.New("lock: corrupt value")
)
