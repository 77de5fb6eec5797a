// Package leasekeeper owns the etcd lease that every lease-bound concord
// recipe stands on, keeps it alive, and tells its holders when it can no
// longer be trusted — before the server can hand what they hold to anyone
// else.
//
// # The safe deadline
//
// Each renewal is timed from the moment it was sent. etcd extends a lease by
// its TTL from the moment the leader handles the renewal, which is later, so
// sent+TTL is a time before which the server cannot have expired the lease
// (a leader change only lengthens a lease). SafeUntil reports that time for
// the current lease. If no later renewal succeeds, the lease's context is
// canceled at SafeUntil minus a margin (WithMargin), with a cause that
// errors.Is ErrLeaseLost. When etcd answers that the lease is gone (revoked,
// or expired on the server), the context is canceled at once.
//
// etcd's own concurrency.Session signals loss only when no keep-alive
// response came within a TTL of the last one received, checked once a second,
// so its Done channel can close up to a second after the server expired the
// lease and a new holder was granted. Timing from the send closes that window.
//
// # What is guaranteed, and what is not
//
// In the absence of process pauses and of clock-rate faults, a lease's
// context is canceled before the server deletes the keys attached to it.
// Nothing can guarantee that for a process that is paused (GC, swap, SIGSTOP)
// between checking its context and acting: protected resources must check
// fencing tokens, or writes into etcd must be guarded (see the recipes'
// Guard methods).
//
// Nor can it be guaranteed against an etcd leader that was itself paused.
// A leader process stopped (SIGSTOP, a frozen VM) for longer than a lease's
// remaining TTL may, when it runs again, revoke every lease whose TTL ran
// out by its own clock before it learns that a new leader was elected
// meanwhile (etcd issues 12528 and 15247; the guard in etcd 3.5 and 3.6
// skips its check when the raft loop ticked recently, which a resumed
// process satisfies). The lease then dies on the server before its safe
// deadline, while the holder still believes it holds. The keeper learns it
// at its next renewal ("lease not found") and moves to Lost and then to a
// new lease, and holdings end as lost; in the window between, only fencing
// (tokens, guarded writes) protects what the holder does.
//
// # Supported servers
//
// etcd 3.5, 3.6 and 3.7. New refuses etcd 3.4 (ErrUnsupported): it answers
// watch progress requests before the watch has caught up, which the locks
// that stand on a keeper rely on.
//
// # Choosing a TTL
//
// A lease outlives the death of the etcd leader only if a renewal can be
// confirmed before its safe deadline: the members elect a new leader up to
// two election timeouts after the old one stopped answering, and renewals
// are sent every third of the TTL. With etcd's default 1 s election
// timeout, a TTL of 5 s or more keeps leases through a leader failover; 2 s
// (etcd's minimum with those timings) loses them at every failover.
//
// # States
//
// A Keeper moves through Connected (renewals succeed), Suspended (renewals
// failing, safe deadline not yet passed), Lost (deadline passed or etcd says
// the lease is gone; its context is canceled), Reconnected (a new lease
// generation was granted after a loss) and Closed. After Lost the keeper
// grants a new lease with backoff until it is closed; holdings bound to the
// old lease stay lost. Subscribe observes the changes without ever blocking
// the keeper.
//
// # Cost
//
// One Status request per endpoint (the version check) and one Grant on New;
// one Grant after each loss; one LeaseKeepAlive round trip every
// TTL/3 (handled by the etcd leader without a Raft write), on one long-lived
// stream that is reopened only after a failure (a new stream costs a new
// authentication when etcd auth is on); one Revoke on Close. The keeper runs
// one goroutine, one per RPC in flight and one that receives on the
// keep-alive stream, all joined by Close.
//
// # Keys
//
// The keeper writes no keys.
package leasekeeper
