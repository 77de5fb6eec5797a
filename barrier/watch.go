package barrier

import (
	"context"
	"errors"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
)

var errWatchLost = errors.New("watch lost")

// until watches key (or the prefix, with WithPrefix in opts) until done
// reports true. check reads the current state and reports whether it is
// done and the revision of its read; it is called first, again whenever a
// watch was created past the last read (a change may have fallen in the gap;
// the watch has no start revision so that etcd syncs it at once instead of in
// its 100 ms unsynced loop), and after every batch of events. Watches carry
// WithRequireLeader; a lost watch is re-created with backoff.
func until(ctx context.Context, cli *clientv3.Client, key string, check func(ctx context.Context) (bool, int64, error), opts ...clientv3.OpOption) error {
	bo := retry.Backoff{Min: 10 * time.Millisecond, Max: time.Second}
	for {
		done, rev, err := check(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if !retry.Retriable(err) {
				return err
			}
			if werr := bo.Wait(ctx); werr != nil {
				return werr
			}
			continue
		}
		if done {
			return nil
		}
		err = watchOnce(ctx, cli, key, rev, check, opts)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if !errors.Is(err, errWatchLost) && !retry.Retriable(err) {
			return err
		}
		if werr := bo.Wait(ctx); werr != nil {
			return werr
		}
	}
}

func watchOnce(ctx context.Context, cli *clientv3.Client, key string, rev int64, check func(context.Context) (bool, int64, error), opts []clientv3.OpOption) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := cli.Watch(wctx, key, append([]clientv3.OpOption{clientv3.WithCreatedNotify()}, opts...)...)
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return errors.Join(errWatchLost, err)
		}
		if resp.Canceled {
			return errWatchLost
		}
		if resp.Created && resp.Header.Revision <= rev {
			continue // nothing can have changed since our read
		}
		if !resp.Created && len(resp.Events) == 0 {
			continue
		}
		done, r, err := check(ctx)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		rev = max(rev, r)
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return errWatchLost
}
