// Package barrier coordinates processes at a point in time: a Barrier that
// blocks waiters while it is held, a DoubleBarrier that starts n
// participants together and finishes them together, and a count-down Latch.
//
// # Barrier
//
// Hold raises the barrier, Release lowers it, Wait returns once it is down.
// A barrier from NewLeased binds its hold to the holder's lease: if the
// holder dies (its lease expires, TTL to TTL + 0.5 s after its last renewal)
// or its lease is revoked, the barrier falls and waiters return. A barrier
// from New is held until released, whoever releases it.
//
// # DoubleBarrier
//
// Enter takes a seat (a key bound to the participant's lease) and blocks
// until n seats are taken; the n-th participant writes the ready key, which
// wakes the others. Seat.Leave deletes the seat and blocks until no seat is
// left. A Seat follows concord's one model: Token (the seat key's create
// revision), Context (canceled with ErrLost if the lease is lost or the seat
// deleted by anyone else, with ErrLeft after Leave), Guard, and an
// idempotent Leave.
//
// When a participant dies (its lease expires or is revoked):
//
//   - before the barrier opened, its seat goes and the count drops: the
//     others keep waiting in Enter until n live participants are seated (or
//     their contexts end). A participant that dies is as if it never came.
//   - after the barrier opened, its seat goes and it counts as having left:
//     the others' Leave returns once every other seat is gone. Nobody waits
//     for a dead participant longer than its lease's TTL + 0.5 s.
//   - a participant's own Enter fails with ErrLost if its seat goes while it
//     waits; its Seat's Context is canceled with ErrLost.
//
// A participant that arrives while the ready key still stands (the previous
// round has not finished leaving) enters at once. The ready key is bound to
// the lease of the participant that opened the barrier and is deleted by the
// Leave that sees the last seat go (guarded so that a new round's seat keeps
// it); if every participant's Leave is abandoned, it goes with its lease.
// A ctx that ends inside Enter or Leave leaves no seat of its participant:
// Enter deletes its seat with a detached, bounded context, and Leave deletes
// the seat before it waits.
//
// # Latch
//
// A Latch opens after count CountDowns from any processes; Wait blocks until
// it is open. The count lives in etcd (not bound to a lease), is created by
// the first CountDown, and stays until Delete. Every process must use the
// same count (ErrCountMismatch otherwise). A latch deleted while waited on
// wakes its waiters with ErrDeleted.
//
// # What is not guaranteed
//
//   - Barriers order nothing by themselves: a participant paused past its
//     loss can act after the others moved on; fence effects with Seat.Guard.
//   - Waiters on a Barrier or Latch only learn the state; a barrier raised
//     again right after it fell may not be noticed by a waiter that already
//     returned.
//
// # Supported servers
//
// etcd 3.5, 3.6 and 3.7. A double barrier stands on a lease keeper, which
// refuses etcd 3.4 (leasekeeper.ErrUnsupported); Barrier and Latch use no
// lease and work on 3.4 too.
//
// # Keys
//
//	N/.barrier/hold            the barrier's hold (lease-bound with NewLeased)
//	N/.double/seats/<16 hex>   one per seated participant, lease-bound
//	N/.double/ready            present while the double barrier is open,
//	                           bound to the opener's lease
//	N/.latch/count             "remaining/initial", e.g. "2/3"
//
// A value under these keys that does not decode is an error (ErrCorrupt),
// never a panic; so is a key under seats/ of another shape, and a ready key
// that is not empty or on no lease.
//
// # Cost in etcd round trips
//
//   - Hold: one transaction. Release: one delete. Wait: one read, then one
//     watch (no start revision, so etcd syncs it at once; a read closes the
//     gap when it was created past the read) and one read per change.
//   - Enter: one transaction (write the seat, count seats, read the ready
//     key); the n-th participant one more (write the ready key); the others
//     one watch on the ready key and a read per change. The seat adds one
//     watch on its own key for its lifetime.
//   - Leave: one transaction (delete the seat), one read to count, then a
//     watch on the seats and a count per change; one guarded delete of the
//     ready key at the end.
//   - CountDown: one transaction when it creates the latch, otherwise that
//     one plus a compare-and-swap (retried on a lost race). Count: one read.
//     Latch.Wait: as Barrier.Wait.
//
// # Telemetry
//
// Every wait records a "barrier.wait" span (kind, name, wait time, token for
// seats, outcome) and the concord.barrier.wait.duration histogram, through
// the global providers unless WithTracerProvider / WithMeterProvider are
// given.
package barrier
