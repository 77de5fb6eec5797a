// Package queue is a durable work queue on etcd: producers enqueue tasks,
// workers in any number of processes claim them under a lease, report
// progress, and acknowledge, retry or fail them; tasks that keep failing end
// in dead letters that can be listed, requeued and purged.
//
//	q := queue.New(cli, "/jobs/thumbnails")     // no I/O; bad input is reported by each call
//	id, err := q.Enqueue(ctx, payload, queue.WithPriority(5), queue.WithDelay(time.Minute))
//
//	k, err := leasekeeper.New(ctx, cli)          // one per worker process
//	t, err := q.Dequeue(ctx, k)                  // blocks until a task is ready
//	err = work(t.Context(), t.Payload, t.Checkpoint())
//	err = t.Progress(ctx, 0.5, "half way", checkpoint)
//	err = t.Ack(ctx)                             // or t.Nack(ctx, 0), t.Fail(ctx, why)
//
// # What is guaranteed
//
// At-least-once delivery, nothing lost. A claimed task is held by a claim
// key bound to the worker's lease (leasekeeper). A worker that crashes, is
// cut off or has its lease revoked loses its claims when etcd expires the
// lease; the task is then ready again and goes to another worker as a
// redelivery (Task.Redelivered, the concord.queue.redeliveries metric). A
// task is never handed to two workers while the first claim stands.
//
// Fencing. A task is a holding in concord's sense. Task.Token is the claim's
// create revision, larger for every later claim of the task. Task.Context is
// canceled with a cause that errors.Is ErrLost at the lease's safe deadline,
// before etcd can expire the claim and hand the task to someone else, and
// also when the claim key is deleted by anyone else. Ack, Nack, Fail and
// Progress are transactions guarded on the claim: a worker that lost the
// task gets ErrLost and changes nothing. Task.Guard fences the worker's own
// writes into etcd, and Ack accepts extra operations committed in the same
// guarded transaction, so a result can be recorded exactly once with the
// acknowledgement. Ack, Nack and Fail are idempotent; a retry after an
// answer that never came recognises, by its token, an outcome its first
// attempt committed.
//
// Order. Higher priority first, then earlier ready time (the enqueue time,
// or for a delayed or retried task the time it became ready), then task ID.
// A worker alone receives tasks strictly in that order. Several workers take
// tasks from the head of the queue concurrently (see below), so completions
// interleave; a task is overtaken by at most 4 places per competing worker.
// Enqueue time is the producer's clock: tasks from one Queue keep their
// enqueue order; tasks from different processes are ordered by their clocks.
//
// Delay. A delayed task (NotBefore, Delay, or a Nack with a delay) becomes
// claimable at its time by any worker: every consumer process knows the
// delayed tasks from its watched view and wakes at the first one's time.
// No key is polled and no mover process exists.
//
// Timeouts. A task enqueued WithTimeout (or dequeued from a Queue with
// WithTaskTimeout) may be held that long by a worker, from the moment
// Dequeue hands it out. A live worker's keeper renews its lease for ever,
// so a stuck worker would otherwise hold the task for ever. When the time
// passes, the task's Context ends first, with a cause that errors.Is both
// ErrTimeout and ErrLost; then one transaction guarded by the claim deletes
// the claim and records the reason in the status, so another worker can
// take the task at once (Redelivered, since the stuck worker may still be
// running it), or, on the last attempt, moves it to the dead letters. The
// stuck worker's later calls return that error and its guarded writes are
// refused. The timer runs in the worker's process; a process that is paused
// or cut off is handled by its lease as before.
//
// Cancel. Cancel(ctx, id), from any process, removes a queued or delayed
// task (freeing its dedup ID), or ends a running one: one transaction,
// which holds only if the task did not change since Cancel read it, deletes
// the task's keys and its claim and writes its finished record (state
// canceled) and a cancel marker under the index, both on the retention
// lease. The worker's Queue sees the marker through its index watch, in the
// same revision as the claim's deletion, and ends the task's Context with a
// cause that errors.Is ErrCanceled and ErrLost. Whatever the worker does
// next, the task stays canceled: the claim is gone, so its calls and
// guarded writes are refused, and a finishing call that reads the canceled
// record back reports ErrCanceled.
//
// Pause. Pause(ctx), from any process, writes a pause marker under the
// index; every claim transaction compares it absent, so once Pause has
// returned no task is handed out, also by a worker whose view has not seen
// the marker yet (its claim is refused and its Dequeue waits once the view
// catches up). Tasks already handed out run on; enqueues go on; tasks a
// batch claimed and had not handed out are given back as usual. Resume
// deletes the marker. Neither costs anything per task: the compare rides in
// the claim transaction.
//
// Bounds. A Queue WithMaxSize(n) admits a task only while fewer than n
// are unfinished (queued, delayed or running; dead letters are out):
// Enqueue and Requeue beyond it write nothing and return ErrFull, or wait
// for room (WithWaitIfFull); EnqueueBatch admits a transaction at a time,
// each of at most n tasks, and returns with ErrFull the IDs of those that
// committed. Two keys count: m/in holds
// how many tasks were admitted, and each task's last transaction (Ack,
// dead-lettering, Cancel) puts m/out once, so its Version counts those that
// left. An admission compares m/in's revision with the one its count was
// read at, so the bound is exact under any number of producers: a producer
// whose reading is stale is refused by etcd and tries again with the
// reading the refusal carries; departures read late can only make it
// refuse a task that would have fitted, and it reads again before it
// says ErrFull. The bound is the admitting Queue's option: producers
// without it admit unbounded tasks, which never count (a Requeue through
// such a Queue counts a bounded task in again without checking). The
// price is that admissions are serialized on one key: concurrent
// producers of one bounded queue retry each other's conflicts, about one
// round trip per admission ahead of theirs; batches admit many tasks in one.
// EnqueueTx is refused on a bounded Queue: a caller's transaction cannot
// carry the count's compare and retry.
//
// Groups. Tasks enqueued WithGroup(name) are handed out one at a time per
// group, in the order their enqueues committed in etcd (tasks of one
// transaction, such as an EnqueueBatch, in item order), each only once the
// one before it is finished: acknowledged, dead-lettered or canceled.
// Different groups, and tasks in no group, run in parallel. A group's task
// whose worker dies or is cut off is handed out again, before the next one,
// once its claim is lost (at the lease's expiry, fenced as every claim), so a
// group stalls for up to a lease TTL behind a dead worker; a task taken by
// its timeout goes to the next worker at once. A delayed task, or one
// retried with a delay, holds its group up meanwhile: within a group, this
// order goes before priority. A requeued dead letter goes to the end of its
// group. Each grouped task has a member key under the index, written with
// the task and deleted with its last write; consumers know each group's
// order from their watched view and claim only a group's first task, so a
// group costs no request and no Raft write of its own. After a running
// task is canceled, the next one may start while the canceled one's code
// still runs, until its Context's end reaches it. A consumer built before
// groups (or bounds) existed reads a grouped (or bounded) task's record as
// corrupt and skips it, and its Requeue does not count a bounded task in:
// upgrade every process of a queue before its producers use either.
//
// Transactional enqueue. EnqueueTx returns a task's enqueue as comparisons
// and operations for the caller's own transaction (cron uses it to enqueue
// a scheduled time in the transaction that claims it), so the task lands
// if and only if the caller's writes do. Task.AckWith takes them as
// follow-ups: a pipeline step acks its task and enqueues the next step's in
// one transaction. A dedup ID keeps working: one held by an unfinished task
// fails the whole transaction (AckWith: ErrDedupHeld, the task still held).
// A cron job, whose Run.Commit takes operations only, passes TxEnqueue.Op:
// one nested transaction that enqueues nothing when the dedup ID is held.
//
// Results. AckResult (or AckWith) stores up to MaxResultBytes with the
// acknowledgement, on the finished record's retention lease; Result reads
// it from any process.
//
// Deduplication. Enqueue with DedupID writes nothing and returns the first
// task's ID while a task with that dedup ID is unfinished (queued, delayed
// or running); the check and the write are one transaction, so it holds
// under concurrent producers. Ack and dead-lettering free the dedup ID;
// Requeue takes it again if no other task took it meanwhile.
//
// Attempts and dead letters. An attempt is spent when a claim hands the
// task to a worker, and when a claim is lost (its lease ended), whether or
// not it had been handed out: etcd cannot tell a worker that died running
// the task from a process that died with it in its batch buffer. A batched
// claim given back unused (not dequeued within half a second, or at Close,
// or taken back after a claim transaction whose outcome was unknown) does
// not count: the give-back bumps an "unused" counter in the same
// transaction, and the attempt is the claims made less the claims given
// back. A Nack on the last attempt (WithMaxAttempts, default 5, stored with
// the task), a claim beyond it, or Fail moves the task to the dead letters
// with the reason; Requeue gives it back with its attempts reset and its
// last checkpoint kept.
//
// # What is not guaranteed
//
//   - Exactly-once execution. A worker that loses its claim (a pause, a
//     partition) may still be running when another worker starts the task.
//     Its writes into etcd are fenced by Guard and its Ack fails, but side
//     effects elsewhere must be idempotent or check Token.
//   - A task's Context cannot warn a process that is paused (GC, SIGSTOP)
//     across its safe deadline: only the guard stops its writes.
//   - Strict global order among several concurrent workers (see Order).
//   - After an error whose outcome is unknown (a timeout), Enqueue may or may
//     not have written the task; use DedupID to make the retry safe.
//
// # How consumers avoid herding and conflicts
//
// Each consumer Queue keeps one watch on the queue's index keys (i/) and
// holds their live set in memory; Dequeue picks a candidate from it without
// a read and claims it with one transaction that re-checks everything in
// etcd, so a stale view costs a failed claim, never a wrong one. An idle
// worker is woken by the watch event that carries the new task. Workers seen
// claiming recently are ranked; a task belongs to the worker its ID hashes
// to, which claims it at once, while the others wait a few milliseconds
// per rank before taking it if its owner is busy. So a new task wakes one
// claim, and competing workers touch different keys. When a backlog exists,
// one claim transaction takes up to four of the worker's own tasks (one
// nested transaction each); the extra ones wait in the Queue for its next
// Dequeue calls, bound to the same lease (if it is lost they are dropped and
// go to other workers); those not handed out within half a second, or by
// Close, are given back. A give-back that fails (etcd unreachable), and a
// claim transaction whose answer never came, are retried in the background
// until etcd confirms or the lease ends; a claim that is applied only after
// its give-back looked for it (a Dequeue whose context ended mid-claim) is
// given back when the index watch shows it land. So a worker that lives on
// does not sit on tasks it never got. A task that arrives meanwhile with a higher
// priority waits for at most those three. Ready-index keys are never ranged
// over on the claim path, so deleted keys (tombstones) of consumed tasks do
// not slow claims down as the queue ages (measured by TestNoDecay, run with
// -queue.decay: within 20% after 50,000 tasks without compaction).
//
// # Supported servers
//
// etcd 3.5, 3.6 and 3.7: workers claim tasks on a lease keeper's lease,
// and the keeper refuses etcd 3.4 (leasekeeper.ErrUnsupported).
//
// # Keys
//
// Under P = name + "/.queue/" (names.Prefix), and nowhere else:
//
//	P i/r/<prio>/<time>/<id>  ready index key, empty value
//	P i/d/<time>/<prio>/<id>  delayed index key, empty value
//	P i/c/<id>                claim, bound to the worker's lease (worker, nonce)
//	P i/k/<id>                cancel marker: the canceled claim's token (0 if
//	                          none), on the retention lease
//	P i/p                     pause marker (JSON: since when), while paused
//	P m/in                    bounded queue: tasks admitted, decimal
//	P m/out                   bounded queue: its Version counts tasks that left
//	P i/g/<group>/<id>        group member, empty value, while the task is
//	                          unfinished; <group> is 16 hex digits of the
//	                          SHA-256 of the group's name
//	P t/<id>                  task record: JSON header, newline, raw payload
//	P s/<id>                  status record (JSON): position, attempts, last error,
//	                          written once the task leaves its enqueued position
//	P a/<id>                  claim counter: its etcd Version counts the claims
//	P n/<id>                  unused counter: its Version counts claims given
//	                          back unused; the attempt is a/ less n/
//	P p/<id>                  progress: JSON header, newline, raw checkpoint
//	P u/<dedup id>            dedup key: ID of the unfinished task
//	P x/<id>                  dead letter (JSON): reason, attempts
//	P f/<id>                  finished record (JSON), bound to a retention lease
//
// <prio> is 8 hex digits ordering higher priorities first, <time> 16 hex
// digits of Unix nanoseconds, <id> 24 hex digits (16 of enqueue time, 8
// random). Values this package did not write are reported as ErrCorrupt,
// never a panic; Dequeue skips such a task after reporting it once.
//
// # Cleaning up
//
// Ack deletes the task's keys and writes only the finished record, attached
// to a lease granted every retention/4 with a TTL of 1.25 × the retention
// (WithRetention, default 5 minutes): etcd deletes finished records itself
// when that lease expires, with no cleaner. With retention 0, a receipt is
// kept for about ten seconds (so a retried Ack can recognise its own commit).
// Dead letters stay until requeued or purged (Purge, PurgeDead); Delete
// deletes the whole queue. Deleted keys remain as tombstones in etcd's index
// until compaction; claims never range over them, and Stats/List, which do
// range, are for inspection.
//
// # Cost, per task
//
//   - Enqueue: one transaction, one Raft write (task record and index key;
//     plus the dedup key). EnqueueBatch: one write per max-txn-ops/2 tasks.
//     EnqueueTx: no request of its own; its two or three operations ride in
//     the caller's transaction, so the task lands with the caller's writes
//     or not at all.
//   - Dequeue: no request while waiting (the watch delivers the task); one
//     transaction to claim (claim key, attempt counter, and the reads of the
//     record, previous status and checkpoint in the same transaction), shared
//     by up to four tasks when a backlog exists. A batched task given back
//     unused costs one more transaction, and no attempt.
//   - Ack / Nack / Fail: one guarded transaction; Ack also grants a retention
//     lease once per retention/4 per process. A result (AckResult) is one
//     more put in it; each follow-up (AckWith) two or three.
//   - Progress: one guarded transaction.
//   - A timeout costs nothing until it passes (a timer in the worker's
//     process); then one guarded transaction.
//   - Cancel: one read transaction and one write transaction.
//   - Pause, Resume: one write each; nothing per task.
//   - A bounded queue: no request of its own once a producer has read the
//     counters (one read transaction); one more put and one read in each
//     admission, one more put in each task's last transaction. A refused
//     enqueue reads the counters afresh first (one read).
//   - A group: one more put in the enqueue's transaction and one more
//     delete in the acknowledgement's (or the dead-lettering's or the
//     cancel's); no request of its own. Its consumers' views hold about 150
//     bytes per grouped task; picking a task skips the waiting tasks of
//     groups ahead of it in the queue.
//   - So an enqueue → dequeue → ack cycle is 3 Raft writes and 3 round
//     trips, or 2.25 of each with full claim batches. In keys: 2 puts to
//     enqueue, 2 puts to claim, 4 deletes and the finished record's put to
//     acknowledge; the finished record is deleted later by its lease.
//   - Per consumer process: one watch on the index, whose events (about four
//     per task, six in a group) every consumer process receives; memory for the index of
//     unfinished tasks (about 100 bytes per task).
//   - Status: one read transaction. Stats: one read transaction of count-only
//     ranges, proportional to the keys and uncompacted tombstones under the
//     queue. WatchStatus: one read, then four single-key watches and one
//     Status read per change they report.
//
// # Telemetry
//
// Dequeue opens a "queue.dequeue" span (wait time, token, attempt, outcome:
// "acquired", "busy" when TryDequeue found nothing, "canceled" or "error",
// the vocabulary of every recipe's acquisitions) through the global tracer provider unless WithTracerProvider is given.
// Metrics through the global meter provider unless WithMeterProvider is
// given: concord.queue.depth (observable gauge by state, from the consumer's
// view), concord.queue.redeliveries, concord.queue.dead_letters,
// concord.queue.claims (by conflict), concord.queue.wait.duration and
// concord.queue.hold.duration (seconds, Dequeue to Ack/Nack/Fail, by outcome:
// "ack", "nack", "fail", "timeout", or "release" for a claim the consumer
// gave back unused).
//
// Trace propagation: when the context given to Enqueue, EnqueueBatch or
// EnqueueTx carries a span, its W3C trace context (traceparent,
// tracestate) is stored in the task record (about 100 bytes more), the
// queue.dequeue span that hands the task out links to that span, and
// Task.ProducerSpan names it for the worker's own processing span: a link,
// as OpenTelemetry's messaging conventions have it, since one producer's
// trace may fan out to many consumers. A consumer built before this field
// existed reads such a record as corrupt (and skips it); upgrade consumers
// before producers.
package queue
