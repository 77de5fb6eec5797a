package leasekeeper

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Lease is one generation of the keeper's lease. Recipes attach their keys to
// ID and run holdings under Context.
type Lease struct {
	id     clientv3.LeaseID
	gen    uint64
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// ID returns the etcd lease ID.
func (l *Lease) ID() clientv3.LeaseID { return l.id }

// Generation returns 1 for the keeper's first lease and one more for each
// lease granted after a loss.
func (l *Lease) Generation() uint64 { return l.gen }

// Context is canceled as soon as the lease can no longer be trusted: the safe
// deadline passed without a renewal, etcd reported the lease gone, or the
// keeper was closed. Its cause (context.Cause) errors.Is ErrLeaseLost.
func (l *Lease) Context() context.Context { return l.ctx }

// Done is Context().Done().
func (l *Lease) Done() <-chan struct{} { return l.ctx.Done() }

// Err returns nil while the lease is live and the cause of its loss after.
func (l *Lease) Err() error {
	if l.ctx.Err() == nil {
		return nil
	}
	return context.Cause(l.ctx)
}
