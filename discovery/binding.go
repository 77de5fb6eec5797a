package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/turn"
	"github.com/concordkit/concord/leasekeeper"
)

// binding keeps one key attached to the keeper's lease: written on the
// current lease, and written again on each new lease generation until it is
// closed. Registrations and memberships are bindings.
type binding struct {
	k   *leasekeeper.Keeper
	cli *clientv3.Client
	key string
	log *slog.Logger

	stop context.CancelFunc
	wg   sync.WaitGroup // joins keep

	// writing serialises writes of the key, so that the value last written
	// in etcd is the value last set: an Update and a re-registration
	// cannot land in the opposite order. It is held across round trips to
	// etcd, so a caller waiting for it gives up when its own ctx ends.
	writing turn.Turn

	mu      sync.Mutex // protects val, lease, rev, closed, deleted
	val     []byte
	lease   clientv3.LeaseID // the lease of our last successful write (0 before)
	rev     int64            // create revision of our last successful write
	closed  bool             // re-registration stopped
	deleted bool             // close deleted the key (or found it not ours)
}

// bind writes key on the keeper's current lease (waiting for one if the
// keeper is between generations) and keeps it there. On failure nothing is
// left behind.
func bind(ctx context.Context, k *leasekeeper.Keeper, key string, val []byte) (*binding, error) {
	if k == nil {
		return nil, errors.New("discovery: nil keeper")
	}
	b := &binding{k: k, cli: k.Client(), key: key, val: val, log: slog.Default(), writing: turn.New()}
	l, err := k.Lease(ctx)
	if err != nil {
		return nil, fmt.Errorf("discovery: %s: %w", key, err)
	}
	if err := b.write(ctx, l); err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.Background())
	b.stop = stop
	b.wg.Add(1)
	go b.keep(runCtx, l)
	return b, nil
}

// write puts the current value on lease l. A key held by a lease of ours (this
// one or an earlier generation whose key the server has not expired yet) is
// taken over; a key held by any other lease is ErrExists.
func (b *binding) write(ctx context.Context, l *leasekeeper.Lease) error {
	if err := b.writing.Take(ctx); err != nil {
		return fmt.Errorf("discovery: write %s: %w", b.key, err)
	}
	defer b.writing.Done()
	b.mu.Lock()
	val, ours := b.val, b.lease
	b.mu.Unlock()
	for {
		// One round trip in the common case: create the key if it is absent.
		resp, err := b.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(b.key), "=", 0)).
			Then(clientv3.OpPut(b.key, string(val), clientv3.WithLease(l.ID()))).
			Else(clientv3.OpGet(b.key)).
			Commit()
		if err != nil {
			return fmt.Errorf("discovery: write %s: %w", b.key, err)
		}
		if resp.Succeeded {
			b.wrote(l.ID(), resp.Header.Revision)
			return nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			continue // deleted in between: try to create it again
		}
		cur := kvs[0]
		if held := clientv3.LeaseID(cur.Lease); held != l.ID() && (ours == 0 || held != ours) {
			return fmt.Errorf("%w: %s is held by lease %x", ErrExists, b.key, cur.Lease)
		}
		// Ours: replace it only if it has not changed since we looked.
		resp, err = b.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(b.key), "=", cur.ModRevision)).
			Then(clientv3.OpPut(b.key, string(val), clientv3.WithLease(l.ID()))).
			Commit()
		if err != nil {
			return fmt.Errorf("discovery: write %s: %w", b.key, err)
		}
		if resp.Succeeded {
			rev := cur.CreateRevision
			if clientv3.LeaseID(cur.Lease) != l.ID() {
				rev = resp.Header.Revision // re-attached: not the same incarnation for readers
			}
			b.wrote(l.ID(), rev)
			return nil
		}
	}
}

func (b *binding) wrote(id clientv3.LeaseID, rev int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lease, b.rev = id, rev
}

// keep re-writes the key on every new lease generation until stopped.
func (b *binding) keep(ctx context.Context, l *leasekeeper.Lease) {
	defer b.wg.Done()
	bo := retry.RecoverPolicy.New()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.Done():
		}
		next, err := b.k.Lease(ctx)
		if err != nil {
			return // stopped, or the keeper was closed (its keys go with its lease)
		}
		l = next
		bo.Reset()
		for l.Context().Err() == nil {
			// The write ends with the lease or with close, whichever is first.
			wctx, cancel := context.WithCancel(l.Context())
			unhook := context.AfterFunc(ctx, cancel)
			err := b.write(wctx, l)
			unhook()
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			b.log.Warn("discovery: re-registration failed; retrying", "key", b.key, "generation", l.Generation(), "err", err)
			if bo.Wait(ctx) != nil {
				return
			}
		}
	}
}

