package lock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/prefixwatch"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/leasekeeper"
)

// How the queue works (see doc.go for the whole story):
//
// Every request is a key under <prefix>q/, attached to the requester's
// lease; its create revision is its place in the queue and its fencing token.
// A request is granted when no key it must yield to (every older key for a
// Mutex; older writers for a reader of an RWMutex) remains.
//
// Each acquisition opens one watch on the lock's whole prefix with no start
// revision, sent before the acquire transaction so that both travel
// together. The acquire transaction puts the key and reads the queue's keys
// in the same revision, so the waiter knows every key ahead of it. Once the
// watch reports its creation revision, every event after that revision
// arrives on it; if the creation revision is past the transaction's, the
// prefix is read once more to close the gap. From then on the waiter learns
// of each deletion ahead of it from the watch alone, with no request to etcd:
// the release of the holder reaches the next waiter as one watch event, and
// the others only update a map.

// replyGrace is how long an acquire transaction in flight may still answer
// after the caller's context ended: long enough for a healthy cluster, short
// enough that Lock returns promptly when etcd is unreachable.
const replyGrace = 250 * time.Millisecond

// errOwnGone reports that the waiter's own key was deleted or replaced.
var errOwnGone = errors.New("own key deleted")

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return hex.EncodeToString(b[:])
}

// watchOpts are those of a lock's prefix watch: the whole prefix, deletions
// only. A new request is always younger than every waiter, so only deletions
// can change a waiter's turn, and filtering puts on the server halves the
// events sent to every waiter. (Release requests are puts; a holder watches
// for them separately, once asked to.)
var watchOpts = []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithFilterPut()}

// pred is a key ahead of the waiter's own.
type pred struct {
	rev   int64
	lease clientv3.LeaseID
}

// turn follows which keys ahead of own must still go before own is granted,
// from one read of the prefix plus the watch events after it.
type turn struct {
	prefix string // the lock's prefix, watched whole
	queue  string // prefix + "q/"
	key    string // own key
	rev    int64  // own create revision, the token
	// yields reports whether own must wait for the older key k.
	yields func(k string) bool

	seen  int64 // revision of the last read; events at or below it are in it
	preds map[string]pred
	last  pred // the last key ahead removed (by an event), for lock-delay
	// emptied is set when the last key ahead went by a watch event.
	emptied bool

	requested bool // a release was requested for own token
	forced    bool // ForceRelease deleted own key
}

// load replaces what turn knows with a read at rev: of the whole prefix, or,
// from the acquire transaction, of the queue's keys alone.
func (t *turn) load(kvs []*mvccpb.KeyValue, rev int64) error {
	t.seen = rev
	clear(t.preds)
	t.emptied = false
	found := false
	rel := releaseKey(t.prefix, t.rev)
	for _, kv := range kvs {
		k := string(kv.Key)
		switch {
		case k == t.key:
			if kv.CreateRevision != t.rev {
				return errOwnGone
			}
			found = true
		case k == rel:
			force, err := decodeRelease(kv.Value)
			if err != nil {
				return err
			}
			t.requested = true
			t.forced = t.forced || force
		case strings.HasPrefix(k, t.queue) && kv.CreateRevision < t.rev && (t.yields == nil || t.yields(k)):
			t.preds[k] = pred{rev: kv.CreateRevision, lease: clientv3.LeaseID(kv.Lease)}
		}
	}
	if !found {
		return errOwnGone
	}
	return nil
}

