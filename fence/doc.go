// Package fence checks fencing tokens where the protected resource is not
// etcd: in the process that owns the resource, at an HTTP or gRPC service in
// front of it, or in a SQL database.
//
// Every concord holding (a lock's Hold, a semaphore's Permit, an election's
// Term, a queue's Task) carries a fencing token: the create revision of its
// key, which strictly increases from one holder of a resource to the next.
// A holder's context ends before etcd can give the holding to anyone else,
// but nothing stops a process that is paused (a GC pause, a stopped VM, a
// slow disk) between checking its context and writing: it wakes up after
// its lease expired and writes as if it still held. etcd cannot refuse
// that write when it lands elsewhere. The resource can, if it remembers the
// highest token it has admitted and refuses any lower one. That check is
// what this package provides, in three places:
//
//   - Register, in process: Do runs an operation on a resource only if its
//     token is at least the highest admitted for that resource, and raises
//     the record to it. The check and the operation run under the
//     resource's own mutex, so a stale holder cannot slip in between.
//   - Handler (HTTP) and UnaryServerInterceptor/StreamServerInterceptor
//     (gRPC) put a Register in front of a service: clients send their token
//     in the Concord-Fencing-Token header (SetToken) or the
//     concord-fencing-token metadata (WithToken); a stale token is refused
//     with 409 Conflict or codes.FailedPrecondition before the handler runs.
//   - Column, in SQL: the resource's row has a fence column. Admit raises it
//     to the token inside the transaction that writes the row, or refuses
//     with ErrStale when it holds a higher token; the row lock the update
//     takes (the database lock on SQLite) keeps a stale writer from
//     committing in between. Column.Update wraps a whole transaction.
//
// What is guaranteed: once an operation with token t was admitted for a
// resource, no operation with a token below t is admitted for it by the
// same Register or the same fence column. Equal tokens are admitted again:
// a holder may write many times.
//
// What is not: the fence orders holders, not operations. A stale holder's
// operation admitted before the next holder's first one is applied (it was
// not stale yet, as far as the resource can tell); a holder that never
// reaches the resource leaves the record where it was. A Register lives in
// one process's memory: a restarted service starts with no record and
// admits any token until it sees a newer one, so a resource that outlives
// its process keeps the record with the data (Column does). Tokens of
// different etcd clusters, or of the same resource name under different
// concord prefixes, are not comparable: use one fence per holding name.
//
// The package talks to no etcd: a service that only receives tokens needs
// nothing else from concord.
package fence
