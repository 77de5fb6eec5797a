package lock

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/enqueue"
)

// confirmsBy counts how Mutex confirms ended: by a touch of own key, or by
// the answer to a progress request. (Read by the package's tests.)
var confirmsBy struct{ touch, progress atomic.Int64 }

// progressWait bounds the wait for etcd's answer to a progress request,
// after which confirm reads instead. etcd does not answer while a watch on
// the stream lags behind (it then has events still to send), which on a
// stream of one lock value's own watches is rare.
const progressWait = 50 * time.Millisecond

// confirm makes sure own key was still there at minRev, the revision at
// which the last key ahead went, before the waiter is granted. Own key and
// the keys ahead are on separate watches, whose events reach this goroutine
// in no particular order; a deletion of own key (its lease revoked from
// outside the keeper, or the key deleted by hand) may be on its way still.
//
// Under deep contention the unlock that let own through touched own key in
// the same transaction (touchNext): a put of own key's incarnation at minRev
// or later shows it stood then, whatever the order of arrival, and it is on
// own watch already or close behind. Otherwise (the key ahead was lost, forced,
// or did not know own as its successor) a progress request settles it: the
// watches share one gRPC stream, on which etcd sends everything in revision
// order, and a progress request makes etcd answer on every watch of the
// stream after all events up to the current revision: once the answer
// arrives on own watch, any deletion of own key up to minRev has arrived
// before it. That costs one message each way on the open stream, no
// request to the key-value store.
func (a *acquisition) confirm(ctx context.Context, minRev int64) error {
	t := &a.t
	if minRev <= t.seen || minRev <= t.alive {
		return nil // a read at or past it showed own key, or a touch did
	}
	if !a.progress {
		return a.refresh(ctx, minRev)
	}
	// What own watch has delivered already, without waiting.
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case resp, ok = <-a.w.C:
		default:
			return a.confirmByProgress(ctx, minRev)
		}
		if !ok || resp.Created {
			return a.ownWatchTurned(ctx, minRev, resp, ok)
		}
		if stood, err := a.applyOwn(resp, minRev); stood || err != nil {
			if stood {
				confirmsBy.touch.Add(1)
			}
			return err
		}
	}
}

// applyOwn applies an answer of own watch that carries events (or progress):
// it reports whether own key is now known to have stood at minRev.
func (a *acquisition) applyOwn(resp clientv3.WatchResponse, minRev int64) (bool, error) {
	for _, ev := range resp.Events {
		if err := a.t.apply(ev); err != nil {
			return false, err
		}
	}
	return a.t.alive >= minRev, nil
}

// ownWatchTurned handles, within confirm, own watch ending for good or
// being created (again, after a failure): own key is read instead.
func (a *acquisition) ownWatchTurned(ctx context.Context, minRev int64, resp clientv3.WatchResponse, ok bool) error {
	if !ok {
		return fmt.Errorf("lock: watch own key: %w", a.w.Err())
	}
	return a.refresh(ctx, max(minRev, resp.Header.Revision))
}

// confirmByProgress is confirm by a progress request on the stream; a touch
// of own key that arrives first settles it too.
func (a *acquisition) confirmByProgress(ctx context.Context, minRev int64) error {
	timer := time.NewTimer(progressWait)
	defer timer.Stop()
	// The request waits for the client's watch stream, which may be
	// reconnecting: bound it like the answer, and by ctx.
	rctx, cancel := context.WithTimeout(ctx, progressWait)
	defer cancel()
	if err := a.w.RequestProgress(rctx); err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return a.refresh(ctx, minRev)
	}
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-a.lease.Done():
			return enqueue.Lost(ErrLost, a.lease)
		case <-timer.C:
			return a.refresh(ctx, minRev)
		case resp, ok := <-a.w.C:
			if !ok || resp.Created {
				return a.ownWatchTurned(ctx, minRev, resp, ok)
			}
			if stood, err := a.applyOwn(resp, minRev); stood || err != nil {
				if stood {
					confirmsBy.touch.Add(1)
				}
				return err
			}
			if !resp.IsProgressNotify() {
				continue
			}
			if resp.Header.Revision >= minRev {
				confirmsBy.progress.Add(1)
				return nil
			}
			// The member serving own watch has not applied minRev yet
			// (after a watch moved to another member): ask again.
			if err := a.w.RequestProgress(rctx); err != nil {
				return a.refresh(ctx, minRev)
			}
		}
	}
}
