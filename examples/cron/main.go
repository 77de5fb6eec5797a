// Command cron runs three replicas of a service with one scheduled job:
// every second, the replica that leads the scheduler's election runs it,
// and the others stand by. Each run appends to a ledger in etcd with
// Run.Commit, fenced by the leader's term, so a replica that lost its
// leadership cannot write, and once per scheduled time. Midway, the
// leader's client is cut off from etcd; its lease expires, another replica
// takes over, catches up the times missed during the failover, and every
// scheduled time is still run exactly once. Then a rolling deploy: a new
// replica starts, and the leader is stopped as a deploy stops it; it lets
// its run in progress finish (WithDrain) and hands leadership to the newest
// replica (WithHandover) in one transaction, so no lease is waited for and
// no time is missed or run twice. Last, an operator changes the schedule
// at runtime: from a process that runs no scheduler it defines a second
// job, run by a handler every replica registered, then makes it run every
// second instead of every other, then removes it; the leader follows each
// change from its watch. The ledger read back from etcd has one entry per
// scheduled time, each written once.
//
//	go run ./examples/cron              # on an embedded 3-member cluster
//	go run ./examples/cron -trace       # and print the spans
//	go run ./examples/cron -endpoints https://etcd:2379 -cacert ca.pem -cert me.pem -key me-key.pem -user me
//
// On a cluster given with -endpoints the cut is made in the replica's own
// connections (see exampleenv), so the story is the same on any etcd.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/examples/internal/exampleenv"
	"github.com/concordkit/concord/leasekeeper"
)

func main() {
	var o exampleenv.Options
	fs := flag.NewFlagSet("cron", flag.ExitOnError)
	o.Register(fs)
	_ = fs.Parse(os.Args[1:])
	if err := run(context.Background(), os.Stdout, o); err != nil {
		fmt.Fprintln(os.Stderr, "cron:", err)
		os.Exit(1)
	}
}

const (
	schedulerName = "examples/cron/reports"
	jobName       = "hourly-report" // runs every second, for the demo's sake
	spec          = "* * * * * *"
	ledgerPrefix  = "examples/cron/ledger/"
	replicas      = 3
	runsBefore    = 3 // runs by the first leader before it is cut off
	runsAfter     = 3 // on-time runs by the next leader before the demo ends

	// A job defined at runtime, in the last act.
	dynJob     = "purge-temp"
	dynHandler = "purge"
)

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// runReport is what a replica's job tells about one run.
type runReport struct {
	replica    string
	run        cron.Run
	key, value string // the ledger entry it committed
	err        error  // nil: Commit applied it
}

// ledgerKey names a scheduled time's ledger entry; the keys sort in time
// order.
func ledgerKey(t time.Time) string { return ledgerPrefix + t.UTC().Format(time.RFC3339) }

func clock(t time.Time) string { return t.UTC().Format("15:04:05") }

type replica struct {
	name string
	cli  *clientv3.Client
	k    *leasekeeper.Keeper
	s    *cron.Scheduler
	ctx  context.Context // its Run's: stop ends it, as a deploy's SIGTERM would
	stop context.CancelFunc
}

// ended is a replica's Run returning.
type ended struct {
	replica string
	err     error
}

// leaseEvent is a change of a replica's lease that the story tells.
type leaseEvent struct {
	replica string
	ev      leasekeeper.Event
}

