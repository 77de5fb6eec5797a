package barrier

import (
	"context"
	"fmt"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/watch"
)

// testHookRead, if set, is called after until's first read (tests use it to
// know that a waiter is waiting).
var testHookRead atomic.Pointer[func()]

// until watches key (or the prefix, with WithPrefix in opts) until the state
// it follows is done. read reads the state and reports whether it is done
// and the revision of its read. apply judges one event after that revision
// and reports whether it makes the state done; with apply nil, the state is
// read again after every batch of events instead.
//
// Judging the events themselves matters where the state can come and go
// between an event and a read: a latch opened and deleted at once, a
// barrier released and raised again. A read after the event would see the
// later state and miss the one the waiter waits for.
//
// read runs first and again whenever the watch was (re)created past the last
// read: a change may have fallen in the gap. (The watch has no start
// revision, so that etcd syncs it at once instead of in its 100 ms unsynced
// loop.) internal/watch opens a failed watch again; a read that fails for a
// transient reason is tried again with backoff.
func until(ctx context.Context, cli *clientv3.Client, key string,
	read func(ctx context.Context) (bool, int64, error),
	apply func(ev *clientv3.Event) (bool, error),
	opts ...clientv3.OpOption) error {
	w := watch.Open(ctx, cli, key, watch.Config{Options: opts})
	defer w.Stop()
	var done bool
	var rev int64
	reread := func(ctx context.Context) error {
		d, r, err := read(ctx)
		if err == nil {
			done, rev = d, max(rev, r)
		}
		return err
	}
	if err := retry.Do(ctx, retry.RequestPolicy, reread); err != nil {
		return err
	}
	if hook := testHookRead.Load(); hook != nil {
		(*hook)()
	}
	for !done {
		resp, err := w.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return fmt.Errorf("watch %s: %w", key, err)
		}
		switch {
		case resp.Created:
			if resp.Header.Revision <= rev {
				continue // nothing can have changed since our read
			}
		case apply != nil:
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision <= rev {
					continue // part of the last read
				}
				if done, err = apply(ev); err != nil || done {
					return err
				}
			}
			continue
		case len(resp.Events) == 0:
			continue
		}
		if err := retry.Do(ctx, retry.RequestPolicy, reread); err != nil {
			return err
		}
	}
	return nil
}
