package leasekeeper

import (
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// State is the keeper's view of its lease, after Curator's connection states.
type State int

const (
	// Connected: renewals succeed.
	Connected State = iota + 1
	// Suspended: renewals are failing but the safe deadline has not passed;
	// holdings are still valid.
	Suspended
	// Lost: the lease can no longer be trusted; its context is canceled. The
	// keeper is granting a new lease.
	Lost
	// Reconnected: a new lease generation was granted after a loss. Holdings
	// of earlier generations stay lost.
	Reconnected
	// Closed: Close was called; the lease was revoked.
	Closed
)

func (s State) String() string {
	switch s {
	case Connected:
		return "Connected"
	case Suspended:
		return "Suspended"
	case Lost:
		return "Lost"
	case Reconnected:
		return "Reconnected"
	case Closed:
		return "Closed"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Live reports whether holdings on the current lease are valid in state s.
func (s State) Live() bool { return s == Connected || s == Suspended || s == Reconnected }

// Event is one state change.
type Event struct {
	State      State
	Prev       State
	Lease      clientv3.LeaseID // the lease the state refers to
	Generation uint64           // 1 for the first lease, +1 for each new grant
	At         time.Time
	SafeUntil  time.Time // the lease's safe deadline when the change happened
	Err        error     // why, for Suspended and Lost
}
