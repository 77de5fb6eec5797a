package leasekeeper

import (
	"errors"

	"github.com/concordkit/concord/internal/compat"
)

var (
	// ErrLeaseLost is the cause of every lease context's cancellation.
	ErrLeaseLost = errors.New("leasekeeper: lease lost")
	// ErrClosed is returned by calls on a closed keeper.
	ErrClosed = errors.New("leasekeeper: keeper closed")
	// ErrInvalidTTL reports a TTL etcd cannot honour as asked.
	ErrInvalidTTL = errors.New("leasekeeper: invalid TTL")
	// ErrUnsupported reports an etcd server concord cannot be right on
	// (etcd 3.4; see New).
	ErrUnsupported = compat.ErrUnsupported
)
