// Package cron is a leader-elected scheduler: every replica registers the
// same jobs and calls Run; the replica that leads the election named like
// the scheduler runs them, and each scheduled time of each job runs at most
// once across all replicas and across failover.
//
//	s := cron.New(k, "/ops/cron")
//	err := s.Add("compact", "0 */6 * * *", func(ctx context.Context, r cron.Run) error {
//		return compact(ctx, r.Token) // ctx ends if leadership is lost
//	})
//	err = s.Run(ctx)
//
// Specs are parsed by github.com/robfig/cron/v3: 5 fields, an optional
// leading seconds field, and descriptors (@hourly, @every 10s; @every must be
// a whole number of seconds). Times are computed in the process's local time
// zone unless the spec sets CRON_TZ=.
//
// # Guarantees
//
//   - At most once: before running (job, time) the leader claims it with one
//     transaction guarded by its term (election.Term.Guard) and by the mod
//     revision of the job's claim key, which holds the job's watermark (the
//     latest scheduled time claimed). No time at or before the watermark is
//     claimed again, and a replica that lost its term cannot claim: its
//     transaction fails in etcd, however late it arrives. A new leader reads
//     the watermarks only after it was elected.
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
//   - Pause, Resume and Trigger are records in etcd, so any replica or a CLI
//     can use them; the leader follows them on a watch. A trigger is consumed
//     by one fenced transaction and runs once.
//
// # What is not guaranteed
//
//   - Exactly once: a claimed time whose leader dies before (or while) fn
//     runs is not run again. Make effects idempotent, or fence them with
//     Run.Guard and pair them with CatchUpAll, as the package's failover test
//     does.
//   - A paused process can keep running fn after its term ended; only fenced
//     effects are safe against that.
//   - Status is best effort: the final status write of a run whose term was
//     lost is dropped (it reads Running until the next run).
//   - Replicas must register the same jobs; a job only some replicas know
//     runs only while one of those leads.
//   - Times are computed from the leader's clock. A new leader whose clock is
//     behind runs later, one whose clock is ahead runs sooner; neither runs
//     a claimed time again: the watermark read from etcd, not the clock,
//     decides what was claimed.
//
// # Keys
//
// A scheduler named N writes under N + "/.cron/" (records without a lease:
// they outlive replicas), and campaigns in the election named N (keys under
// N + "/.election/", see package election):
//
//	N/.cron/claim/<job>          {"time","token","attempt","at"}: the watermark
//	N/.cron/status/<job>         JobStatus as JSON (last run, outcome, next)
//	N/.cron/ctl/<job>/paused     {"at"}: present while the job is paused
//	N/.cron/ctl/<job>/trigger    {"at"}: a pending Trigger
//
// Purge deletes them all. A record that does not decode stops Run with
// ErrCorrupt and makes Status fail, rather than risk running a time twice.
//
// # Cost in etcd round trips
//
//   - Per scheduled run: one transaction (claim and status "running"), then
//     one fenced status write when fn returns. The fire lag is the timer's
//     lateness plus that one transaction.
//   - On becoming leader: one read of N/.cron/ and one watch on
//     N/.cron/ctl/, on top of the election's Campaign.
//   - Pause, Resume, Trigger: one write each. Status, Purge: one request.
//
// # Telemetry
//
// Each run records a "cron.run" span (job, scheduled time, token, attempt,
// outcome); metrics concord.cron.runs (by job and outcome) and
// concord.cron.fire_lag (seconds from scheduled time to start). Both through the
// global providers unless WithTracerProvider / WithMeterProvider are given.
package cron