func run(ctx context.Context, out io.Writer, o exampleenv.Options) error {
	ctx, cancel := context.WithTimeout(ctx, 55*time.Second)
	defer cancel()
	out = &lockedWriter{w: out}
	start := time.Now()
	say := func(format string, args ...any) {
		fmt.Fprintf(out, "%6.2fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	e, err := exampleenv.Setup(ctx, out, o)
	if err != nil {
		return err
	}
	defer e.Close()
	if s := e.Started(); s != "" {
		say("%s", s)
	}
	// Each replica's lease outlives an etcd leader failover (see
	// exampleenv.LeaseTTL): only the cut below moves the leadership.
	leaseTTL := e.LeaseTTL()
	// Start from nothing: no ledger, no scheduler records from a past run.
	if err := wipe(ctx, e.Admin, leaseTTL); err != nil {
		return err
	}

	reports := make(chan runReport, 1000)
	purges := make(chan runReport, 1000) // runs of the job defined at runtime
	ends := make(chan ended, replicas+1)
	running := 0 // replicas whose Run has not returned
	var rs []*replica
	stop := func() []ended {
		for _, r := range rs {
			r.stop()
		}
		var got []ended
		for ; running > 0; running-- {
			got = append(got, <-ends)
		}
		return got
	}
	defer func() {
		for _, r := range rs {
			e.Restore(r.cli) // a cut replica stops at once, not after its detached clean-ups time out
		}
		stop()
		for _, r := range rs {
			kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), leaseTTL)
			r.k.Close(kctx)
			kcancel()
		}
	}()
	addReplica := func(i int) (*replica, error) {
		r := &replica{name: fmt.Sprintf("replica-%d", i)}
		var err error
		if r.cli, err = e.NewClient(); err != nil {
			return nil, err
		}
		if r.k, err = leasekeeper.New(ctx, r.cli, leasekeeper.WithTTL(leaseTTL)); err != nil {
			_ = r.cli.Close()
			return nil, err
		}
		r.ctx, r.stop = context.WithCancel(ctx)
		rs = append(rs, r)
		// A replica stopped gracefully lets its run in progress finish
		// (up to 2 s) and hands leadership to the replica started last.
		r.s = cron.New(r.k, schedulerName, cron.WithValue(r.name),
			cron.WithDrain(2*time.Second), cron.WithHandover(election.Newest))
		job := func(ctx context.Context, run cron.Run) error {
			// Commit writes the ledger entry only while this replica's term
			// stands, and only once per scheduled time, even when a run
			// interrupted by the cut is run again by the next leader.
			key, value := ledgerKey(run.Time), fmt.Sprintf("%s token %d attempt %d", r.name, run.Token, run.Attempt)
			err := run.Commit(ctx, clientv3.OpPut(key, value))
			reports <- runReport{replica: r.name, run: run, key: key, value: value, err: err}
			return err
		}
		// Times missed while no replica led are run by the next leader, all
		// of them: catch-up runs start together, and with the default
		// overlap policy (SkipIfRunning) all but the first would be
		// recorded as skipped. A run that the cut leader claimed but could
		// not commit is run again by the next leader (WithRerun).
		if err := r.s.Add(jobName, spec, job, cron.WithCatchUp(cron.CatchUpAll, time.Minute),
			cron.WithOverlap(cron.AllowOverlap), cron.WithRerun(3)); err != nil {
			return nil, err
		}
		// The code jobs defined at runtime may name; none does yet.
		if err := r.s.Handle(dynHandler, func(ctx context.Context, run cron.Run) error {
			purges <- runReport{replica: r.name, run: run}
			return nil
		}); err != nil {
			return nil, err
		}
		return r, nil
	}
	startReplica := func(r *replica) {
		running++
		go func() { ends <- ended{r.name, r.s.Run(r.ctx)} }()
	}
	for i := range replicas {
		if _, err := addReplica(i + 1); err != nil {
			return err
		}
	}
	// Each replica's lease losses and new leases are told: they are what
	// moves the leadership.
	leaseEvents := make(chan leaseEvent, 64)
	fctx, stopFollow := context.WithCancel(ctx)
	var follow sync.WaitGroup
	defer func() {
		stopFollow()
		follow.Wait()
	}()
	for _, r := range rs {
		evs, unsubscribe := r.k.Subscribe()
		follow.Go(func() {
			defer unsubscribe()
			for {
				select {
				case ev, open := <-evs:
					if !open {
						return
					}
					if ev.State != leasekeeper.Lost && ev.State != leasekeeper.Reconnected {
						continue
					}
					select {
					case leaseEvents <- leaseEvent{r.name, ev}:
					case <-fctx.Done():
						return
					}
				case <-fctx.Done():
					return
				}
			}
		})
	}
	for _, r := range rs {
		startReplica(r)
	}
	say("started %d replicas; each runs the scheduler, one leads and runs %q every second", replicas, jobName)

	// Watch the leadership as an outside observer would.
	ok, err := leasekeeper.New(ctx, e.Admin, leasekeeper.WithTTL(leaseTTL))
	if err != nil {
		return err
	}
	defer ok.Close(context.WithoutCancel(ctx))
	octx, stopObserve := context.WithCancel(ctx)
	defer stopObserve()
	leaders, observeErr := election.New(ok, schedulerName).Observe(octx)

	var (
		leader   string    // as the observer last saw it
		cut      *replica  // the leader that was cut off
		cutToken int64     // its term's token
		cutAt    time.Time // when
		next     string    // who led first after the cut
		runner   string    // who ran last after the cut
		onTime   int       // on-time runs after the cut, by replicas other than the cut one
		written  = map[string]int{}
		tokens   = map[string]int64{} // replica → token of its last run
		reported []runReport
	)
	byName := func(n string) *replica {
		for _, r := range rs {
			if r.name == n {
				return r
			}
		}
		return nil
	}
	// tookOver tells the failover once: the first sign after the cut that
	// another replica leads, from the observer or from a run. The time is
	// measured from the cut; a leader seen before it is no failover.
	tookOver := func(name, how string) {
		if cut == nil || next != "" || name == cut.name {
			return
		}
		next = name
		say("failover: %s leads %v after %s was cut off (%s)", name, time.Since(cutAt).Round(10*time.Millisecond), cut.name, how)
	}
	// tell records and tells one run, and returns the note on its time.
	tell := func(rep runReport) (note string) {
		reported = append(reported, rep)
		tokens[rep.replica] = rep.run.Token
		late := time.Since(rep.run.Time)
		if rep.run.Attempt > 1 {
			note = fmt.Sprintf(", attempt %d: rerun of a run the cut leader could not finish", rep.run.Attempt)
		} else if late > 500*time.Millisecond {
			note = fmt.Sprintf(", catching up %.1fs late", late.Seconds())
		}
		at := clock(rep.run.Time)
		switch {
		case rep.err == nil:
			written[rep.replica]++
			say("%s run by %s (token %d%s): ledger write accepted", at, rep.replica, rep.run.Token, note)
		case errors.Is(rep.err, cron.ErrCommitted):
			say("%s run by %s (token %d%s): ledger write REFUSED: %v", at, rep.replica, rep.run.Token, note, rep.err)
		default:
			// The term ended or the request failed while the write was
			// on its way: it may have applied. The ledger read back at
			// the end tells.
			say("%s run by %s (token %d%s): ledger write not confirmed (%v); read back at the end", at, rep.replica, rep.run.Token, note, rep.err)
		}
		return note
	}
	tellLease := func(le leaseEvent) {
		if le.ev.State == leasekeeper.Lost {
			say("%s's lease %x is lost: %v", le.replica, int64(le.ev.Lease), le.ev.Err)
		} else {
			say("%s has a new lease %x (generation %d)", le.replica, int64(le.ev.Lease), le.ev.Generation)
		}
	}
	for next == "" || onTime < runsAfter {
		select {
		case l, open := <-leaders:
			if !open {
				if ctx.Err() != nil {
					return fmt.Errorf("waiting for the failover: %w", context.Cause(ctx))
				}
				err := observeErr()
				if err == nil {
					err = errors.New("no reason given")
				}
				return fmt.Errorf("observing the leader ended: %w", err)
			}
			if !l.Exists() {
				leader = ""
				say("no leader")
				continue
			}
			leader = l.Value
			say("%s is the leader (term token %d)", l.Value, l.Token)
			tookOver(l.Value, "seen by the observer")
		case rep := <-reports:
			note := tell(rep)
			if rep.err != nil {
				continue
			}
			if cut == nil && written[rep.replica] >= runsBefore && rep.replica == leader {
				cut, cutToken, cutAt = byName(rep.replica), rep.run.Token, time.Now()
				e.CutOff(cut.cli)
				say("CUT %s (the leader, token %d) off from etcd; it keeps running but cannot renew its lease", cut.name, cutToken)
				continue
			}
			if cut != nil && rep.replica != cut.name {
				// A run after the cut by another replica proves that it
				// leads, also when the observer saw the change before the
				// cut (a leadership that moved on its own, for example
				// after an etcd leader revoked leases on a stale view).
				tookOver(rep.replica, "its first run")
				runner = rep.replica
				if note == "" {
					onTime++
				}
			}
		case le := <-leaseEvents:
			tellLease(le)
		case end := <-ends:
			running--
			return fmt.Errorf("%s stopped running the scheduler: %w", end.replica, end.err)
		case <-ctx.Done():
			return fmt.Errorf("waiting for the failover: %w", context.Cause(ctx))
		}
	}

	// A rolling deploy: a replica of the new build starts, then the leader
	// is stopped as a deploy stops it. It finishes its run in progress and
	// hands leadership to the newest replica: no lease runs out on the way.
	// The cut replica is let back first, and campaigns again: the new
	// replica is the newest candidate once it campaigns.
	listed, stopListed := candidateValues(ctx, e.Admin)
	defer stopListed()
	e.Restore(cut.cli)
	if err := waitCandidate(ctx, listed, cut.name); err != nil {
		return err
	}
	fresh, err := addReplica(replicas + 1)
	if err != nil {
		return err
	}
	startReplica(fresh)
	if err := waitCandidate(ctx, listed, fresh.name); err != nil {
		return err
	}
	old := byName(runner)
	say("DEPLOY: started %s; stopping %s, the leader, as a deploy does", fresh.name, old.name)
	stoppedAt := time.Now()
	old.stop()
	var ledAt time.Time
	for stopped, ran := false, false; !stopped || ledAt.IsZero() || !ran; {
		select {
		case l, open := <-leaders:
			if !open {
				return fmt.Errorf("observing the leader ended: %w", observeErr())
			}
			if !l.Exists() {
				say("no leader")
				continue
			}
			say("%s is the leader (term token %d)", l.Value, l.Token)
			if l.Value == fresh.name && ledAt.IsZero() {
				ledAt = time.Now()
				say("handover: %s leads %v after %s was told to stop: no lease waited for", fresh.name, ledAt.Sub(stoppedAt).Round(time.Millisecond), old.name)
			}
		case rep := <-reports:
			note := tell(rep)
			if rep.err != nil || rep.replica == old.name {
				continue
			}
			// The new replica may catch up a time that passed while it
			// took over (the ledger check at the end finds none missed or
			// run twice), but reruns nothing: the old leader's runs had
			// finished.
			if rep.replica != fresh.name {
				return fmt.Errorf("after the deploy, %s ran %s%s: leadership did not go straight to the newest replica", rep.replica, clock(rep.run.Time), note)
			}
			if rep.run.Attempt > 1 {
				return fmt.Errorf("after the deploy, %s reran %s%s: a run was cut short by the stop", rep.replica, clock(rep.run.Time), note)
			}
			ran = true
			runner = fresh.name
		case le := <-leaseEvents:
			tellLease(le)
		case end := <-ends:
			running--
			if end.replica != old.name || !errors.Is(end.err, context.Canceled) {
				return fmt.Errorf("%s stopped running the scheduler: %w", end.replica, end.err)
			}
			stopped = true
			say("%s stopped: its runs had finished, and it handed leadership over", old.name)
		case <-ctx.Done():
			return fmt.Errorf("waiting for the handover: %w", context.Cause(ctx))
		}
	}

	if err := changeSchedule(ctx, e.Admin, say, purges); err != nil {
		return err
	}

	// Stop everything, then read the ledger: no run is on its way any more.
	// What the cut replica still had on its way reached etcd under a term
	// that ended, and was refused.
	for _, end := range stop() {
		if end.err != nil && !errors.Is(end.err, context.Canceled) {
			return fmt.Errorf("%s: scheduler: %w", end.replica, end.err)
		}
	}
	// Runs end before their scheduler's Run returns: what they reported
	// is all in the channel.
	for drained := false; !drained; {
		select {
		case rep := <-reports:
			reported = append(reported, rep)
		default:
			drained = true
		}
	}
	if err := check(ctx, e.Admin, leaseTTL, say, reported, cut.name, runner, tokens); err != nil {
		return err
	}
	return wipe(ctx, e.Admin, leaseTTL)
}

