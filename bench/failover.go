package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/lock"
	"github.com/concordkit/concord/testcluster"
)

// The failover.* figures: how long work stops when the etcd leader dies.
// Each round kills the leader member (a SIGKILL of its process; embedded, a
// HardStop), while three clients were working in a loop:
//
//   - resume_after_leader_kill_ms: the kill → the next successful Lock of
//     a concord lock.Mutex that was locking and unlocking in a loop, beside
//     the same for etcd's concurrency.Mutex on a session;
//   - cron_resume_after_leader_kill_ms: the kill → the start of the next run
//     of a cron job due every second. The kill comes 100 ms after a run
//     started, so the next run is due 900 ms after it: that is the floor;
//   - leader_elected_after_kill_ms: the kill → the remaining members agree
//     on a new leader, the part no client can do anything about.
//
// Both locks' leases have the cluster's FailoverTTL, which outlives the
// election, so what is measured is how soon requests get through again, not
// a lease lost and granted again. Every Lock and Unlock of both sides is
// bounded by that TTL and tried again at once after any error, as a worker
// that must get on with its job would do. Between rounds the killed member
// is restarted and the cluster has a leader again.

func init() {
	figs := []string{
		"failover.resume_after_leader_kill_ms",
		"failover.cron_resume_after_leader_kill_ms",
		"failover.leader_elected_after_kill_ms",
	}
	Register(Group{Name: "failover", Figures: figs, Faults: figs, Disruptive: true, Run: runFailover})
}

// resumeTimeout bounds the wait for work to resume after a kill: far beyond
// any TTL, so a figure of that size is a finding, not a timeout.
const resumeTimeout = time.Minute

// lockLoop is a worker that locks and unlocks in a loop and records when each
// Lock returned.
type lockLoop struct {
	name    string
	attempt time.Duration // bound of each Lock and Unlock
	lock    func(ctx context.Context) (unlock func(context.Context) error, err error)

	mu     sync.Mutex // protects oks, errs, last
	oks    []time.Time
	errs   int
	last   error
	wakeup chan struct{} // closed and replaced on each success
}

func newLockLoop(name string, attempt time.Duration, lock func(ctx context.Context) (func(context.Context) error, error)) *lockLoop {
	return &lockLoop{name: name, attempt: attempt, lock: lock, wakeup: make(chan struct{})}
}

func (l *lockLoop) run(ctx context.Context) {
	for ctx.Err() == nil {
		actx, cancel := context.WithTimeout(ctx, l.attempt)
		unlock, err := l.lock(actx)
		cancel()
		if err == nil {
			l.ok(time.Now())
			// Unlock until it is done: a hold left behind would keep
			// the lock from this worker's own next Lock.
			for {
				uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.attempt)
				err = unlock(uctx)
				cancel()
				if err == nil || ctx.Err() != nil {
					break
				}
				l.fail(err)
				sleepCtx(ctx, 10*time.Millisecond)
			}
			continue
		}
		if ctx.Err() == nil {
			l.fail(err)
			sleepCtx(ctx, 10*time.Millisecond)
		}
	}
}

func (l *lockLoop) ok(t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.oks = append(l.oks, t)
	close(l.wakeup)
	l.wakeup = make(chan struct{})
}

func (l *lockLoop) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs++
	l.last = err
}

// firstAfter waits until a Lock returned at or after t, and returns when.
func (l *lockLoop) firstAfter(ctx context.Context, t time.Time) (time.Time, error) {
	for {
		l.mu.Lock()
		for _, ok := range l.oks {
			if !ok.Before(t) {
				l.mu.Unlock()
				return ok, nil
			}
		}
		wake, errs, last := l.wakeup, l.errs, l.last
		l.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%s: no Lock returned (%d errors, the last: %v): %w", l.name, errs, last, context.Cause(ctx))
		}
	}
}

// reset forgets what happened so far and returns how many errors there were.
func (l *lockLoop) reset() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.errs
	l.oks, l.errs, l.last = nil, 0, nil
	return n
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// cronTicks records the runs of a job due every second.
type cronTicks struct {
	mu     sync.Mutex // protects runs, wakeup
	runs   []cronTick
	wakeup chan struct{}
}

type cronTick struct {
	due, start time.Time // the scheduled time, and when fn started
}

