// Package wait implements the one way concord's queue-shaped recipes (lock,
// semaphore, election, barrier) wait their turn: by watching the deletion of
// their immediate predecessor, ordered by create revision, so that a release
// wakes exactly one waiter.
//
// Three etcd behaviours shape it:
//
//   - A watch that starts at an already-written revision joins etcd's unsynced
//     watcher group, caught up only every 100 ms; under contention even
//     "read revision + 1" is often too old by the time the watch registers.
//     So the watch has no start revision (etcd syncs it at once) and reports
//     its creation revision; if that is past the revision of our last read, a
//     deletion may have fallen into the gap, and we read again before trusting
//     the watch.
//   - A lagging member can replay the deletion of an earlier incarnation of a
//     reused key: only a DELETE above the predecessor's create revision (or a
//     PUT of a newer incarnation) counts.
//   - A waiter in a minority partition must not hang: watches carry
//     WithRequireLeader, and internal/watch opens a failed watch again,
//     announcing the new creation, which leads to a fresh read.
//
// After the predecessor goes, the waiter reads again: something older may
// remain (a waiter between them that abandoned its turn is not the only
// case), and it waits for that one next. The read is a single linearizable
// transaction that also confirms the waiter's own key still exists with its
// create revision, so a waiter whose key was deleted (lease lost, forced
// release) never reports success.
//
// Cost: one read per predecessor seen, one watch on the waiter's own key for
// the whole wait, one watch per predecessor. No polling.
package wait

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/watch"
)

// ErrOwnKeyGone reports that the waiter's own key was deleted, or replaced by
// a newer incarnation, while it waited.
var ErrOwnKeyGone = errors.New("own key deleted while waiting")

// Own identifies the waiter's key by name and create revision.
type Own struct {
	Key string
	Rev int64
	// Check, if set, vets each predecessor read: an error (a key the
	// recipe did not write) ends the wait with it, rather than waiting for
	// a key that may never go.
	Check func(*mvccpb.KeyValue) error
	// Attempt, if positive, bounds each read: one sent to an etcd leader
	// that died or hangs is given up and sent again (retry.Attempt).
	Attempt time.Duration
}

// Pred is a predecessor already read by the caller (for example inside its
// acquire transaction) at revision ReadRev, which saves the first read.
type Pred struct {
	KV      *mvccpb.KeyValue
	ReadRev int64
}

// ForPredecessors blocks until no key under prefix has a create revision
// below own.Rev, and returns nil then. It returns ErrOwnKeyGone if own's key
// goes first, the cause of ctx if ctx ends, and a non-retriable etcd error
// as it is. known, if not nil, is the first predecessor to wait for.
//
// prefix need not contain own.Key: a reader of a read-write lock waits only
// for the writers' prefix.
func ForPredecessors(ctx context.Context, cli *clientv3.Client, prefix string, own Own, known *Pred) error {
	ownW := watch.Open(ctx, cli, own.Key, watch.Config{})
	defer ownW.Stop()
	var pred *Pred = known
	bo := retry.RequestPolicy.New()

	for {
		if pred != nil && own.Check != nil {
			if err := own.Check(pred.KV); err != nil {
				return err
			}
		}
		if pred == nil {
			p, err := read(ctx, cli, prefix, own)
			if err != nil {
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				if retry.Retriable(err) {
					if werr := bo.Wait(ctx); werr != nil {
						return werr
					}
					continue
				}
				return err
			}
			if p == nil {
				return nil
			}
			pred = p
			continue // vet it
		}

		gone, err := waitGone(ctx, cli, prefix, own, pred, ownW)
		if err != nil {
			return err
		}
		if gone {
			pred = nil // read again: something older may remain
			bo.Reset()
		}
	}
}

// read returns the newest key under prefix created before own, or nil if none
// is, in one transaction that also checks that own's key still exists.
func read(ctx context.Context, cli *clientv3.Client, prefix string, own Own) (*Pred, error) {
	if own.Attempt > 0 {
		actx, cancel := context.WithTimeout(ctx, own.Attempt)
		defer cancel()
		p, err := readOnce(actx, cli, prefix, own)
		if err != nil && actx.Err() != nil && ctx.Err() == nil {
			return nil, rpctypes.ErrTimeout // given up: retried like a server timeout
		}
		return p, err
	}
	return readOnce(ctx, cli, prefix, own)
}