// changeSchedule defines a job at runtime, from admin (a client of no
// replica), makes it run twice as often, and removes it, telling the runs
// the leader starts for it.
func changeSchedule(ctx context.Context, admin *clientv3.Client, say func(string, ...any), purges <-chan runReport) error {
	// wait tells the runs of the job until two come one second apart (or,
	// with every2 set, two on even seconds).
	wait := func(every2 bool) error {
		var last time.Time
		for {
			select {
			case rep := <-purges:
				t := rep.run.Time
				say("%s %s run by %s (token %d), handler %q", clock(t), dynJob, rep.replica, rep.run.Token, dynHandler)
				if every2 && t.Second()%2 != 0 {
					return fmt.Errorf("%s ran at %s, not on an even second", dynJob, clock(t))
				}
				if !last.IsZero() && (every2 || t.Sub(last) == time.Second) {
					return nil
				}
				last = t
			case <-ctx.Done():
				return fmt.Errorf("waiting for %s to run: %w", dynJob, context.Cause(ctx))
			}
		}
	}
	say("SCHEDULE: an operator defines %q at runtime: every other second, handler %q", dynJob, dynHandler)
	if err := cron.Define(ctx, admin, schedulerName, dynJob, cron.Definition{Spec: "*/2 * * * * *", Handler: dynHandler}); err != nil {
		return err
	}
	if err := wait(true); err != nil {
		return err
	}
	say("SCHEDULE: %q updated to run every second", dynJob)
	if err := cron.Update(ctx, admin, schedulerName, dynJob, cron.Definition{Spec: "* * * * * *", Handler: dynHandler}); err != nil {
		return err
	}
	if err := wait(false); err != nil {
		return err
	}
	if err := cron.Remove(ctx, admin, schedulerName, dynJob); err != nil {
		return err
	}
	jobs, err := cron.Status(ctx, admin, schedulerName)
	if err != nil {
		return err
	}
	var left []string
	for _, j := range jobs {
		left = append(left, j.Job)
	}
	say("SCHEDULE: %q removed with its records; the scheduler's jobs: %v", dynJob, left)
	return nil
}

