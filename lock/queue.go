package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/enqueue"
	"github.com/concordkit/concord/internal/holding"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/watch"
	"github.com/concordkit/concord/leasekeeper"
)

// How the queue works (see doc.go for the whole story):
//
// Every request is a key under <prefix>q/, attached to the requester's
// lease; its create revision is its place in the queue and its fencing token.
// A request is granted when no key it must yield to (every older key for a
// Mutex; older writers for a reader of an RWMutex) remains.
//
// The acquire transaction puts own key and reads the queue's keys in the same
// revision, so the waiter knows every key ahead of it. It then watches three
// single keys: its own (deletions, and for a Mutex puts too; opened before
// the transaction, so that its creation revision is normally at or below the
// transaction's and no read is needed to close the gap; it learns of a lost
// or forced request and, once granted, of a forced release), and the
// nearest and second nearest keys ahead (deletions only). What the waiter
// knows ahead of it is always a superset of what is there: keys older than
// own can only go. When a watched key goes and more than one other key is
// known ahead, one read of the queue tells which remain; with one other,
// that one is next. So when the second nearest goes (usually the holder's
// release), the waiter reads once, off the critical path, and learns that
// only the nearest is left; the nearest's release then grants it on that one
// event, after confirming that own key was still there (confirm: for a Mutex
// under deep contention the touch of own key by that very release, else one
// progress request on the watches' stream; no read). etcd sends each
// deletion to the two waiters behind the key instead of to every waiter,
// which under contention was most of the work the cluster did per handoff.
//
// The watches have no start revision, so etcd syncs them at once, and they
// are pooled per lock value: under steady contention the keys ahead of a
// Mutex value are the same from one acquisition to the next, so their
// watches are reused, and a reused watch needs no read to close a gap
// (events at or below the last read are skipped) unless another request of
// the same value took events from it after this request's read (Watch.Rev).
// internal/watch opens a failed watch again and announces the new creation,
// which is handled like the first: a read closes the gap.
// A watch created after the last read costs one read to close the gap.

// errOwnGone reports that the waiter's own key was deleted or replaced.
var errOwnGone = errors.New("own key deleted")

// watchOpts are those of the watches on keys ahead, and on an RWMutex
// request's own key: one key, deletions only. A new request is always
// younger than every waiter, so only deletions can change a waiter's turn.
// (A Mutex's own key is watched for puts too: the touch of the unlock ahead.
// Release requests are puts; a holder watches for them separately, once
// asked to.)
var watchOpts = []clientv3.OpOption{clientv3.WithFilterPut()}

// enqueueRead is the read in the enqueue transaction: the queue's keys. A
// waiter needs each key ahead of it with its create revision (its place);
// values are never used, and a release request for own token cannot exist
// yet, since the token is this very transaction's revision. Without values
// etcd (v3.7) answers the range from its in-memory index alone, with no
// backend read per key, on every member that applies the transaction: the
// saving grows with the queue. That answer carries no lease, though, and
// lock-delay needs the lease of the key ahead, so with a delay the keys are
// read whole.
func (a *acquisition) enqueueRead() clientv3.Op {
	if a.delay > 0 {
		return clientv3.OpGet(a.t.queue, clientv3.WithPrefix())
	}
	return clientv3.OpGet(a.t.queue, clientv3.WithPrefix(), clientv3.WithKeysOnly())
}

// acquisition is one request in a lock's queue, from enqueue to grant.
type acquisition struct {
	cli   *clientv3.Client
	lease *leasekeeper.Lease
	t     turn
	// w watches own key; it is taken before the enqueue transaction and
	// passed on to the Hold. From ownPool, or (nil ownPool) started for this
	// request alone.
	w       *watch.Watch
	ownPool *watch.Pool
	// ahead watch the nearest and second nearest keys ahead while waiting.
	ahead     [2]*watch.Watch
	aheadPool *watch.Pool
	stream    watch.Stream  // the stream all of them travel on
	progress  bool          // confirm may ask for progress on stream
	reuseKeys bool          // keys come back (Mutex): pool watches on gone keys
	delay     time.Duration // lock-delay
	timeout   time.Duration // bound of detached cleanup
	sent      bool          // an enqueue transaction was sent: own key may exist
}

func newAcquisition(ctx context.Context, cli *clientv3.Client, lease *leasekeeper.Lease, w *watches, prefix, key string, yields func(string) bool, delay, timeout time.Duration) *acquisition {
	a := &acquisition{
		cli:   cli,
		lease: lease,
		t: turn{
			prefix: prefix,
			queue:  prefix + "q/",
			key:    key,
			rw:     requestKeyOK(prefix+"q/", key, true),
			yields: yields,
			preds:  map[string]pred{},
		},
		ownPool:   w.own,
		aheadPool: w.ahead,
		stream:    w.stream,
		progress:  w.progress,
		reuseKeys: w.own != nil,
		delay:     delay,
		timeout:   timeout,
	}
	if a.ownPool != nil {
		a.w = a.ownPool.Get(ctx)
	} else {
		a.w = watch.Open(ctx, cli, key, watch.Config{Stream: w.stream, Options: watchOpts, Progress: w.progress})
	}
	return a
}

