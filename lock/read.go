package lock

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/enqueue"
	"github.com/concordkit/concord/internal/retry"
)

// refresh reads the keys of the queue up to own (a Mutex also the key just
// behind, the next), at revision minRev or later, and replaces what turn
// knows with them. It asks the member the client reaches first, without a
// read barrier: keys older than own can only go, never come, so a read at
// any revision at or past minRev lists a superset of those still there, and
// is exact about own key at its revision. Only a member that lags behind
// minRev sends the read on to a linearizable one. Transient errors are
// retried until ctx ends.
func (a *acquisition) refresh(ctx context.Context, minRev int64) error {
	return a.read(ctx, max(minRev, a.t.applied), true)
}

// read is refresh, asking the serving member first if serial is set, and
// for a linearizable read otherwise.
func (a *acquisition) read(ctx context.Context, minRev int64, serial bool) error {
	t := &a.t
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithMaxCreateRev(t.rev)}
	if a.delay <= 0 {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	// A Mutex reads the key just behind own too, in the same revision, to
	// learn the next waiter, whose key its unlock touches (touchNext).
	nextOpts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithMinCreateRev(t.rev + 1),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1), clientv3.WithKeysOnly()}
	bo := retry.RequestPolicy.New()
	bounds := retry.NewBounds(retry.Attempt(a.timeout))
	timedOut := false
	for {
		o, no := opts, nextOpts
		if serial {
			o = append(slices.Clip(opts), clientv3.WithSerializable())
			no = append(slices.Clip(nextOpts), clientv3.WithSerializable())
		}
		var (
			kvs, next []*mvccpb.KeyValue
			rev       int64
			err       error
		)
		// Each attempt is short (retry.Attempt): a linearizable read that
		// reaches an etcd leader that died or hangs is sent again.
		actx, cancel := context.WithTimeout(ctx, bounds.Next(timedOut))
		if a.progress {
			var resp *clientv3.TxnResponse
			if resp, err = a.cli.Txn(actx).Then(clientv3.OpGet(t.queue, o...), clientv3.OpGet(t.queue, no...)).Commit(); err == nil {
				kvs, rev = resp.Responses[0].GetResponseRange().Kvs, resp.Header.Revision
				next = resp.Responses[1].GetResponseRange().Kvs
			}
		} else {
			var resp *clientv3.GetResponse
			if resp, err = a.cli.Get(actx, t.queue, o...); err == nil {
				kvs, rev = resp.Kvs, resp.Header.Revision
			}
		}
		timedOut = err != nil && actx.Err() != nil && ctx.Err() == nil
		cancel()
		switch {
		case err == nil && rev >= minRev:
			before := slices.Collect(maps.Values(t.preds))
			gone, emptied := t.gone, t.emptied
			if err := t.load(append(kvs, next...), rev); err != nil {
				return err
			}
			switch {
			case len(t.preds) > 0:
				t.gone = nil // the last holder is still ahead
			case len(before) > 0:
				t.gone, t.emptied = append(gone, before...), true // the rest went unseen
			default:
				t.gone, t.emptied = gone, emptied // as the watches told
			}
			return nil
		case err == nil:
			serial = false // a lagging member
		case ctx.Err() != nil:
			return context.Cause(ctx)
		case !retry.Retriable(err) && !timedOut:
			return fmt.Errorf("lock: read queue: %w", err)
		default:
			serial = false
			if werr := bo.Wait(ctx); werr != nil {
				return werr
			}
		}
	}
}

// lockDelay runs when the last key ahead has gone. If the lease of any key
// that was still ahead at the last read is gone too, the holder may have
// lost the lock involuntarily, and the grant waits out the delay, then
// confirms own key is still there.
func (a *acquisition) lockDelay(ctx context.Context) error {
	a.t.emptied = false
	involuntary := false
	checked := map[clientv3.LeaseID]bool{}
	for _, p := range a.t.gone {
		if checked[p.lease] {
			continue
		}
		checked[p.lease] = true
		ttl, err := a.cli.TimeToLive(ctx, p.lease)
		if err != nil && ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if err != nil || ttl.TTL <= 0 {
			// Gone, or cannot tell: delay, the safe choice for a resource
			// without fencing.
			involuntary = true
			break
		}
	}
	a.t.gone = nil
	if !involuntary {
		return nil // the keys ahead went while their leases lived: no delay
	}
	timer := time.NewTimer(a.delay)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-a.lease.Done():
		return enqueue.Lost(ErrLost, a.lease)
	case <-timer.C:
	}
	// Linearizable: own key must still be there now, not on a member that
	// lags behind the delay.
	if err := a.read(ctx, max(a.t.seen, a.t.applied), false); err != nil {
		return fmt.Errorf("lock: re-read after lock-delay: %w", err)
	}
	a.t.emptied = false
	return nil
}
