// Package cron is a leader-elected scheduler: every replica registers the
// same jobs and calls Run; the replica that leads the election named like
// the scheduler runs them, and each scheduled time of each job runs at most
// once across all replicas and across failover. With WithRerun, a time whose
// run a failover interrupted runs again, and the writes it makes through
// Run.Commit land exactly once.
//
//	s := cron.New(k, "/ops/cron")
//	err := s.Add("compact", "0 */6 * * *", func(ctx context.Context, r cron.Run) error {
//		return compact(ctx, r.Token) // ctx ends if leadership is lost
//	})
//	err = s.Add("report", "@hourly", func(ctx context.Context, r cron.Run) error {
//		report, err := build(ctx, r.Time)
//		if err != nil {
//			return err
//		}
//		return r.Commit(ctx, clientv3.OpPut("/reports/"+r.Time.Format(time.RFC3339), report))
//	}, cron.WithRerun(3))
//	err = s.Run(ctx)
//
// Jobs can also be defined at runtime, from any process (a replica, the
// concord CLI, an admin tool): the definition (spec, handler name, options,
// paused) is stored in etcd, and each replica registers the code under the
// handler's name.
//
//	err := s.Handle("purge", purge) // on every replica, before Run
//	err = cron.Define(ctx, cli, "/ops/cron", "purge-tmp", cron.Definition{Spec: "@every 10m", Handler: "purge"})
//	err = cron.Update(ctx, cli, "/ops/cron", "purge-tmp", cron.Definition{Spec: "@every 1m", Handler: "purge"})
//	err = cron.Remove(ctx, cli, "/ops/cron", "purge-tmp")
//
// Heavy jobs can run on workers instead of the leader: AddDispatch (or
// HandleDispatch for defined jobs) makes the leader enqueue each claimed
// time into a queue.Queue, in the claim's own transaction, and any process
// that dequeues from it runs the time (DecodeDispatched) and writes its
// effects with the task's Ack.
//
// Specs are parsed by github.com/robfig/cron/v3: 5 fields, an optional
// leading seconds field, and descriptors (@hourly, @every 10s; @every must be
// a whole number of seconds). Times are computed in the process's local time
// zone unless the spec sets CRON_TZ=.
//
// # Guarantees
//
//   - Each time is claimed once: before running (job, time) the leader claims it with one
//     transaction guarded by its term (election.Term.Guard) and by the mod
//     revision of the job's claim key, which holds the job's watermark (the
//     latest scheduled time claimed). No time at or before the watermark is
//     claimed again, and a replica that lost its term cannot claim: its
//     transaction fails in etcd, however late it arrives. A new leader reads
//     the watermarks only after it was elected. Without WithRerun a
//     claimed time runs at most once.
//   - Exactly-once effects, with WithRerun and Run.Commit: the claim record
//     also lists the open runs (claimed, started, fn not yet returned); a
//     run leaves the list when it finishes, in the fenced write of its
//     final status, unless it was interrupted (its context ended first,
//     also when its scheduler was stopped). A new leader reruns each open
//     run within the catch-up window with Attempt + 1 unless it committed
//     (see WithRerun for what is not rerun): Run.Commit applies the
//     run's writes in one transaction, guarded by the term, that creates
//     the time's commit record only if absent, so of all attempts of a time
//     at most one Commit applies. fn may start more than once for a time;
//     what it commits lands once. A time is never lost to a failover
//     either: times passed during it are caught up (CatchUpAll) and a time
//     whose run the old leader could not finish is rerun. This needs
//     AllowOverlap (with SkipIfRunning, times that come while a rerun goes
//     are skipped by design) and a job not paused at the failover. At most
//     256 open runs are listed; beyond that the oldest are forgotten.
//   - A run's context is canceled when the term ends (with a cause that
//     errors.Is election.ErrLost), before the server can elect another
//     leader, barring process pauses. Run.Guard fences writes into etcd.
//   - Catch-up: after a failover (or if the leader falls behind), the times
//     missed within the job's window are considered: CatchUpLatest (default)
//     runs the latest of them once, CatchUpAll runs each, oldest first. A job
//     that never ran starts from its next time. Times that pass while a job
//     is paused are not caught up.
//   - Overlap: SkipIfRunning (default) claims a time that comes while the
//     previous run still goes but does not run it (status Skipped);
//     AllowOverlap runs it alongside.
//   - Graceful stop: when Run's ctx ends, the leader claims no more times.
//     WithDrain lets its runs in progress finish (up to a bound) before it
//     resigns, so they are not rerun; WithHandover hands leadership to a
//     chosen replica (election.Newest) in one transaction. Restarting every
//     replica in turn then misses and reruns no time, and moves leadership
//     at most twice among three replicas (TestRollingDeploy).
//   - Pause, Resume and Trigger are records in etcd, so any replica or a CLI
//     can use them; the leader follows them on a watch. A trigger is consumed
//     by one fenced transaction and runs once.
//   - Dispatched runs (AddDispatch): the task of a time is enqueued by the
//     claim's transaction (queue.Queue.EnqueueTx), so a time is enqueued
//     if and only if it is claimed, and at most once; once enqueued it is
//     the queue's: a worker that dies is replaced when its claim's lease
//     ends, and the effects written with the task's Ack land once per time
//     (the queue acks a task once). No rerun is needed after a failover:
//     the next leader finds the time claimed and its task in the queue.
//   - Defined jobs: the leader reads the definitions when it takes over and
//     follows Define, Update and Remove on the same watch as the controls
//     (reading them afresh if the watch is lost). Every write the leader
//     makes for a defined job (claim, status, a run's end, Run.Commit) is
//     also fenced by the definition's create revision: once Remove has
//     returned, no time of the job is claimed, no record of it comes back,
//     and its runs' Commits are refused with ErrRemoved; their contexts end
//     with that cause when the leader sees the removal. (A dispatched run
//     already enqueued is the queue's: it still runs on a worker.) A
//     definition whose
//     handler the leader's binary lacks (or that is invalid) is not run and
//     its status says why (JobStatus.Problem); its triggers and open runs
//     wait for a leader that can run it.
//
// # What is not guaranteed
//
//   - Exactly once for effects outside Run.Commit: a rerun starts fn again
//     for a time whose earlier attempt may have done part of its work. Make
//     such effects idempotent (Run.Time and Run.Attempt say which time and
//     which try), or write them through Commit. Without WithRerun an
//     interrupted time is not run again.
//   - A failed run (fn returned an error) is not rerun by the next leader;
//     WithRetries retries it while its leader lasts, and only while its time
//     is the latest claimed.
//   - A paused process can keep running fn after its term ended; only fenced
//     effects are safe against that.
//   - Status is best effort: the final status write of a run whose term was
//     lost is dropped (it reads Running until the next run or rerun).
//   - Replicas must register the same jobs and handlers; a job only some
//     replicas know runs only while one of those leads.
//   - An update takes effect when the leader sees it on its watch: a time
//     due under the old definition just before may still run under it (its
//     claim is fenced by the definition's create revision, which an Update
//     keeps). The new schedule starts from the time the leader saw it.
//   - Times are computed from the leader's clock. A new leader whose clock is
//     behind runs later, one whose clock is ahead runs sooner; neither runs
//     a claimed time again: the watermark read from etcd, not the clock,
//     decides what was claimed.
//
// # Supported servers
//
// etcd 3.5, 3.6 and 3.7: a scheduler stands on a lease keeper, which
// refuses etcd 3.4 (leasekeeper.ErrUnsupported).
//
// # Keys
//
// A scheduler named N writes under N + "/.cron/" (records without a lease:
// they outlive replicas), and campaigns in the election named N (keys under
// N + "/.election/", see package election):
//
//	N/.cron/claim/<job>          {"time","token","attempt","at","open"}: the watermark and the open runs
//	N/.cron/done/<job>/s<time>   {"token","attempt","at"}: a scheduled time's Commit (t<time>: a trigger's),
//	                             deleted by a later claim once the time is no longer open (a
//	                             record of the claiming term itself no sooner than a minute later)
//	N/.cron/status/<job>         JobStatus as JSON (last run, outcome, next)
//	N/.cron/ctl/<job>/paused     {"at"}: present while the job is paused
//	N/.cron/ctl/<job>/trigger    {"at"}: a pending Trigger
//	N/.cron/def/<job>            a defined job: {"spec","handler", options…, "at"} (Define, Update)
//
// Remove deletes a defined job's keys; Delete deletes them all. A record that does not decode stops Run with
// ErrCorrupt and makes Status fail, rather than risk running a time twice.
//
// # Cost in etcd round trips
//
//   - Per scheduled run: one transaction (claim and status "running"), then
//     one fenced transaction when fn returns (status, and the run's removal
//     from the open runs). Run.Commit is one more transaction, carrying the
//     caller's writes. The fire lag is the timer's lateness plus the claim.
//   - Per dispatched run: the one claim transaction, which also enqueues
//     the task (two more puts in it); the worker's dequeue and ack are the
//     queue's (see package queue). The dispatch lag, from the scheduled
//     time to a waiting worker holding the task, is the fire lag plus one
//     watch event and the queue's claim.
//   - On becoming leader: one read of N/.cron/, one fenced status write per
//     job (its next time), the claims of reruns and triggers that are due,
//     and one watch on N/.cron/ctl/ and N/.cron/def/ (one range), on top of
//     the election's Campaign.
//   - Pause, Resume, Trigger: one write each. Status, Delete: one request.
//   - Define, Update, Remove: one transaction each (the pause record and,
//     for Remove, the job's records go in it). The leader follows them on
//     its existing watch, without further requests; a defined job's runs
//     cost what a job added in code's do.
//
// # Telemetry
//
// Each run records a "cron.run" span (job, scheduled time, token, attempt,
// outcome); metrics concord.cron.runs (by job and outcome) and
// concord.cron.fire_lag (seconds from scheduled time to start). Both through the
// global providers unless WithTracerProvider / WithMeterProvider are given.
package cron