// candidateValues reports the values of the scheduler's election's
// candidates as they appear, from a watch, until stop is called; stop
// returns once the watch's goroutine has.
func candidateValues(ctx context.Context, admin *clientv3.Client) (_ <-chan string, stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan string)
	wch := admin.Watch(ctx, schedulerName+"/.election/", clientv3.WithPrefix(), clientv3.WithFilterDelete())
	go func() {
		defer close(out)
		for resp := range wch {
			for _, ev := range resp.Events {
				select {
				case out <- string(ev.Kv.Value):
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, func() {
		cancel()
		for range out { // until the goroutine closes it
		}
	}
}

// waitCandidate waits until a candidate of the value name appears.
func waitCandidate(ctx context.Context, listed <-chan string, name string) error {
	for v := range listed {
		if v == name {
			return nil
		}
	}
	return fmt.Errorf("waiting for %s to campaign: %w", name, context.Cause(ctx))
}

// wipe deletes the ledger and the scheduler's records. Both requests are
// safe to send again, and are after a transient error (exampleenv.Retry).
func wipe(ctx context.Context, admin *clientv3.Client, ttl time.Duration) error {
	if err := exampleenv.Retry(ctx, ttl, func(ctx context.Context) error {
		_, err := admin.Delete(ctx, ledgerPrefix, clientv3.WithPrefix())
		return err
	}); err != nil {
		return err
	}
	return exampleenv.Retry(ctx, ttl, func(ctx context.Context) error {
		return cron.Delete(ctx, admin, schedulerName)
	})
}

// check reads the ledger back from etcd: every scheduled time from the
// first to the last has one entry, written once, and each run that was
// told its write applied finds it there.
func check(ctx context.Context, admin *clientv3.Client, ttl time.Duration, say func(string, ...any), reported []runReport,
	first, last string, tokens map[string]int64) error {
	var resp *clientv3.GetResponse
	if err := exampleenv.Retry(ctx, ttl, func(ctx context.Context) error {
		var err error
		resp, err = admin.Get(ctx, ledgerPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		return err
	}); err != nil {
		return err
	}
	if len(resp.Kvs) == 0 {
		return errors.New("the ledger is empty")
	}
	ledger := map[string]*mvccpb.KeyValue{}
	var twice []string
	for _, kv := range resp.Kvs {
		ledger[string(kv.Key)] = kv
		if kv.Version > 1 {
			// Version counts the puts since the key was created: a time
			// committed twice would show 2.
			twice = append(twice, fmt.Sprintf("%s (%d writes)", strings.TrimPrefix(string(kv.Key), ledgerPrefix), kv.Version))
		}
	}
	if len(twice) > 0 {
		return fmt.Errorf("ledger entries written more than once: %v", twice)
	}
	for _, rep := range reported {
		kv := ledger[rep.key]
		applied := kv != nil && string(kv.Value) == rep.value
		switch {
		case rep.err == nil && !applied:
			return fmt.Errorf("%s's Commit of %s returned nil, but the ledger holds %q", rep.replica, clock(rep.run.Time), valueOf(kv))
		case rep.err != nil && !errors.Is(rep.err, cron.ErrCommitted):
			did := "it had not applied"
			if applied {
				did = "it had applied (its reply was lost)"
			}
			say("read back %s's unconfirmed write of %s (attempt %d): %s; the entry holds %q", rep.replica, clock(rep.run.Time), rep.run.Attempt, did, valueOf(kv))
		}
	}
	t0, err := time.Parse(time.RFC3339, strings.TrimPrefix(string(resp.Kvs[0].Key), ledgerPrefix))
	if err != nil {
		return err
	}
	t1, err := time.Parse(time.RFC3339, strings.TrimPrefix(string(resp.Kvs[len(resp.Kvs)-1].Key), ledgerPrefix))
	if err != nil {
		return err
	}
	var missing []string
	for t := t0; !t.After(t1); t = t.Add(time.Second) {
		if ledger[ledgerKey(t)] == nil {
			missing = append(missing, clock(t))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("scheduled times with no ledger entry: %v", missing)
	}
	say("ledger read back from etcd: scheduled times %s to %s, %d times, %d entries, each written once",
		clock(t0), clock(t1), int(t1.Sub(t0)/time.Second)+1, len(resp.Kvs))
	say("fencing tokens: %s ran with %d, %s with %d", first, tokens[first], last, tokens[last])
	return nil
}

func valueOf(kv *mvccpb.KeyValue) string {
	if kv == nil {
		return ""
	}
	return string(kv.Value)
}