// set changes the value and writes it on the current lease, guarded so that
// it only replaces our own key. If the key is not ours right now (between
// lease generations), the value is kept for the re-registration and ErrLost
// is returned.
func (b *binding) set(ctx context.Context, val []byte) error {
	// Waiting for a write in progress (another Update, a re-registration) is
	// bounded by ctx like the transaction itself.
	if err := b.writing.Take(ctx); err != nil {
		return fmt.Errorf("discovery: update %s: %w", b.key, err)
	}
	defer b.writing.Done()
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	b.val = val
	lease := b.lease
	b.mu.Unlock()
	l := b.k.Current()
	if l.ID() != lease || l.Context().Err() != nil {
		return fmt.Errorf("%w: %s will be written on the next lease", ErrLost, b.key)
	}
	resp, err := b.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(b.key), "=", lease), clientv3.Compare(clientv3.CreateRevision(b.key), ">", 0)).
		Then(clientv3.OpPut(b.key, string(val), clientv3.WithLease(lease))).
		Commit()
	if err != nil {
		return fmt.Errorf("discovery: update %s: %w", b.key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: %s is no longer held by lease %x", ErrLost, b.key, int64(lease))
	}
	return nil
}

// close stops re-registration and deletes the key if it is still ours. It
// waits for a write in progress only until ctx ends. It deletes under a
// context detached from ctx's cancellation, retrying transient errors, so a
// canceled caller still deregisters; the delete stops at the lease TTL or as
// soon as the lease is lost, whichever is first. A lost lease takes the key
// with it, so close does not delete then and reports success. It is
// idempotent once the key is deleted or its lease lost; after a failure it
// reports the error, and a later call tries the delete again (the key
// otherwise stays on the keeper's live lease).
func (b *binding) close(ctx context.Context) error {
	b.mu.Lock()
	if b.deleted {
		b.mu.Unlock()
		return nil
	}
	first := !b.closed
	b.closed = true
	b.mu.Unlock()
	if first {
		b.stop()
		b.wg.Wait()
	}
	if err := b.writing.Take(ctx); err != nil {
		return fmt.Errorf("discovery: delete %s: %w", b.key, err)
	}
	defer b.writing.Done()
	b.mu.Lock()
	lease := b.lease
	b.mu.Unlock()
	// The key is on the lease of our last confirmed write, or on the
	// keeper's current one (a re-registration whose answer was lost). Every
	// lease before the current one is lost; if the current one is lost too,
	// etcd deletes the key with it (or has already): nothing to wait for on
	// a client that may be cut off.
	l := b.k.Current()
	if l.Err() != nil {
		b.markDeleted()
		return nil
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.k.TTL())
	defer cancel()
	// Stop as soon as the lease is lost meanwhile (etcd unreachable for
	// long): the key goes with the lease, and waiting on would only hold the
	// caller for the rest of the TTL.
	defer context.AfterFunc(l.Context(), cancel)()
	// Each attempt is short (retry.Attempt): one sent to an etcd leader that
	// died or hangs is sent again once another is elected. The delete is
	// guarded by the key's lease: safe to repeat.
	var last error
	err := retry.Attempts(dctx, retry.RequestPolicy, retry.Attempt(b.k.TTL()), func(ctx context.Context) error {
		_, last = b.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.LeaseValue(b.key), "=", l.ID()), clientv3.Compare(clientv3.CreateRevision(b.key), ">", 0)).
			Then(clientv3.OpDelete(b.key)).
			Else(clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(b.key), "=", lease), clientv3.Compare(clientv3.CreateRevision(b.key), ">", 0)},
				[]clientv3.Op{clientv3.OpDelete(b.key)}, nil)).
			Commit()
		return last
	})
	if err != nil && l.Err() == nil {
		if last != nil && dctx.Err() != nil {
			err = last
		}
		return fmt.Errorf("discovery: delete %s: %w", b.key, err)
	}
	b.markDeleted()
	return nil
}

func (b *binding) markDeleted() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.deleted = true
}