func (c *cronTicks) add(due, start time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.runs = append(c.runs, cronTick{due, start})
	close(c.wakeup)
	c.wakeup = make(chan struct{})
}

// firstAfter waits until a run started at or after t, and returns it.
func (c *cronTicks) firstAfter(ctx context.Context, t time.Time) (cronTick, error) {
	for {
		c.mu.Lock()
		for _, r := range c.runs {
			if !r.start.Before(t) {
				c.mu.Unlock()
				return r, nil
			}
		}
		wake := c.wakeup
		c.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return cronTick{}, fmt.Errorf("cron: no run started: %w", context.Cause(ctx))
		}
	}
}

func runFailover(ctx context.Context, env *Env) ([]Result, error) {
	c := env.Cluster
	ttl := c.FailoverTTL()
	clis, err := env.Clients(3)
	if err != nil {
		return nil, err
	}
	const prefix = "bench/failover/"

	k, err := leasekeeper.New(ctx, clis[0], leasekeeper.WithTTL(ttl))
	if err != nil {
		return nil, err
	}
	defer k.Close(context.WithoutCancel(ctx))
	m := lock.New(k, prefix+"concord")
	ours := newLockLoop("concord lock.Mutex", ttl, func(ctx context.Context) (func(context.Context) error, error) {
		h, err := m.Lock(ctx)
		if err != nil {
			return nil, err
		}
		return h.Unlock, nil
	})

	el := &etcdLocker{cli: clis[1], ttl: ttl, name: prefix + "etcd"}
	defer el.close()
	theirs := newLockLoop("concurrency.Mutex", ttl, el.lock)

	ck, err := leasekeeper.New(ctx, clis[2], leasekeeper.WithTTL(ttl))
	if err != nil {
		return nil, err
	}
	defer ck.Close(context.WithoutCancel(ctx))
	ticks := &cronTicks{wakeup: make(chan struct{})}
	s := cron.New(ck, prefix+"cron")
	if err := s.Add("tick", "* * * * * *", func(_ context.Context, r cron.Run) error {
		ticks.add(r.Time, time.Now())
		return nil
	}); err != nil {
		return nil, err
	}
	defer func() { _ = cron.Delete(context.WithoutCancel(ctx), c.Admin(), prefix+"cron") }()

	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	cronDone := make(chan error, 1)
	wg.Go(func() { ours.run(wctx) })
	wg.Go(func() { theirs.run(wctx) })
	wg.Go(func() { cronDone <- s.Run(wctx) })
	defer func() {
		stop()
		wg.Wait()
	}()

	killed := -1 // a member a failed attempt left stopped
	defer func() {
		if killed >= 0 {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			_ = c.Restart(rctx, killed)
		}
	}()
	var resumeOurs, resumeTheirs, resumeCron, elected []float64
	err = Rounds(ctx, env, "failover", func(ctx context.Context, r Round) error {
		if killed >= 0 {
			if err := c.Restart(ctx, killed); err != nil {
				return err
			}
			killed = -1
		}
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		leader, err := c.WaitLeader(lctx)
		if err != nil {
			return err
		}
		// Every worker is working before the fault.
		now := time.Now()
		ours.reset()
		theirs.reset()
		for _, l := range []*lockLoop{ours, theirs} {
			if _, err := l.firstAfter(lctx, now); err != nil {
				return fmt.Errorf("before the kill: %w", err)
			}
		}
		// Kill 100 ms after a cron run was due, so the next is due 900 ms
		// after the kill in every round. A run that started later than
		// that (a scheduler running late) is let go by.
		var run cronTick
		for after := now; ; after = run.start.Add(time.Nanosecond) {
			if run, err = ticks.firstAfter(lctx, after); err != nil {
				return fmt.Errorf("before the kill: %w", err)
			}
			if time.Until(run.due.Add(100*time.Millisecond)) > 10*time.Millisecond {
				break
			}
		}
		select {
		case err := <-cronDone:
			return fmt.Errorf("cron stopped: %w", err)
		default:
		}
		sleepCtx(ctx, time.Until(run.due.Add(100*time.Millisecond)))

		// Kill returns once the member is gone: a process at once, an
		// embedded member only after its Close (about a second), long
		// after it stopped serving. So the new leader is watched for from
		// the kill on, beside it.
		t0 := time.Now()
		killErr := make(chan error, 1)
		go func() { killErr <- c.Kill(leader) }()
		rctx, cancel := context.WithTimeout(ctx, resumeTimeout)
		defer cancel()
		newLeader, err := nextLeader(rctx, c, leader)
		if kerr := <-killErr; kerr != nil {
			return kerr
		}
		killed = leader
		if err != nil {
			return err
		}
		// A Lock that returned before the old leader was gone may have
		// been served by it. Once the member is stopped, or once the
		// others elected a new leader (it cannot serve writes then), a
		// Lock that returns was served after the fault.
		dead := time.Now()
		if at := t0.Add(newLeader); at.Before(dead) {
			dead = at
		}
		o, err := ours.firstAfter(rctx, dead)
		if err != nil {
			return err
		}
		t, err := theirs.firstAfter(rctx, dead)
		if err != nil {
			return err
		}
		cr, err := ticks.firstAfter(rctx, dead)
		if err != nil {
			return err
		}
		oursErrs, theirsErrs := ours.reset(), theirs.reset()
		env.log.printf("failover round %d: killed member %d; new leader after %v; Lock resumed after %v (concord, %d errors), %v (concurrency.Mutex, %d errors); cron ran again after %v",
			r.N+1, leader, newLeader.Round(time.Millisecond),
			o.Sub(t0).Round(time.Millisecond), oursErrs, t.Sub(t0).Round(time.Millisecond), theirsErrs, cr.start.Sub(t0).Round(time.Millisecond))

		if err := c.Restart(ctx, leader); err != nil {
			return err
		}
		killed = -1
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
		resumeOurs, resumeTheirs = append(resumeOurs, ms(o.Sub(t0))), append(resumeTheirs, ms(t.Sub(t0)))
		resumeCron, elected = append(resumeCron, ms(cr.start.Sub(t0))), append(elected, ms(newLeader))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return []Result{
		Pair("failover.resume_after_leader_kill_ms", "ms", Median(resumeOurs), Median(resumeTheirs), "concurrency.Mutex", true),
		Single("failover.cron_resume_after_leader_kill_ms", "ms", Median(resumeCron), true),
		BaselineOnly("failover.leader_elected_after_kill_ms", "ms", Median(elected), "etcd raft election", true),
	}, nil
}

// nextLeader waits until the running members agree on a leader other than
// old, and returns how long that took.
func nextLeader(ctx context.Context, c *testcluster.Cluster, old int) (time.Duration, error) {
	start := time.Now()
	for {
		i, err := c.WaitLeader(ctx)
		if err != nil {
			return 0, err
		}
		if i != old {
			return time.Since(start), nil
		}
		sleepCtx(ctx, 5*time.Millisecond)
	}
}

// etcdLocker is the baseline worker's lock: etcd's concurrency.Mutex on a
// session, with a new session if the old one's lease was lost (it should
// not be: its TTL outlives the election).
type etcdLocker struct {
	cli  *clientv3.Client
	ttl  time.Duration
	name string
	sess *concurrency.Session
	m    *concurrency.Mutex
}

func (e *etcdLocker) lock(ctx context.Context) (func(context.Context) error, error) {
	if e.sess != nil {
		select {
		case <-e.sess.Done():
			_ = e.sess.Close()
			e.sess = nil
		default:
		}
	}
	if e.sess == nil {
		// Grant within the attempt's bound: NewSession's own grant has
		// none. The session's keep-alive must outlive the attempt, so it
		// does not get ctx.
		ttl := int(e.ttl / time.Second)
		g, err := e.cli.Grant(ctx, int64(ttl))
		if err != nil {
			return nil, err
		}
		s, err := concurrency.NewSession(e.cli, concurrency.WithLease(g.ID), concurrency.WithTTL(ttl))
		if err != nil {
			return nil, err
		}
		e.sess, e.m = s, concurrency.NewMutex(s, e.name)
	}
	if err := e.m.Lock(ctx); err != nil {
		if errors.Is(err, concurrency.ErrSessionExpired) {
			_ = e.sess.Close()
			e.sess = nil
		}
		return nil, err
	}
	return e.m.Unlock, nil
}

func (e *etcdLocker) close() {
	if e.sess != nil {
		_ = e.sess.Close()
	}
}
