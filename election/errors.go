package election

import "errors"

var (
	// ErrLost is the cause of a term's context when the term can no longer be
	// trusted (its lease was lost, or its key was deleted), and the error of
	// a Campaign whose candidate lost its lease or key while it waited.
	ErrLost = errors.New("election: lost")
	// ErrNotLeader is returned by Proclaim on a term that was resigned.
	ErrNotLeader = errors.New("election: not the leader")
	// ErrNoLeader is returned by Leader when no candidate holds the election.
	ErrNoLeader = errors.New("election: no leader")
	// ErrResigned is the cause of a term's context after Resign.
	ErrResigned = errors.New("election: term resigned")
	// ErrCorrupt reports a key under the election's prefix that no
	// candidate wrote: not a candidate key's shape, or on no lease.
	ErrCorrupt = errors.New("election: corrupt value")
)
