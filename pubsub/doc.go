// Package pubsub publishes messages on named topics kept in etcd and delivers
// them to subscribers in publish order, resumable from a revision, with every
// message that cannot be delivered reported as an explicit Gap — never lost
// silently.
//
//	rev, err := pubsub.Publish(ctx, cli, "orders", payload, pubsub.WithMaxCount(10000))
//
//	sub, err := pubsub.Subscribe(ctx, cli, "orders", pubsub.FromRevision(cursor))
//	for {
//		ev, err := sub.Next(ctx)
//		if err != nil {
//			return err // ctx ended, or the subscription was closed
//		}
//		if ev.Gap != nil {
//			// messages at revisions ev.Gap.From..To were not delivered
//		} else {
//			handle(ev.Message)
//			cursor = ev.Message.Rev + 1
//		}
//	}
//
// # Supported servers
//
// etcd 3.4 to 3.7: a Hub watches and writes with no lease and does not
// rely on progress notifications.
//
// # Keys
//
// A topic T owns the keys under T + "/.pubsub/" (internal/names) and writes
// nothing else:
//
//   - T/.pubsub/head — the topic's head: a format byte 0x02, then as varints
//     the sequence number of the latest message, the retention count and the
//     retention age in nanoseconds. Its ModRevision is the revision of the
//     latest publish.
//   - T/.pubsub/s/<i>, i in [0, count) — a ring of slots; message number n is
//     in slot n mod count: a format byte 0x01, the sequence number and the
//     publisher's Unix time in nanoseconds as varints, then the payload.
//
// # Publishing and retention
//
// Publish is one transaction: if the head's ModRevision is the one this Hub
// last saw, write the head with the sequence number plus one and write the
// message into its slot; else return the head. Messages are therefore
// numbered 1, 2, 3… without holes, in the order of their revisions, and the
// ring always holds the newest count of them. Retention by count is the ring
// overwriting its oldest slot in that same transaction: it costs nothing and
// deletes nothing, so no tombstones accumulate and the topic never holds more
// than count+1 keys. Every read of the ring is bounded by count and paged
// (512 keys per request).
//
// Retention by age (WithMaxAge) is done by the age trimmer of each Hub that
// published to the topic with that limit: one goroutine per Hub, waking every
// quarter of the shortest limit (10 ms to 1 min), which deletes the expired
// messages oldest first, each delete guarded by the slot's ModRevision so a
// slot just overwritten by a publisher is left alone. A deleted slot is
// re-created by a later publish, so the key space stays bounded. Retention is
// fixed by a topic's first publish and kept in its head: a publish asking for
// a different retention fails with ErrRetention.
//
// Cost of a publish: one round trip; one more per concurrent publish from
// another Hub that moved the head first (the else branch returns the new
// head, so no extra read is needed). Publishes of one Hub to one topic are
// serialised locally, so they do not conflict with each other. The first
// publish of a Hub to an existing topic takes two round trips.
// Age trimming: per pass, one read of the head, one read per 64 slots looked
// at (starting where the last pass stopped) and one transaction per batch of
// expired messages.
//
// # Subscribing
//
// A Hub keeps one etcd watch per topic that has subscriptions, however many
// it has, and fans its events out to them; the watch stops with the last
// subscription. The package-level Publish and Subscribe share one Hub per
// client (For). The watch has WithRequireLeader, so a member cut off from
// the leader ends it at once instead of leaving it silent, and one that
// stays silent is probed, so a member whose process hangs is left for
// another (internal/watch). The first watch has no start revision: etcd
// syncs it at once, where a watch from an older revision waits for etcd's
// 100 ms unsynced loop. A broken watch resumes from the last revision seen
// plus one, and etcd
// replays what was missed from its history; when that history was compacted,
// the Hub reads the ring instead, delivers what it still holds, and reports
// the messages overwritten or trimmed meanwhile as a Gap with reason
// GapCompacted. Deliveries cost no request.
//
// Subscribe from:
//
//   - FromLatest: messages published after Subscribe returns. No request if
//     the Hub already watches the topic; else the watch's creation.
//   - FromRevision(r): messages at revisions r and later. If r is at or
//     before what the Hub's watch has seen, the retained messages are read
//     from the ring (one round trip per 512 slots) and the head as of r-1
//     (one round trip) tells which message came last before r; messages
//     after it that are no longer retained are reported as one Gap with
//     reason GapTrimmed and an exact count. Use the last Message.Rev + 1 as
//     the cursor to resume after a restart.
//   - FromOldest: every retained message, then new ones.
//
// Each subscription has a bounded buffer (WithBuffer, default 256 events).
// The watch never waits for a subscriber: when a subscription's buffer is
// full, further messages are dropped for it alone and reported as one Gap with
// reason GapOverflow once its reader has room again. A value under the topic
// that this package cannot decode is reported as a Gap with reason GapCorrupt
// at its revision; a corrupt head fails Publish with ErrCorrupt.
//
// Errors on the watch are retried with backoff (10 ms to 1 s), except a
// refusal for lack of permission, which ends Subscribe, or the topic's
// subscriptions, with an error that errors.Is rpctypes.ErrPermissionDenied.
// Subscriptions end when the context given to Subscribe ends, on Close, or
// when their Hub is closed. Hub.Close ends them all and joins every goroutine
// the Hub started: one per watched topic and the age trimmer.
//
// # What is guaranteed
//
//   - Within a subscription, events come in strictly increasing revision
//     order, with no duplicates; message sequence numbers increase.
//   - Every revision at or after a subscription's start at which a message of
//     the topic was published is delivered as a Message or lies inside a Gap.
//     This holds across member restarts, partitions, broken watches and
//     compaction, and is what the fault test checks.
//   - A Gap never covers a delivered message. It can be wider than the loss:
//     when etcd's history no longer says which message came last before a
//     FromRevision start, a run of lost messages that straddles the start is
//     reported whole (Lost is then 0, meaning unknown).
//
// # What is not
//
//   - Delivery of every message. Retention, compaction and slow readers lose
//     messages; the guarantee is that the loss is reported.
//   - Exactly-once publishing. When Publish returns an etcd error the message
//     may or may not have been written; publishing it again may deliver it
//     twice.
//   - Message.Time and the delivery lag metric use the publisher's clock.
//   - Age retention needs a live Hub that published to the topic with that
//     limit; with none running, expired messages stay until the next one
//     starts (count retention always holds).
//   - A Hub remembers a little state for every topic it published to, for as
//     long as it lives. A subscription from a revision or from the oldest
//     message holds the retained messages it still has to deliver in memory.
//
// # Telemetry
//
// Through the global meter provider unless WithMeterProvider says otherwise:
// the counter concord.pubsub.gaps (gap notices delivered, by topic and
// reason) and the histogram concord.pubsub.delivery_lag (seconds from publish
// to Next, by topic).
package pubsub