// apply updates turn with one watch event. It returns errOwnGone when own
// key is deleted or replaced.
func (t *turn) apply(ev *clientv3.Event) error {
	if ev.Kv.ModRevision <= t.seen {
		return nil // already part of the last read (or an older incarnation)
	}
	k := string(ev.Kv.Key)
	switch {
	case k == t.key:
		if ev.Type == clientv3.EventTypeDelete || ev.Kv.CreateRevision != t.rev {
			return errOwnGone
		}
	case ev.Type == clientv3.EventTypePut && k == releaseKey(t.prefix, t.rev):
		force, err := decodeRelease(ev.Kv.Value)
		if err != nil {
			return err
		}
		t.requested = true
		t.forced = t.forced || force
	case ev.Type == clientv3.EventTypeDelete:
		if p, ok := t.preds[k]; ok {
			delete(t.preds, k)
			if len(t.preds) == 0 {
				t.last, t.emptied = p, true
			}
		}
	}
	return nil
}

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
	cli     *clientv3.Client
	lease   *leasekeeper.Lease
	t       turn
	w       *prefixwatch.Watch
	delay   time.Duration // lock-delay
	timeout time.Duration // bound of detached cleanup
}

func newAcquisition(cli *clientv3.Client, lease *leasekeeper.Lease, prefix, key string, yields func(string) bool, delay, timeout time.Duration) *acquisition {
	return &acquisition{
		cli:   cli,
		lease: lease,
		t: turn{
			prefix: prefix,
			queue:  prefix + "q/",
			key:    key,
			yields: yields,
			preds:  map[string]pred{},
		},
		delay:   delay,
		timeout: timeout,
	}
}

func lostErr(l *leasekeeper.Lease) error {
	return fmt.Errorf("%w: %w", ErrLost, context.Cause(l.Context()))
}

// enqueue puts own key and reads the prefix in one transaction. With try, it
// puts the key only if the queue is empty, and returns ErrLocked otherwise.
//
// The transaction runs under a detached, bounded context: if the caller's
// ctx ends while it is in flight, waiting for its answer (a millisecond)
// tells whether the key was written, so cleanup never races a put still on
// its way. Only when no answer comes is own key deleted blindly, which is
// safe because the key is unique to this request.
func (a *acquisition) enqueue(ctx context.Context, value string, try bool) error {
	t := &a.t
	bo := retry.Backoff{Min: 5 * time.Millisecond, Max: 200 * time.Millisecond}
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		if err := a.lease.Err(); err != nil {
			return lostErr(a.lease)
		}
		tctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.WithoutCancel(ctx)), a.timeout)
		// If ctx ends first, give the answer a short grace to arrive.
		stopGrace := context.AfterFunc(ctx, func() { time.AfterFunc(replyGrace, cancel) })
		put := clientv3.OpPut(t.key, value, clientv3.WithLease(a.lease.ID()))
		var txn clientv3.Txn
		if try {
			// Own key counts too: a leftover of an earlier attempt is
			// deleted below and the transaction tried again.
			txn = a.cli.Txn(tctx).
				If(clientv3.Compare(clientv3.CreateRevision(t.queue), "=", 0).WithPrefix()).
				Then(put, a.enqueueRead()).
				Else(clientv3.OpGet(t.key))
		} else {
			txn = a.cli.Txn(tctx).
				If(clientv3.Compare(clientv3.CreateRevision(t.key), "=", 0)).
				Then(put, a.enqueueRead()).
				Else(clientv3.OpGet(t.key))
		}
		resp, err := txn.Commit()
		stopGrace()
		cancel()
		switch {
		case err == nil:
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return fmt.Errorf("%w: lease %x gone before the request was queued", ErrLost, int64(a.lease.ID()))
		case retry.Retriable(err) || errors.Is(err, context.DeadlineExceeded):
			// The put may have been applied: the next attempt finds the key
			// and replaces it, or the caller's cleanup deletes it.
			if werr := bo.Wait(ctx); werr != nil {
				return werr
			}
			continue
		default:
			return fmt.Errorf("lock: enqueue: %w", err)
		}
		if resp.Succeeded {
			t.rev = resp.Header.Revision
			return t.load(resp.Responses[1].GetResponseRange().Kvs, resp.Header.Revision)
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			if try {
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
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.timeout)
		_, err = a.cli.Txn(dctx).
			If(clientv3.Compare(clientv3.CreateRevision(t.key), "=", kvs[0].CreateRevision)).
			Then(clientv3.OpDelete(t.key)).Commit()
		cancel()
		if err != nil && !retry.Retriable(err) {
			return fmt.Errorf("lock: enqueue: delete leftover key: %w", err)
		}
	}
}