// watches are the watch pools of one Mutex or RWMutex value, on a watch
// stream of the value's own (see confirm).
type watches struct {
	own      *watch.Pool // on the value's own key; nil if it has none
	ahead    *watch.Pool // on the keys ahead
	stream   watch.Stream
	progress bool // confirm asks for progress on stream (else it reads)
}

// newWatches returns the pools of a lock value. With progress (a Mutex) they
// travel on a stream of the value's own, for confirm; otherwise on the
// client's shared stream.
func newWatches(cli *clientv3.Client, progress bool, ownKey string) watches {
	w := watches{progress: progress}
	if progress {
		// Named by a random ID: gRPC metadata takes printable ASCII only,
		// and a lock name may be any UTF-8.
		w.stream = watch.NewStream(names.NewID())
	}
	// The keys ahead go on the same stream, so that one member serves all of
	// a request's watches: its answer to confirm's progress request is then
	// at least as new as the deletion confirm waits for.
	w.ahead = watch.NewPool(cli, "", watch.Config{Stream: w.stream, Options: watchOpts})
	if ownKey != "" {
		// Puts too: the unlock ahead touches own key (touchNext). confirm
		// reads progress notifications on it.
		w.own = watch.NewPool(cli, ownKey, watch.Config{Stream: w.stream, Progress: progress})
	}
	return w
}

// putOwn gives the watch on own key back, or stops it.
func (a *acquisition) putOwn() {
	if a.ownPool != nil {
		a.ownPool.Put(a.w)
	} else {
		a.w.Stop()
	}
}

// enqueue puts own key and reads the prefix in one transaction, sent by
// internal/enqueue (attempts bounded, a grace for the answer after ctx
// ends). With try, it puts the key only if the queue is empty, and returns
// ErrLocked otherwise.
func (a *acquisition) enqueue(ctx context.Context, value string, try bool) error {
	t := &a.t
	send := enqueue.New(a.lease, a.timeout, ErrLost, "lock: enqueue")
	for attempt := 0; ; attempt++ {
		resp, err := send.Send(ctx, func(ctx context.Context) (*clientv3.TxnResponse, error) {
			a.sent = true
			put := clientv3.OpPut(t.key, value, clientv3.WithLease(a.lease.ID()))
			if try {
				// Own key counts too: a leftover of an earlier attempt is
				// deleted below and the transaction tried again.
				return a.cli.Txn(ctx).
					If(clientv3.Compare(clientv3.CreateRevision(t.queue), "=", 0).WithPrefix()).
					Then(put, a.enqueueRead()).
					Else(clientv3.OpGet(t.key), clientv3.OpGet(t.queue, clientv3.WithPrefix(), clientv3.WithKeysOnly())).
					Commit()
			}
			return a.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(t.key), "=", 0)).
				Then(put, a.enqueueRead()).
				Else(clientv3.OpGet(t.key)).
				Commit()
		})
		if err != nil {
			return err
		}
		if resp.Succeeded {
			t.rev = resp.Header.Revision
			return t.load(resp.Responses[1].GetResponseRange().Kvs, resp.Header.Revision)
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			if try {
				// Locked, unless what holds the queue is no request.
				for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
					if !requestKeyOK(t.queue, string(kv.Key), t.rw) {
						return fmt.Errorf("%w: key %s is no request of this lock", ErrCorrupt, kv.Key)
					}
				}
				return ErrLocked
			}
			continue // deleted in between; try again
		}
		if attempt >= 8 {
			return fmt.Errorf("lock: enqueue: own key %q keeps reappearing", t.key)
		}
		// Own key is still there: a put of an earlier attempt whose answer
		// was lost, or an unlock that never completed. It is ours alone;
		// replace it so the request gets a fresh place and token.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), retry.Attempt(a.timeout))
		_, err = a.cli.Txn(dctx).
			If(clientv3.Compare(clientv3.CreateRevision(t.key), "=", kvs[0].CreateRevision)).
			Then(clientv3.OpDelete(t.key)).Commit()
		cancel()
		if err != nil && !retry.Retriable(err) {
			return fmt.Errorf("lock: enqueue: delete leftover key: %w", err)
		}
	}
}

// cleanup deletes own key after a failed acquisition, under a detached,
// bounded context. When the lease is lost there is nothing to do: the keeper
// revokes it, or the server expires it, and the key goes with it.
func (a *acquisition) cleanup(ctx context.Context) {
	// Unconditional: the key name is unique to this request (or to this
	// Mutex value, whose local slot this goroutine still holds).
	holding.Withdraw(ctx, a.cli, a.lease, a.timeout, a.t.key)
}
