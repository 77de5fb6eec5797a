// Command cron runs three replicas of a service with one scheduled job:
// every second, the replica that leads the scheduler's election runs it,
// and the others stand by. Each run appends to a ledger in etcd with
// Run.Commit, fenced by the leader's term, so a replica that lost its
// leadership cannot write, and once per scheduled time. Midway, the leader's client is cut off from etcd; its lease
// expires, another replica takes over, catches up the times missed during
// the failover, and every scheduled time is still run exactly once.
//
//	go run ./examples/cron              # on an embedded 3-member cluster
//	go run ./examples/cron -trace       # and print the spans
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

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
	leaseTTL      = 3 * time.Second
	runsBefore    = 3 // runs by the first leader before it is cut off
	runsAfter     = 3 // on-time runs by the next leader before the demo ends
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
	replica string
	run     cron.Run
	written bool  // the fenced ledger write was applied
	err     error // why not
}

type replica struct {
	name string
	cli  *clientv3.Client
	k    *leasekeeper.Keeper
	s    *cron.Scheduler
	done chan error
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
	if e.Embedded() {
		say("started an embedded 3-member etcd cluster")
	}
	// Start from nothing: no ledger, no scheduler records from a past run.
	if _, err := e.Admin.Delete(ctx, ledgerPrefix, clientv3.WithPrefix()); err != nil {
		return err
	}
	if err := cron.Purge(ctx, e.Admin, schedulerName); err != nil {
		return err
	}

	reports := make(chan runReport, 1000)
	rctx, stopReplicas := context.WithCancel(ctx)
	rs := make([]*replica, replicas)
	defer func() {
		stopReplicas()
		for _, r := range rs {
			if r == nil {
				continue
			}
			if r.done != nil {
				<-r.done
			}
			e.Restore(r.cli)
			kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), leaseTTL)
			r.k.Close(kctx)
			kcancel()
		}
	}()
	for i := range rs {
		r := &replica{name: fmt.Sprintf("replica-%d", i+1)}
		if r.cli, err = e.NewClient(); err != nil {
			return err
		}
		if r.k, err = leasekeeper.New(ctx, r.cli, leasekeeper.WithTTL(leaseTTL)); err != nil {
			return err
		}
		r.s = cron.New(r.k, schedulerName, cron.WithValue(r.name))
		job := func(ctx context.Context, run cron.Run) error {
			// Commit writes the ledger entry only while this replica's term
			// stands, and only once per scheduled time, even when a run
			// interrupted by the cut is run again by the next leader.
			key := ledgerPrefix + run.Time.UTC().Format("15:04:05")
			err := run.Commit(ctx, clientv3.OpPut(key, fmt.Sprintf("%s token %d attempt %d", r.name, run.Token, run.Attempt)))
			reports <- runReport{replica: r.name, run: run, written: err == nil, err: err}
			return err
		}
		// Times missed while no replica led are run by the next leader, all
		// of them: catch-up runs start together, and with the default
		// overlap policy (SkipIfRunning) all but the first would be
		// recorded as skipped. A run that the cut leader claimed but could
		// not commit is run again by the next leader (WithRerun).
		if err := r.s.Add(jobName, spec, job, cron.WithCatchUp(cron.CatchUpAll, time.Minute),
			cron.WithOverlap(cron.AllowOverlap), cron.WithRerun(3)); err != nil {
			return err
		}
		rs[i] = r
	}
	for _, r := range rs {
		r.done = make(chan error, 1)
		go func() { r.done <- r.s.Run(rctx) }()
	}
	say("started %d replicas; each runs the scheduler, one leads and runs %q every second", replicas, jobName)

	// Watch the leadership as an outside observer would.
	ok, err := leasekeeper.New(ctx, e.Admin)
	if err != nil {
		return err
	}
	defer ok.Close(context.WithoutCancel(ctx))
	octx, stopObserve := context.WithCancel(ctx)
	defer stopObserve()
	leaders, _ := election.New(ok, schedulerName).Observe(octx)

	var (
		first      *replica
		firstToken int64
		cutAt      time.Time
		second     string
		onTime     int
		times      = map[string][]string{} // scheduled time → replicas that ran it
		tokens     = map[string]int64{}    // replica → token of its runs
	)
	byName := func(n string) *replica {
		for _, r := range rs {
			if r.name == n {
				return r
			}
		}
		return nil
	}
	for second == "" || onTime < runsAfter {
		select {
		case l, open := <-leaders:
			if !open {
				return errors.New("observing the leader ended")
			}
			if !l.Exists() {
				say("no leader")
				continue
			}
			say("%s is the leader (term token %d)", l.Value, l.Token)
			if first == nil {
				first, firstToken = byName(l.Value), l.Token
			} else if l.Value != first.name && second == "" {
				second = l.Value
				say("failover: %s took over %v after %s was cut off", second, time.Since(cutAt).Round(10*time.Millisecond), first.name)
			}
		case rep := <-reports:
			at := rep.run.Time.UTC().Format("15:04:05")
			if rep.written {
				times[at] = append(times[at], rep.replica)
			}
			tokens[rep.replica] = rep.run.Token
			late := time.Since(rep.run.Time)
			note := ""
			if rep.run.Attempt > 1 {
				note = fmt.Sprintf(", attempt %d: rerun of a run the cut leader could not finish", rep.run.Attempt)
			} else if late > 500*time.Millisecond {
				note = fmt.Sprintf(", catching up %.1fs late", late.Seconds())
			}
			if rep.written {
				say("%s run by %s (token %d%s): ledger write accepted", at, rep.replica, rep.run.Token, note)
			} else {
				say("%s run by %s (token %d%s): ledger write REFUSED: %v", at, rep.replica, rep.run.Token, note, rep.err)
			}
			if first != nil && rep.replica == first.name && cutAt.IsZero() && len(times) >= runsBefore {
				if err := e.CutOff(ctx, first.cli, first.k.Current().ID()); err != nil {
					return err
				}
				cutAt = time.Now()
				if e.Embedded() {
					say("CUT %s (the leader, token %d) off from etcd; it keeps running but cannot renew its lease", first.name, firstToken)
				} else {
					say("REVOKED the lease of %s (the leader, token %d) on the server", first.name, firstToken)
				}
			}
			if second != "" && rep.replica == second && note == "" {
				onTime++
			}
		case <-ctx.Done():
			return fmt.Errorf("waiting for the failover: %w", context.Cause(ctx))
		}
	}

	// Every scheduled time from the first to the last has exactly one
	// ledger entry.
	var keys []string
	for at := range times {
		keys = append(keys, at)
	}
	sort.Strings(keys)
	ledger, err := e.Admin.Get(ctx, ledgerPrefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	var twice []string
	for _, at := range keys {
		if len(times[at]) > 1 {
			twice = append(twice, at+" by "+strings.Join(times[at], ", "))
		}
	}
	if len(twice) > 0 {
		return fmt.Errorf("times run more than once: %v", twice)
	}
	t0, _ := time.Parse("15:04:05", keys[0])
	t1, _ := time.Parse("15:04:05", keys[len(keys)-1])
	span := int(t1.Sub(t0)/time.Second) + 1
	say("scheduled times %s to %s: %d times, %d runs, each time run once; %d ledger entries",
		keys[0], keys[len(keys)-1], span, len(keys), len(ledger.Kvs))
	say("fencing tokens: %s ran with %d, %s with %d", first.name, tokens[first.name], second, tokens[second])
	if len(keys) != span {
		return fmt.Errorf("some scheduled times never ran: %d of %d", len(keys), span)
	}
	if _, err := e.Admin.Delete(ctx, ledgerPrefix, clientv3.WithPrefix()); err != nil {
		return err
	}
	stopReplicas()
	for _, r := range rs {
		<-r.done
		r.done = nil
	}
	return cron.Purge(ctx, e.Admin, schedulerName)
}
