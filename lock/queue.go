package lock

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/concordkit/concord/internal/names"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/holding"
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

// replyGrace is how long an acquire transaction in flight may still answer
// after the caller's context ended: long enough for a healthy cluster, short
// enough that Lock returns promptly when etcd is unreachable.
const replyGrace = 250 * time.Millisecond

// errOwnGone reports that the waiter's own key was deleted or replaced.
var errOwnGone = errors.New("own key deleted")

// watchOpts are those of the watches on keys ahead, and on an RWMutex
// request's own key: one key, deletions only. A new request is always
// younger than every waiter, so only deletions can change a waiter's turn.
// (A Mutex's own key is watched for puts too: the touch of the unlock ahead.
// Release requests are puts; a holder watches for them separately, once
// asked to.)
var watchOpts = []clientv3.OpOption{clientv3.WithFilterPut()}

// pred is a key ahead of the waiter's own.
type pred struct {
	rev   int64
	lease clientv3.LeaseID
}

// turn follows which keys ahead of own must still go before own is granted,
// from the reads of the queue and the deletions seen on the watches.
type turn struct {
	prefix string // the lock's prefix
	queue  string // prefix + "q/"
	key    string // own key
	rw     bool   // an RWMutex's queue: requests are r<id> and w<id>
	rev    int64  // own create revision, the token
	// yields reports whether own must wait for the older key k.
	yields func(k string) bool

	seen int64 // revision of the last read; events at or below it are in it
	// alive is the highest revision at which own key was seen to stand by
	// an event on its watch: a touch by the unlock of the key ahead.
	alive int64
	// next is the key just behind own, with its create revision, as of the
	// last read (Mutex only): own unlock touches it (touchNext).
	next    string
	nextRev int64
	// applied is the revision of the latest deletion ahead taken from a
	// watch without a read after it: a later read must be at least as new.
	applied int64
	preds   map[string]pred
	// gone are the keys seen to go, or found gone by a read, since the last
	// read that still showed keys ahead, for lock-delay: one of them was the
	// last holder.
	gone []pred
	// emptied is set when the last key ahead went while own waited.
	emptied bool

	requested bool // a release was requested for own token
	forced    bool // ForceRelease deleted own key
}

// load replaces what turn knows with a read at rev: of the whole prefix, or
// of the queue's keys. Own key must be in it.
func (t *turn) load(kvs []*mvccpb.KeyValue, rev int64) error {
	t.seen = rev
	clear(t.preds)
	t.next, t.nextRev = "", 0
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
		case strings.HasPrefix(k, t.queue) && !requestKeyOK(t.queue, k, t.rw):
			return fmt.Errorf("%w: key %s is no request of this lock", ErrCorrupt, k)
		case strings.HasPrefix(k, t.queue) && kv.CreateRevision < t.rev && (t.yields == nil || t.yields(k)):
			t.preds[k] = pred{rev: kv.CreateRevision, lease: clientv3.LeaseID(kv.Lease)}
		case strings.HasPrefix(k, t.queue) && kv.CreateRevision > t.rev && (t.next == "" || kv.CreateRevision < t.nextRev):
			t.next, t.nextRev = k, kv.CreateRevision
		}
	}
	if !found {
		return errOwnGone
	}
	return nil
}

// nearest2 returns the keys ahead with the highest and second highest
// create revisions ("" if none): own is granted right after the first,
// unless it leaves the queue first.
func (t *turn) nearest2() (first, second string) {
	var r1, r2 int64
	for k, p := range t.preds {
		switch {
		case p.rev > r1:
			second, r2 = first, r1
			first, r1 = k, p.rev
		case p.rev > r2:
			second, r2 = k, p.rev
		}
	}
	return first, second
}

