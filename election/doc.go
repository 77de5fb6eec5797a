// Package election elects one leader among candidates, with terms that are
// fenced and bound to a lease, after concord's one model: a Term has a
// Token, a Context that ends with ErrLost before the server can elect anyone
// else, a Guard for fenced writes, and an idempotent Resign.
//
//	e := election.New(k, "/services/billing")
//	t, err := e.Campaign(ctx, "host-a:8080")
//	if err != nil {
//		return err
//	}
//	defer t.Resign(context.WithoutCancel(ctx))
//	err = lead(t.Context(), t.Token())
//
// Run wraps that in a loop that campaigns again after a loss, and Observe
// follows who leads. Handover (and Run with WithHandover) ends a term by
// electing a chosen candidate at once, such as the newest replica of a
// rolling deploy (Newest), rather than the next in line.
//
// # Guarantees
//
//   - Candidates are served in the order they campaigned (create revision);
//     a resignation or loss wakes only the next candidate. Handover is the
//     one exception: the candidates it passes over lose their place (and
//     their next term has a new token) but not their campaign.
//   - A candidate whose lease is lost, or whose key is deleted, while it waits
//     gets an error that errors.Is ErrLost, never a Term. (etcd's
//     concurrency.Election.Campaign returns nil in that case.) Campaign also
//     confirms, after its last predecessor went, that its key still exists
//     with its create revision and that its lease is still trusted locally.
//   - A term's context is canceled with ErrLost at the lease's safe deadline
//     (minus the keeper's margin) if renewals stop: before the server can
//     expire the key and elect the next candidate, in the absence of process
//     pauses. It is also canceled when etcd reports the lease gone or when the
//     key is deleted by anyone else (seen on a watch of the key).
//   - Token strictly increases from one term of an election to the next, and
//     Guard holds only while the term's key exists with that create revision:
//     writes guarded by it cannot land after the term ended, even from a
//     process that was paused past its loss.
//   - Observe delivers the current state first (including "no leader"), then
//     every change in revision order, never an older state after a newer one.
//     It resumes after watch failures from the last revision it applied;
//     only when that history was compacted meanwhile are intermediate states
//     coalesced into the current one.
//
// # What is not guaranteed
//
//   - A process paused (GC, swap, SIGSTOP) between checking its context and
//     acting can act after its term ended; only fenced effects (Guard, or a
//     protected service that rejects smaller tokens) are safe against that.
//   - Revoking a lease on the server (an operator) or deleting a term's key
//     ends the term at once; the holder learns it within a watch round trip,
//     while the next candidate may already be elected.
//   - Campaigns through one Election share its key and queue locally; create
//     one Election per competing candidate.
//
// # Supported servers
//
// etcd 3.5, 3.6 and 3.7: candidates stand on a lease keeper, which refuses
// etcd 3.4 (leasekeeper.ErrUnsupported). Leader, Candidates and Observe
// read and watch only, and work on 3.4 too.
//
// # Keys
//
// An election named N writes only under N + "/.election/":
//
//	N/.election/<16 hex digits>   one key per Election value, attached to
//	                              the keeper's lease; value: the candidate's
//	                              value. The leader is the key with the
//	                              smallest create revision.
//
//	N/.handover/<16 hex digits>   left by Handover for a candidate it passed
//	                              over, on that candidate's lease; value: the
//	                              create revision of the key it deleted. The
//	                              candidate's Campaign deletes it on reading
//	                              it and enqueues again.
//
// The key is reused by every Campaign through the same Election (a new put
// after a delete still yields a new create revision, so tokens stay unique),
// which keeps tombstones from piling up under the prefix.
//
// A key of another shape under the prefix, or one on no lease, was written by
// no Campaign: LeaderOf, Candidates, Observe and a Campaign that meets it
// among its predecessors return ErrCorrupt rather than take it for a
// candidate, which would lead the election, or block it, for good.
//
// # Cost in etcd round trips
//
//   - Campaign, uncontended: one transaction (put the key if absent and read
//     the two newest candidates by create revision; the second is the
//     immediate predecessor), plus one watch on the term's own key that lasts
//     the term, and one read of that key each time the watch is created
//     (to close the gap before it).
//   - Campaign, waiting: additionally one watch on its own key and one on its
//     immediate predecessor (both without a start revision, so etcd syncs them
//     at once instead of in its 100 ms unsynced loop; a read closes the gap
//     when a watch was created past the last read) and one read per
//     predecessor that goes. A resignation wakes only the next candidate;
//     handoff takes the delete, one watch event and one read.
//   - Handover: one read of the candidates and one transaction (the term's
//     key and the keys ahead of the chosen candidate deleted, a marker put
//     for each of those): the chosen candidate is elected by that one Raft
//     entry. Each candidate passed over reads its marker, deletes it and
//     campaigns again (two writes).
//   - Resign: one transaction (delete guarded by create revision). Proclaim:
//     one guarded transaction. Leader: one read.
//   - Observe: one read of all candidates, then one watch on the prefix.
//   - LeaderOf, Candidates (for tools that only inspect, with a client and no
//     lease): one read.
//
// # Telemetry
//
// Campaign records an "election.campaign" span (wait time, token, outcome:
// "acquired", "canceled", "lost" or "error", as every recipe's acquisitions)
// through the global tracer provider unless WithTracerProvider is given.
// Metrics through the global meter provider unless WithMeterProvider is
// given: concord.election.leadership_changes (terms won),
// concord.election.wait.duration (seconds Campaign waited, by outcome) and
// concord.election.hold.duration (seconds a term was held).
package election