func readOnce(ctx context.Context, cli *clientv3.Client, prefix string, own Own) (*Pred, error) {
	// Like the watches, the read requires a leader: on a member cut off from
	// the majority it fails at once (and is retried) instead of waiting for a
	// read index that cannot come.
	resp, err := cli.Txn(clientv3.WithRequireLeader(ctx)).
		If(clientv3.Compare(clientv3.CreateRevision(own.Key), "=", own.Rev)).
		Then(clientv3.OpGet(prefix, clientv3.WithPrefix(),
			clientv3.WithMaxCreateRev(own.Rev-1),
			clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend),
			clientv3.WithLimit(1))).
		Commit()
	if err != nil {
		return nil, err
	}
	if !resp.Succeeded {
		return nil, ErrOwnKeyGone
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, nil
	}
	return &Pred{KV: kvs[0], ReadRev: resp.Header.Revision}, nil
}

// waitGone watches pred until it is gone (true), or own's key goes
// (ErrOwnKeyGone). Both watches announce each (re)creation: a creation past
// the last read may hide a deletion, which a read settles.
func waitGone(ctx context.Context, cli *clientv3.Client, prefix string, own Own, pred *Pred, ownW *watch.Watch) (bool, error) {
	predKey := string(pred.KV.Key)
	predRev := pred.KV.CreateRevision
	predW := watch.Open(ctx, cli, predKey, watch.Config{})
	defer predW.Stop()
	// Events of the predecessor's watch count only once its creation is
	// known: until then, the read that follows the creation decides.
	predCreated := false

	for {
		select {
		case <-ctx.Done():
			return false, context.Cause(ctx)

		case resp, ok := <-ownW.C:
			if !ok {
				return false, fmt.Errorf("watch own key: %w", ownW.Err())
			}
			if resp.Created {
				if resp.Header.Revision > pred.ReadRev {
					if gone, err := recheck(ctx, cli, prefix, own, pred); err != nil || gone {
						return gone, err
					}
				}
				continue
			}
			for _, ev := range resp.Events {
				if ownEventEnds(ev, own) {
					return false, ErrOwnKeyGone
				}
			}

		case resp, ok := <-predW.C:
			if !ok {
				return false, fmt.Errorf("watch %s: %w", predKey, predW.Err())
			}
			if resp.Created {
				predCreated = true
				if resp.Header.Revision > pred.ReadRev {
					if gone, err := recheck(ctx, cli, prefix, own, pred); err != nil || gone {
						return gone, err
					}
				}
				continue
			}
			if !predCreated {
				continue
			}
			for _, ev := range resp.Events {
				if predEventEnds(ev, predRev) {
					return true, nil
				}
			}
		}
	}
}

// recheck reads again after a watch was created past the last read: is the
// predecessor we watch still the one to wait for?
func recheck(ctx context.Context, cli *clientv3.Client, prefix string, own Own, pred *Pred) (bool, error) {
	p, err := read(ctx, cli, prefix, own)
	if err != nil {
		if errors.Is(err, ErrOwnKeyGone) {
			return false, err
		}
		if ctx.Err() != nil {
			return false, context.Cause(ctx)
		}
		if retry.Retriable(err) {
			// Treat as gone: the caller reads again with backoff-free retry
			// through its own loop.
			return true, nil
		}
		return false, fmt.Errorf("re-read after watch creation: %w", err)
	}
	if p == nil || p.KV.CreateRevision != pred.KV.CreateRevision || string(p.KV.Key) != string(pred.KV.Key) {
		return true, nil
	}
	pred.ReadRev = p.ReadRev
	return false, nil
}

// predEventEnds reports whether ev ends the predecessor incarnation created at
// predRev. A DELETE at or below predRev belongs to an earlier incarnation of a
// reused key, replayed by a lagging member.
func predEventEnds(ev *clientv3.Event, predRev int64) bool {
	switch ev.Type {
	case clientv3.EventTypeDelete:
		return ev.Kv.ModRevision > predRev
	case clientv3.EventTypePut:
		return ev.Kv.CreateRevision > predRev
	}
	return false
}

func ownEventEnds(ev *clientv3.Event, own Own) bool {
	switch ev.Type {
	case clientv3.EventTypeDelete:
		return ev.Kv.ModRevision > own.Rev
	case clientv3.EventTypePut:
		return ev.Kv.CreateRevision > own.Rev
	}
	return false
}
