package discovery

import "errors"

var (
	// ErrExists reports that another process (another lease) holds the
	// instance or member ID.
	ErrExists = errors.New("discovery: ID already registered by another lease")
	// ErrLost reports that the record is not in etcd right now: its lease
	// was lost and the next generation has not re-registered it yet.
	ErrLost = errors.New("discovery: lost")
	// ErrClosed is returned by calls on a deregistered record.
	ErrClosed = errors.New("discovery: deregistered")
)

// ErrCorrupt reports a value under a discovery key that is not an
// instance record this package wrote (a foreign or damaged value). Such
// records are skipped, never trusted.
var ErrCorrupt = errors.New("discovery: corrupt value")
