// Package discovery registers service instances in etcd, resolves them (once,
// as a live watcher, or as a gRPC resolver) and keeps group membership, all
// bound to a leasekeeper.Keeper's lease.
//
// # Registration and membership
//
// Register writes an instance record bound to the keeper's current lease.
// The record lives as long as the lease: when the process dies or is cut off
// for a TTL, etcd deletes it. When the keeper loses its lease and grants the
// next generation, the registration writes the record again on the new
// lease, with its latest metadata; a record still held by an earlier lease of
// the same registration is taken over, a record held by any other lease is
// never overwritten (ErrExists). Update and Deregister only touch the
// registration's own record (transactions guarded on the record's lease).
// Join, Update and Leave do the same for a member of a group; a member's
// payload is stored as given.
//
// # Resolution
//
// Resolve reads the instances once. Watch follows them with a cache.Cache on
// the service's keys: one consistent load, then one watch, so its list always
// equals etcd's records at some revision (see package cache). WatchGroup and
// Members do the same for groups. Records that are not valid instance
// records (foreign values, damaged JSON, an ID that does not match its key)
// are skipped and reported (ErrCorrupt, WithErrorHandler), never
// trusted and never a panic.
//
// NewResolverBuilder is a gRPC resolver for targets concord:///<service>:
// a Watch per target, whose every change becomes the connection's address
// list, balanced round robin unless WithServiceConfig says otherwise.
//
// # What is guaranteed
//
//   - Bad input (invalid service or group names, empty or invalid IDs, an
//     empty address, a record or payload over etcd's request limit) is
//     rejected with a "discovery:" error before anything is written.
//   - A registration never overwrites or deletes a record held by another
//     lease.
//   - Watchers show only states etcd had, in revision order.
//
// # What is not
//
//   - A record says that its keeper's lease was alive, not that the instance
//     serves: a hung process with a live keeper stays registered. Health is
//     the caller's concern (gRPC's health checking, for example).
//   - A dead instance stays listed until etcd expires its lease: up to the
//     TTL plus etcd's 500 ms expiry sweep after its last renewal. Calls to it
//     in that time fail over to other instances in gRPC; calls in flight on
//     a crashing server fail.
//   - The owner of a record is its lease, not a Registration value: two
//     Registrations of the same ID on the same keeper share one record (the
//     second overwrites the first), so deregistering either removes it. A
//     retried Register after a timeout is thereby safe; registering one ID
//     twice in a process is a mistake this package does not detect.
//   - A record deleted by someone else (an operator, a foreign tool) is not
//     written again until the keeper's next lease generation.
//   - Instances and members handed out share their Metadata maps and
//     Payload slices with the watcher: do not modify them.
//   - Between lease generations (from the loss to the re-registration) the
//     record is absent; Update then keeps the new metadata and returns
//     ErrLost.
//
// # Supported servers
//
// etcd 3.5, 3.6 and 3.7. Registration stands on a lease keeper and
// resolution on a cache, which both refuse etcd 3.4 with an error that
// wraps compat's ErrUnsupported (leasekeeper.ErrUnsupported,
// cache.ErrUnsupported).
//
// # Keys
//
// For a service S (a valid concord name, for example "/payments"):
//
//	S/.discovery/<instance ID>  →  {"id":"<ID>","addr":"<addr>","metadata":{...}}
//
// For a group G:
//
//	G/.group/<member ID>  →  the member's payload, as given
//
// Each key is attached to the registering keeper's lease. IDs are at most 256
// bytes of UTF-8 without '/', control characters or a leading '.'.
//
// # Cost
//
// Register and Join: one transaction (create if absent); two when a record
// of an earlier lease generation of the same registration is still there.
// Update, Deregister and Leave: one guarded transaction each. Re-registration:
// one transaction per new lease generation. Resolve and Members: one range
// read. Watch, WatchGroup and each gRPC resolver: one paged load and one
// watch (on the client's shared watch stream), then nothing per change but
// the watch's events.
package discovery