// apply updates turn with one event of the watch on own key. It returns
// errOwnGone when own key is deleted or replaced.
func (t *turn) apply(ev *clientv3.Event) error {
	if ev.Kv.ModRevision <= t.seen || string(ev.Kv.Key) != t.key {
		return nil // already part of the last read (or an older incarnation)
	}
	if ev.Type == clientv3.EventTypeDelete || ev.Kv.CreateRevision != t.rev {
		return errOwnGone
	}
	// A put of the same incarnation (the unlock ahead touched it, see
	// touchNext): own key stood at that revision.
	t.alive = max(t.alive, ev.Kv.ModRevision)
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
	bo := retry.RequestPolicy.New()
	bounds := retry.NewBounds(retry.Attempt(a.timeout))
	timedOut := false
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		if err := a.lease.Err(); err != nil {
			return lostErr(a.lease)
		}
		// Each attempt is short (retry.Attempt): a transaction sent to an
		// etcd leader that died or hangs is sent again once another is
		// elected. A later attempt finds an earlier one's key (below).
		tctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.WithoutCancel(ctx)), bounds.Next(timedOut))
		// If ctx ends first, give the answer a short grace to arrive.
		stopGrace := context.AfterFunc(ctx, func() { time.AfterFunc(replyGrace, cancel) })
		a.sent = true
		put := clientv3.OpPut(t.key, value, clientv3.WithLease(a.lease.ID()))
		var txn clientv3.Txn
		if try {
			// Own key counts too: a leftover of an earlier attempt is
			// deleted below and the transaction tried again.
			txn = a.cli.Txn(tctx).
				If(clientv3.Compare(clientv3.CreateRevision(t.queue), "=", 0).WithPrefix()).
				Then(put, a.enqueueRead()).
				Else(clientv3.OpGet(t.key), clientv3.OpGet(t.queue, clientv3.WithPrefix(), clientv3.WithKeysOnly()))
		} else {
			txn = a.cli.Txn(tctx).
				If(clientv3.Compare(clientv3.CreateRevision(t.key), "=", 0)).
				Then(put, a.enqueueRead()).
				Else(clientv3.OpGet(t.key))
		}
		resp, err := txn.Commit()
		timedOut = err != nil && tctx.Err() != nil && ctx.Err() == nil
		stopGrace()
		cancel()
		switch {
		case err == nil:
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return fmt.Errorf("%w: lease %x gone before the request was queued: %w", ErrLost, int64(a.lease.ID()), err)
		case retry.Unknown(err) && ctx.Err() == nil:
			// The put may have been applied: the next attempt finds the key
			// and replaces it, or the caller's cleanup deletes it.
			if werr := bo.Wait(ctx); werr != nil {
				return werr
			}
			continue
		case ctx.Err() != nil:
			// The answer's grace after ctx ended ran out.
			return context.Cause(ctx)
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
		var (
			resp clientv3.WatchResponse
			ok   bool
			i    int
		)
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-a.lease.Done():
			return lostErr(a.lease)
		case resp, ok = <-a.w.C:
			if !ok {
				return fmt.Errorf("lock: watch own key: %w", a.w.Err())
			}
			if resp.Created {
				// The first creation, or a new one after the watch failed
				// (leader lost, stream broken): close the gap.
				if resp.Header.Revision > t.seen {
					if err := a.refresh(ctx, resp.Header.Revision); err != nil {
						return err
					}
				}
				continue
			}
			for _, ev := range resp.Events {
				if err := t.apply(ev); err != nil {
					return err
				}
			}
			continue
		case resp, ok = <-a.ahead[0].C:
			i = 0
		case resp, ok = <-ch1:
			i = 1
		}
		w := a.ahead[i]
		if !ok {
			return fmt.Errorf("lock: watch %s: %w", w.Key(), w.Err())
		}
		if resp.Created {
			if resp.Header.Revision > t.seen {
				if err := a.refresh(ctx, resp.Header.Revision); err != nil {
					return err
				}
			}
			continue
		}
		var goneAt int64
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete && string(ev.Kv.Key) == w.Key() && ev.Kv.ModRevision > t.seen {
				goneAt = ev.Kv.ModRevision
			}
		}
		if goneAt == 0 {
			continue
		}
		t.applied = max(t.applied, goneAt)
		if len(t.preds) > 2 {
			// Keys further ahead may have gone without a word to this
			// waiter: ask which remain.
			if err := a.refresh(ctx, goneAt); err != nil {
				return err
			}
			continue
		}
		// What is left ahead is known without a read: the map holds every
		// key that can still be ahead.
		t.gone = append(t.gone, t.preds[w.Key()])
		delete(t.preds, w.Key())
		if len(t.preds) == 0 {
			t.emptied = true
			if err := a.confirm(ctx, goneAt); err != nil {
				return err
			}
		}
	}
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
			return lostErr(a.lease)
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
		return lostErr(a.lease)
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

// cleanup deletes own key after a failed acquisition, under a detached,
// bounded context. When the lease is lost there is nothing to do: the keeper
// revokes it, or the server expires it, and the key goes with it.
func (a *acquisition) cleanup(ctx context.Context) {
	// Unconditional: the key name is unique to this request (or to this
	// Mutex value, whose local slot this goroutine still holds).
	holding.Withdraw(ctx, a.cli, a.lease, a.timeout, a.t.key)
}