// wait blocks until nothing own yields to remains, own key is gone
// (errOwnGone), the lease is lost (ErrLost) or ctx ends (its cause).
func (a *acquisition) wait(ctx context.Context) error {
	t := &a.t
	bo := retry.Backoff{Min: 10 * time.Millisecond, Max: 500 * time.Millisecond}
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
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-a.lease.Done():
			return lostErr(a.lease)
		case resp, ok := <-a.w.Ch:
			if !ok || resp.Err() != nil || resp.Canceled {
				// The watch failed (leader lost, stream broken): start a
				// new one; its creation triggers a fresh read.
				a.w.Created = false
				if err := bo.Wait(ctx); err != nil {
					return err
				}
				a.w.Restart()
				continue
			}
			if resp.Created {
				if err := a.onCreated(ctx, resp.Header.Revision); err != nil {
					if errors.Is(err, errOwnGone) || errors.Is(err, ErrCorrupt) || ctx.Err() != nil {
						return err
					}
					a.w.Restart() // transient read failure: go round again
					if err := bo.Wait(ctx); err != nil {
						return err
					}
				}
				continue
			}
			bo.Reset()
			for _, ev := range resp.Events {
				if err := t.apply(ev); err != nil {
					return err
				}
			}
		}
	}
}

// onCreated closes the gap between the last read and a new watch's creation
// revision by reading the prefix again, if the watch started later.
func (a *acquisition) onCreated(ctx context.Context, rev int64) error {
	a.w.Created = true
	if rev <= a.t.seen {
		return nil
	}
	resp, err := a.cli.Get(ctx, a.t.prefix, clientv3.WithPrefix())
	if err != nil {
		a.w.Created = false
		return err
	}
	return a.t.load(resp.Kvs, resp.Header.Revision)
}

// lockDelay runs when the last key ahead has gone. If its lease is gone
// too, the holder lost the lock involuntarily, and the grant waits out the
// delay, then confirms own key is still there.
func (a *acquisition) lockDelay(ctx context.Context) error {
	a.t.emptied = false
	ttl, err := a.cli.TimeToLive(ctx, a.t.last.lease)
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		// Cannot tell: delay, the safe choice for a resource without fencing.
	} else if ttl.TTL > 0 {
		return nil // the holder released while alive: no delay
	}
	timer := time.NewTimer(a.delay)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-a.lease.Done():
		return lostErr(a.lease)
	case <-timer.C:
	}
	resp, err := a.cli.Get(ctx, a.t.prefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("lock: re-read after lock-delay: %w", err)
	}
	if err := a.t.load(resp.Kvs, resp.Header.Revision); err != nil {
		return err
	}
	a.t.emptied = false
	return nil
}

// cleanup deletes own key after a failed acquisition, under a detached,
// bounded context. When the lease is lost there is nothing to do: the keeper
// revokes it, or the server expires it, and the key goes with it.
func (a *acquisition) cleanup(ctx context.Context) {
	if a.lease.Err() != nil {
		return
	}
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.WithoutCancel(ctx)), a.timeout)
	defer cancel()
	bo := retry.Backoff{Min: 5 * time.Millisecond, Max: 200 * time.Millisecond}
	for {
		// Unconditional: the key name is unique to this request (or to this
		// Mutex value, whose local slot this goroutine still holds).
		_, err := a.cli.Delete(cctx, a.t.key)
		if err == nil || !retry.Retriable(err) || bo.Wait(cctx) != nil {
			return
		}
	}
}
