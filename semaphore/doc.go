// Package semaphore provides a distributed counting semaphore on etcd with
// lease-bound, fenced permits, granted first come, first served.
//
//	s := semaphore.New(k, "/pools/gpu", 4)
//	p, err := s.Acquire(ctx, 2)
//	if err != nil {
//		return err
//	}
//	defer p.Release(context.WithoutCancel(ctx))
//	return train(p.Context(), p.Token())
//
// # What is guaranteed
//
//   - FIFO: a request is granted when it and every request made before it
//     fit within the limit together, so a request for many permits is never
//     starved by later small ones (and a later small request waits behind
//     it even when it would fit now).
//   - Permits die with their lease. A Permit's Context is canceled, with a
//     cause that errors.Is ErrLost, when the lease passes its safe deadline
//     without renewal — before the server can expire it and grant the
//     permits to someone else — or when etcd says the lease or the key is
//     gone. Token (the key's create revision) and Guard fence work done with
//     the permit, exactly as for package lock; without fencing, a paused
//     holder can still act after its permits were handed on.
//   - The limit is stored with the semaphore. A Semaphore opened with a
//     different limit gets ErrLimitMismatch instead of silently enforcing
//     another one; SetLimit changes it deliberately, for the waiting
//     requests too. Permits granted before a shrink are not taken back.
//   - No global mutex: each request is one key; requests never serialise on
//     a shared lock key (Curator's semaphore takes a lock around every
//     acquire), so a release and an acquire proceed in parallel.
//   - Bad input (limit ≤ 0 or over MaxLimit, n ≤ 0, n > limit, a bad
//     name, an oversized value) is an error before anything is written. A
//     value under the semaphore's keys that concord did not write is
//     ErrCorrupt, not a panic.
//
// # Supported servers
//
// etcd 3.5, 3.6 and 3.7: permits stand on a lease keeper, which refuses
// etcd 3.4 (leasekeeper.ErrUnsupported).
//
// # Keys
//
// A semaphore named N writes only under N + "/.semaphore/":
//
//	N/.semaphore/limit     the limit, in decimal; no lease (Delete deletes it)
//	N/.semaphore/q/<id>    one per request, attached to the requester's
//	                       lease; value "s1:<n>:<unix ns of the request>:<WithValue>"
//
// # Cost, in etcd round trips
//
//   - Acquire, permits free: one transaction (compare the stored limit, put
//     own key, read the prefix: one Raft write). The first acquisition of a
//     new semaphore costs two more: its transaction fails on the missing
//     limit, the limit is stored, and the transaction is sent again. A watch
//     on the prefix, reused across a Semaphore's acquisitions, goes out with
//     it and stays open while the permit is held, to learn of a lost key.
//   - Acquire, must wait: the same transaction, then no request while
//     waiting: every release and limit change ahead arrives on the watch,
//     which delivers all changes after the transaction's read, in order (one
//     read closes the gap when a new watch registered later than the
//     transaction). Events at or below the read's revision are ignored.
//   - TryAcquire: one transaction, and one delete when the permits are not
//     free.
//   - Release: one transaction. SetLimit: one write. Inspect: one read.
//     Delete: one transaction.
package semaphore
