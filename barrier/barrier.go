package barrier

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/leasekeeper"
)

// Barrier blocks waiters while it is held: Hold raises it, Release lowers it,
// Wait returns once it is down (Curator's DistributedBarrier). A Barrier made
// by NewLeased binds its hold to the keeper's lease, so the barrier falls by
// itself when the holder dies. Its methods are safe for concurrent use.
type Barrier struct {
	cli  *clientv3.Client
	k    *leasekeeper.Keeper // nil: the hold outlives the process
	name string
	key  string
	err  error
	tm   telemetry
}

// New returns a barrier named name whose hold is not bound to a lease. It
// does no I/O; an invalid name is reported by every call.
func New(cli *clientv3.Client, name string, opts ...Option) *Barrier {
	b := &Barrier{cli: cli, name: name, key: names.Prefix(name, "barrier") + "hold", tm: newTelemetry(opts)}
	b.err = names.Validate("barrier", name)
	if cli == nil && b.err == nil {
		b.err = errors.New("barrier: nil client")
	}
	return b
}

// NewLeased returns a barrier named name whose hold is bound to k's lease:
// if the holder's lease ends, the barrier falls.
func NewLeased(k *leasekeeper.Keeper, name string, opts ...Option) *Barrier {
	if k == nil {
		b := New(nil, name, opts...)
		b.err = errors.New("barrier: nil keeper")
		return b
	}
	b := New(k.Client(), name, opts...)
	b.k = k
	return b
}

// Hold raises the barrier. Holding a barrier that is already held (by
// anyone) succeeds and changes nothing. Cost: one transaction.
func (b *Barrier) Hold(ctx context.Context) error {
	if b.err != nil {
		return b.err
	}
	var opts []clientv3.OpOption
	if b.k != nil {
		l, err := b.k.Lease(ctx)
		if err != nil {
			return fmt.Errorf("barrier: hold %q: %w", b.name, err)
		}
		opts = append(opts, clientv3.WithLease(l.ID()))
	}
	_, err := b.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(b.key), "=", 0)).
		Then(clientv3.OpPut(b.key, "", opts...)).Commit()
	if err != nil {
		return fmt.Errorf("barrier: hold %q: %w", b.name, err)
	}
	return nil
}

// Release lowers the barrier, whoever raised it, and wakes every waiter. It
// is idempotent. Cost: one delete.
func (b *Barrier) Release(ctx context.Context) error {
	if b.err != nil {
		return b.err
	}
	if _, err := b.cli.Delete(ctx, b.key); err != nil {
		return fmt.Errorf("barrier: release %q: %w", b.name, err)
	}
	return nil
}

// Wait blocks until the barrier is down (at once if it is not held) or ctx
// ends. Cost: one read, then one watch until the barrier falls.
func (b *Barrier) Wait(ctx context.Context) (err error) {
	if b.err != nil {
		return b.err
	}
	ctx, end := b.tm.span(ctx, "barrier", b.name)
	defer func() { end(0, err) }()
	err = until(ctx, b.cli, b.key, func(ctx context.Context) (bool, int64, error) {
		resp, err := b.cli.Get(ctx, b.key, clientv3.WithCountOnly())
		if err != nil {
			return false, 0, err
		}
		return resp.Count == 0, resp.Header.Revision, nil
	}, func(ev *clientv3.Event) (bool, error) {
		// Down once released, even if raised again right after.
		return ev.Type == clientv3.EventTypeDelete, nil
	})
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("barrier: wait %q: %w", b.name, err)
	}
	return err
}
