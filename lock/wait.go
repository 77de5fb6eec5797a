package lock

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/enqueue"
	"github.com/concordkit/concord/internal/watch"
)

// wait blocks until nothing own yields to remains, own key is gone
// (errOwnGone), the lease is lost (ErrLost) or ctx ends (its cause).
//
// It watches the two nearest keys ahead. The nearest is the one whose
// release grants own; the second is there to learn, off the critical path,
// when the nearest has become the holder: its deletion prompts a read of
// what is left ahead, so that by the time the nearest goes, the waiter
// usually knows it was the last key ahead and is granted on that one event.
func (a *acquisition) wait(ctx context.Context) error {
	t := &a.t
	defer a.putAhead(0)
	defer a.putAhead(1)
	for {
		if len(t.preds) == 0 {
			if !t.emptied || a.delay <= 0 {
				return nil
			}
			if err := a.lockDelay(ctx); err != nil {
				return err
			}
			if len(t.preds) == 0 {
				return nil
			}
			continue
		}
		if stale, err := a.follow(ctx); err != nil || stale {
			if err != nil {
				return err
			}
			continue
		}
		var ch1 <-chan clientv3.WatchResponse
		if a.ahead[1] != nil {
			ch1 = a.ahead[1].C
		}
		var err error
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-a.lease.Done():
			return enqueue.Lost(ErrLost, a.lease)
		case resp, ok := <-a.w.C:
			if !ok {
				return fmt.Errorf("lock: watch own key: %w", a.w.Err())
			}
			err = a.onOwn(ctx, resp)
		case resp, ok := <-a.ahead[0].C:
			err = a.onAhead(ctx, a.ahead[0], resp, ok)
		case resp, ok := <-ch1:
			err = a.onAhead(ctx, a.ahead[1], resp, ok)
		}
		if err != nil {
			return err
		}
	}
}

// onOwn handles a response of the watch on own key while waiting.
func (a *acquisition) onOwn(ctx context.Context, resp clientv3.WatchResponse) error {
	t := &a.t
	if resp.Created {
		// The first creation, or a new one after the watch failed (leader
		// lost, stream broken): close the gap.
		if resp.Header.Revision > t.seen {
			return a.refresh(ctx, resp.Header.Revision)
		}
		return nil
	}
	for _, ev := range resp.Events {
		if err := t.apply(ev); err != nil {
			return err
		}
	}
	return nil
}

// onAhead handles a response of the watch w on a key ahead. When the key is
// deleted, what is left ahead is known without a read if at most one other
// key was ahead; when none is left, own is granted once confirm showed own
// key still stood.
func (a *acquisition) onAhead(ctx context.Context, w *watch.Watch, resp clientv3.WatchResponse, ok bool) error {
	t := &a.t
	if !ok {
		return fmt.Errorf("lock: watch %s: %w", w.Key(), w.Err())
	}
	if resp.Created {
		if resp.Header.Revision > t.seen {
			return a.refresh(ctx, resp.Header.Revision)
		}
		return nil
	}
	var goneAt int64
	for _, ev := range resp.Events {
		if ev.Type == clientv3.EventTypeDelete && string(ev.Kv.Key) == w.Key() && ev.Kv.ModRevision > t.seen {
			goneAt = ev.Kv.ModRevision
		}
	}
	if goneAt == 0 {
		return nil
	}
	t.applied = max(t.applied, goneAt)
	if len(t.preds) > 2 {
		// Keys further ahead may have gone without a word to this waiter:
		// ask which remain.
		return a.refresh(ctx, goneAt)
	}
	// What is left ahead is known without a read: the map holds every key
	// that can still be ahead.
	t.gone = append(t.gone, t.preds[w.Key()])
	delete(t.preds, w.Key())
	if len(t.preds) == 0 {
		t.emptied = true
		return a.confirm(ctx, goneAt)
	}
	return nil
}

// follow points the two ahead watches at the nearest and second nearest
// keys ahead, reusing pooled watches. It reports stale when a pooled watch
// had passed events this request did not see, after reading again.
func (a *acquisition) follow(ctx context.Context) (stale bool, err error) {
	t := &a.t
	near, second := t.nearest2()
	want := [2]string{near, second}
	// Keep a watch already on a wanted key, in its new place.
	if a.ahead[0] != nil && a.ahead[0].Key() == second || a.ahead[1] != nil && a.ahead[1].Key() == near {
		a.ahead[0], a.ahead[1] = a.ahead[1], a.ahead[0]
	}
	for i, k := range want {
		if a.ahead[i] != nil && a.ahead[i].Key() != k {
			a.putAhead(i)
		}
		if a.ahead[i] == nil && k != "" {
			a.ahead[i] = a.aheadPool.GetKey(ctx, k)
			if rev := a.ahead[i].Rev(); rev > t.seen {
				// Another request of this value took events of this watch
				// (or saw it created again) after own read: read again
				// before trusting it.
				return true, a.refresh(ctx, rev)
			}
		}
	}
	return false, nil
}

// putAhead gives the i-th ahead watch back to the pool.
func (a *acquisition) putAhead(i int) {
	if a.ahead[i] != nil {
		if _, ahead := a.t.preds[a.ahead[i].Key()]; !ahead && !a.reuseKeys {
			a.ahead[i].Stop() // its key never comes back: do not pool it
		} else {
			a.aheadPool.Put(a.ahead[i])
		}
		a.ahead[i] = nil
	}
}
