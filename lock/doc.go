// Package lock provides fair, fenced distributed locks on etcd: Mutex,
// RWMutex and Multi (several locks taken all-or-nothing).
//
//	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(10*time.Second))
//	...
//	defer k.Close(context.WithoutCancel(ctx))
//
//	h, err := lock.New(k, "/jobs/reindex").Lock(ctx)
//	if err != nil {
//		return err
//	}
//	defer h.Unlock(context.WithoutCancel(ctx))
//	return reindex(h.Context(), h.Token())
//
// # What a lock guarantees
//
// Requests are granted in the order etcd received them (by the create
// revision of their keys), and a release wakes only the next waiter: each
// waiter watches the two keys just ahead of it, not the whole queue, so etcd
// sends a deletion to the two Mutex waiters behind it (the next is granted,
// the one after reads the queue once), and to no one else; there is no herd
// of events or reads after each release. (The readers of an RWMutex that
// wait for the same writer all watch it, and are all granted when it goes.)
// A holding is bound to the keeper's lease and offers:
//
//   - Token: the create revision of its key, which strictly increases across
//     successive holders of a lock;
//   - Context: canceled, with a cause that errors.Is ErrLost, when the lease
//     passes its safe deadline without renewal — which is before the server
//     can expire the lease and grant the lock to anyone else — or when etcd
//     says the lease or the key is gone;
//   - Guard: comparisons that hold only while the lock is held;
//   - Unlock: idempotent; it deletes the key with a detached, bounded context
//     and changes local state only once etcd has confirmed, or once the lease
//     is lost (the key goes with it).
//
// A waiter whose lease is lost, or whose request is deleted, while it waits
// gets ErrLost, never a Hold. A Lock that is canceled or times out withdraws
// its request: the acquire transaction is given a short grace to answer, so
// that a put already on its way is not missed, and then the request's key,
// whose name is unique to it, is deleted whatever the answer was. That delete
// can keep Lock past its context while etcd cannot be reached, until etcd
// confirms it or the lease is lost (at most the TTL); a request that was
// never sent, and a watch that etcd has not confirmed yet, do not.
//
// Two Mutex values exclude each other exactly like two processes, also when
// they share a keeper, and goroutines sharing one Mutex value exclude each
// other too (they queue locally for its one key first).
//
// # What it does not guarantee: fencing
//
// No lock service can stop a holder that is paused (GC, swap, SIGSTOP, a
// slow disk) between checking its context and acting: by the time it acts,
// its lease may have expired and another process may hold the lock. Without
// fencing a distributed lock is an efficiency device, not mutual exclusion.
// Writes that must not be made by a former holder must be checked where they
// land:
//
//   - writes into etcd: in a transaction guarded by the hold,
//
//     resp, err := cli.Txn(ctx).If(h.Guard()...).Then(clientv3.OpPut(k, v)).Commit()
//     if err == nil && !resp.Succeeded { /* the lock is no longer held: nothing was written */ }
//
//     (A guarded transaction with no operations is no check: etcd serves a
//     read-only transaction from one member's state without a read barrier,
//     so it can pass on a follower that has not applied the deletion yet.)
//
//   - writes elsewhere: pass h.Token() along, and have the resource refuse a
//     token smaller than the largest it has seen. Package fence does that
//     in process, as HTTP and gRPC middleware, and in a SQL fence column.
//
// For resources that can do neither, WithLockDelay narrows (but cannot
// close) the window after an involuntary loss.
//
// A paused etcd leader defeats the safe deadline too. A leader process that
// was stopped (SIGSTOP, a frozen VM) for longer than a lease's remaining TTL
// may, when it runs again, revoke every lease whose TTL ran out by its own
// clock before it learns that another member leads now (etcd issues 12528
// and 15247). The holder's key is then deleted and the next waiter granted
// while the holder's context is still live, for up to a third of the TTL
// (until its keeper's next renewal hears "lease not found"). Measured on
// etcd 3.5: the fence refused the former holder's write. Fencing is what
// protects writes then.
//
// # Supported servers
//
// etcd 3.5, 3.6 and 3.7. The confirm step below relies on etcd answering a
// progress request only once every watch of the stream has caught up,
// which 3.5 and later do; 3.4 answers at once. The keeper a Mutex stands on
// refuses etcd 3.4 (leasekeeper.ErrUnsupported).
//
// # After a fault
//
// Each request is given about an election timeout (retry.Attempt: a fifth
// of the TTL, at most 1 s) before it is sent again, and retried until the
// TTL, the lease's loss or the caller's context ends, so a Lock, an Unlock
// or a wait that met a dead or hung etcd leader goes on about one election
// after the fault, not a TTL later. A request given up may still have been
// applied: each is safe to repeat (the acquire transaction finds its own
// key, the release is guarded by the key's create revision).
//
// # Bounded holds
//
// WithMaxHold ends a hold after a fixed time even while its holder lives:
// the context first (ErrExpired, with ErrLost), then a fenced delete of the
// key, one Raft write, as by Unlock. The time is the holder's own clock, so
// a holder that is paused past the bound learns it when it runs again and
// sees its context ended; the next holder may have started meanwhile, as
// after a lost lease, and fencing tokens tell them apart.
//
// # No reentrancy
//
// Locking a Mutex the goroutine already holds blocks (or TryLock returns
// ErrLocked). Reentrancy is deliberately not offered: Go has no goroutine
// identity to hang it on, and a reentrant lock hides the very bug it is meant
// to paper over — code that takes a lock it already holds cannot know what
// invariant the outer holder has broken for the moment. Pass the Hold down
// instead.
//
// # Keys
//
// A lock named N writes only under N + "/.lock/" (an RWMutex under
// N + "/.rwlock/"):
//
//	N/.lock/q/<id>             one per Mutex value, attached to its lease;
//	                           value "c1:<unix ns of the request>:<WithValue>"
//	N/.lock/release/<token>    a release request ("request" or "force"),
//	                           attached to the holder's lease
//	N/.rwlock/q/r<id>, w<id>   one per RLock / Lock of an RWMutex
//	N/.rwlock/release/<token>  as for a Mutex, one per holder asked
//
// The unlock of the key ahead may put a waiting Mutex key again, value and
// lease unchanged (a touch, see below), so its version and mod revision
// move; its create revision, the token, does not.
//
// <id> is 16 hex digits. A key of another shape under q/ stops Lock,
// TryLock, Inspect and the releases with ErrCorrupt, before anything is
// written; so does a value that is not a request's for Inspect and the
// releases, which read values. Lock and TryLock read keys only (see Cost),
// so a well-shaped key with a foreign value counts for them as a request.
//
// A Mutex value reuses its <id> key for every acquisition: each put after a
// delete gets a new create revision, so tokens stay unique, while the queue
// does not accumulate one tombstone per acquisition (every range over the
// prefix would have to step over them until compaction).
//
// # Cost, in etcd round trips
//
//   - Lock, lock free: one transaction (put own key + read the queue's keys,
//     one Raft write). Without WithLockDelay the read asks for keys only,
//     which etcd serves from its in-memory index, with no backend read per
//     key. A watch on own key (a Mutex's sees its puts too, for the touch
//     below; an RWMutex request's deletions only, filtered on the server)
//     is opened before it, stays open while the lock is held to learn of a
//     forced release or a lost key, and is then kept for the Mutex value's
//     next acquisition (closed after 2 s unused), so a busy Mutex opens no
//     watch per acquisition (an RWMutex opens one per request). A Mutex
//     value's watches share one gRPC watch stream of their own on the
//     client's connection (a few goroutines on the client and on the
//     serving member while the value has watches open), which the client
//     closes with the last of them. This watch is what ends a Hold's
//     context when someone else deletes its key; an uncontended Mutex
//     cycle pays for it with two events sent to the client (own put and own
//     delete), which etcd's Mutex, having no such watch, does not.
//     Hold.Revoked, when first called, adds one watch on the hold's release
//     request key.
//   - Lock, lock busy: the same transaction, then watches on the nearest
//     and second nearest keys ahead (deletions only), pooled like the one on
//     own key: under steady contention the keys ahead of a Mutex value are
//     the same from one acquisition to the next, so they are reused. When
//     the second nearest goes, one read of the queue's keys tells what is
//     left ahead: usually only the nearest, which is then the holder, so its
//     release grants own on that one event, with no read on the way. (A
//     Mutex's read also takes the key just behind own, in the same
//     revision, to learn the next waiter, whose key its unlock will touch:
//     see below.)
//     Why it is correct: the transaction's read shows every key ahead of own
//     key at its revision; keys older than own can only go, never come, so
//     what a waiter knows is always a superset of what is still ahead, and
//     each watch delivers every deletion of its key after the last read
//     (events at or below it are ignored; a watch created later than the
//     read costs one more read to close the gap). When a watched key goes
//     and more than one other key was known ahead, the waiter reads again
//     rather than guess which of them went too. That read needs no read
//     barrier: any member's answer at or past the deletion's revision lists
//     a superset of what remains, and a member that lags is asked again
//     with a linearizable read. Before a grant that follows an event rather
//     than a read, the waiter makes sure its own key was not deleted first
//     (by a revoke of its lease from outside its keeper, or by hand). A
//     Mutex's unlock touches the key of the next waiter, as its last read
//     saw it: in the same transaction as its delete, and only if that key
//     is still the same incarnation, it puts the key again with its value
//     and lease unchanged. That put reaches the next waiter on the watch of
//     its own key and proves the key stood at the revision that grants it,
//     with no round trip. A holder knows the next waiter only if it read
//     the queue while it waited, which happens when more than two keys were
//     ahead of it when it asked: under deep contention, not with two or
//     three contenders. Without a touch, or when the deletion ahead is
//     handled before the touch arrives, a progress request settles it: a
//     Mutex's own key and keys ahead are watched on one gRPC stream of the
//     value's own, on which etcd sends events in revision order, and a
//     progress request makes etcd answer on every watch of the stream after
//     all events up to its revision (a touch that arrives first ends the
//     wait). An RWMutex request reads the queue instead (its readers are
//     granted together, and a progress request per reader would be
//     answered on every reader's watches). Because the watches have no
//     start revision, etcd syncs them at once, instead of in the 100 ms
//     loop that serves watches starting in the past.
//   - TryLock: one transaction (put only if the queue is empty).
//   - Unlock: one transaction (delete own key and any release request, and
//     touch the next waiter's key).
//   - RequestRelease, ForceRelease: one read and one transaction.
//     RequestReleaseRWMutex, ForceReleaseRWMutex: one read of the queue and
//     one transaction per 32 holders (an RWMutex may have many readers).
//   - Inspect, InspectRWMutex: one read.
//   - Lock-delay: one LeaseTimeToLive read per lease of the keys that were
//     ahead at the last read when the queue ahead empties (a delay follows
//     if any of them is gone: the holder's, or that of a waiter that lost
//     its lease, which is the safe reading), and one read after the delay.
package lock
