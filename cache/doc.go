// Package cache keeps an in-memory copy of an etcd prefix that always equals
// etcd's content at some revision, and a typed, validated config watcher
// built on it (Value for one key, Map for a prefix).
//
// # How it stays consistent
//
// New reads the prefix at one revision R, in pages of about 4 MiB (see
// WithPageSize): the first page is a linearizable
// read that fixes R, every further page is read WithRev(R), so the pages
// together are the prefix exactly as it was at R even while others write. It
// then watches from R+1 with WithRequireLeader (a cache connected to a member
// that lost its leader fails over instead of silently freezing) and
// WithProgressNotify (bookmarks that advance Revision without a change).
//
// etcd delivers a watch's events in revision order and never splits one
// revision's events across responses. The cache applies them one revision at
// a time, under one lock, so Get, List and Revision only ever show a state
// etcd had. When the watch breaks (member restart, lost leader, network), it
// resumes from the last applied revision + 1: nothing is missed or applied
// twice. When that start was compacted away (ErrCompacted, which etcd may
// report without Canceled set), the cache reads the whole prefix again at a
// new revision R' and turns the difference from what it held into ordinary
// Create, Update and Delete events at R'. Subscribers thus move from one real
// revision to another; they skip the revisions in between.
//
// # Subscribers
//
// Subscribe returns a stream of Batches: first a snapshot, then every
// revision's changes with the previous values. The cache never waits for a
// subscriber: each has a buffer of WithBuffer batches; a subscriber that
// falls a whole buffer behind has its queued batches dropped and replaced by
// one snapshot of the current state, which it applies in place of its view.
// Its memory is bounded and it cannot stall the cache or other subscribers.
//
// # Typed values
//
// Value follows one key and Map every key under a prefix, decoding each
// stored value (JSON by default, YAML through sigs.k8s.io/yaml, or any
// Decoder) and checking it with a validator. A value that fails either step
// never replaces the last good one: the state keeps the last good value and
// carries the error (wrapping ErrInvalid), and WithErrorHandler is called
// with it. A deleted key falls back to the default (Value) or disappears
// (Map), also when the deletion is found only by a reload.
//
// A reader whose watch could not resume (a compaction while it was
// disconnected) or whose subscription fell behind sees only the key's
// current stored value, not the writes in between; etcd keeps no older
// values after a compaction. If the current value is invalid and the key's
// etcd Version shows writes the reader never judged, one of them may have
// been valid and newer than the value it holds: the state says so
// (State.Stale, MapState.Stale) rather than present the held value as the
// newest good one, until the next good value or a deletion. Only a writer
// that keeps each good version under a key of its own can guarantee every
// reader ends on the newest good value. Load returns the state without I/O; Changes(ctx) delivers the
// newest state on a one-place channel, so a slow reader skips states rather
// than stalling anything. Each Value or Map runs one goroutine over a cache
// subscription, joined by Close.
//
// # What is guaranteed
//
//   - Get, List, Len and Revision are served from memory. List returns the
//     revision its keys belong to; etcd held exactly those keys under the
//     prefix at that revision.
//   - A subscriber that applies its batches in order holds, after each
//     batch, etcd's content at the batch's Revision.
//   - WaitRevision(ctx, r) returns once the cache reflects revision r, so a
//     writer that waits for its write's revision then reads it (or
//     something newer) from the cache.
//
// # What is not
//
//   - The cache is behind etcd by the watch's delivery time, and by longer
//     while a watch reconnects or a reload runs. Get is not a linearizable
//     read; use WaitRevision with a revision you know, or read etcd.
//   - A deletion followed by a re-creation of a key while the cache's watch
//     was broken and compacted away appears as one Update (its
//     CreateRevision changes); intermediate revisions are not shown.
//   - A subscriber reset to a snapshot does not see the individual changes
//     it missed.
//   - WaitRevision for a revision that changed nothing under the prefix
//     depends on etcd answering a progress request only once the watch has
//     caught up: etcd 3.5 and later do (3.4 answers at once with its
//     current revision, which would move the cache past events it has not
//     seen; New refuses etcd 3.4). The cache's watch has a gRPC stream of
//     its own, so no other watch of the client can hold the answer back.
//
// # Keys
//
// The cache writes nothing.
//
// # Cost
//
// Loading a prefix of n keys of total size S: about 1 + S / 4 MiB range
// reads (each paged read also counts the rest of the range on the server,
// which is why pages are sized in bytes rather than a small key count).
// Following it: one watch, on a gRPC watch stream of its own; one Status
// request per endpoint when the cache is made, to check the etcd version. A
// reload after compaction costs a load. Get is a map lookup under a read
// lock; List is a scan of the whole cache plus a sort of the result.
// WaitRevision costs nothing when the revision arrives with a change under
// the prefix; otherwise it sends a progress request every 50 ms while it
// waits. Subscribe copies the whole state into its first batch, under the
// cache's lock; so does the reset of a subscriber that fell a buffer behind,
// which happens at most once per WithBuffer batches for a subscriber that
// never reads. Memory: one entry per key, holding the key, value and
// revisions, plus what subscribers have not read yet.
//
// # Telemetry
//
// The histogram concord.cache.staleness (seconds) records, for each change
// made visible, the time from the moment the cache learned of it (the watch
// response arrived, or the watch was found unable to resume) to the moment
// Get could see it; a reload's entry is the whole time the cache was known
// to be behind. The counter concord.cache.reloads counts reloads. Metrics go
// to the global meter provider unless
// WithMeterProvider is given.
package cache
