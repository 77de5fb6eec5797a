package cron

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	robfig "github.com/robfig/cron/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/queue"
)

// parser accepts standard 5-field specs, an optional leading seconds field,
// and descriptors such as @hourly and @every 10s.
var parser = robfig.NewParser(robfig.SecondOptional | robfig.Minute | robfig.Hour |
	robfig.Dom | robfig.Month | robfig.Dow | robfig.Descriptor)

// ParseSpec checks a schedule spec as Add would.
func ParseSpec(spec string) error {
	_, err := parseSpec(spec)
	return err
}

func parseSpec(spec string) (robfig.Schedule, error) {
	// robfig rounds @every durations to whole seconds, and up to one second,
	// without a word; say so instead of running at another rate than asked.
	if rest, ok := strings.CutPrefix(strings.TrimSpace(spec), "@every "); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil {
			return nil, fmt.Errorf("%w %q: %w", ErrBadSpec, spec, err)
		}
		if d < time.Second || d%time.Second != 0 {
			return nil, fmt.Errorf("%w %q: @every needs a whole number of seconds, at least 1s", ErrBadSpec, spec)
		}
	}
	s, err := parser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrBadSpec, spec, err)
	}
	return s, nil
}

// Func is a job. It runs on the leader under ctx, which ends if leadership
// is lost or the scheduler stops. Writes into etcd that must not land after
// the run lost its leadership should be guarded with r.Guard().
type Func func(ctx context.Context, r Run) error

// Run describes one run of a job.
type Run struct {
	Job     string
	Time    time.Time // the scheduled time; for a Trigger, when it was requested
	Token   int64     // the leader's term token: a fencing token for the run's effects
	Attempt int       // 1, then 2, 3, … for retries (WithRetries) and reruns (WithRerun) of the same time
	Trigger bool      // started by Trigger rather than by the schedule

	term   *election.Term
	fence  []clientv3.Cmp // the term's guard and, for a defined job, its definition's
	commit *commitState
}

// Guard returns comparisons that hold only while the leadership under which
// this run was claimed stands and, for a job defined at runtime, while the
// job stays defined (Remove ends that; Update does not).
func (r Run) Guard() []clientv3.Cmp {
	if r.term == nil {
		return nil
	}
	return append([]clientv3.Cmp(nil), r.fence...)
}

// Overlap says what happens when a job's time comes while its previous run
// is still going.
type Overlap int

const (
	// SkipIfRunning (the default) claims the time but does not run it; its
	// status reads Skipped.
	SkipIfRunning Overlap = iota
	// AllowOverlap runs it alongside.
	AllowOverlap
)

// CatchUp says which of several times due at once run: after a failover,
// or when the leader could not keep up.
type CatchUp int

const (
	// CatchUpLatest (the default) runs only the latest due time.
	CatchUpLatest CatchUp = iota
	// CatchUpAll runs every due time, oldest first.
	CatchUpAll
)

// DefaultCatchUpWindow is how far back missed times are considered by
// default.
const DefaultCatchUpWindow = 10 * time.Minute

// JobOption configures a job.
type JobOption func(*jobOptions)

type jobOptions struct {
	overlap Overlap
	catchUp CatchUp
	window  time.Duration
	retries int
	backoff time.Duration
	reruns  int
	enqueue []queue.EnqueueOption // a dispatched job's (WithEnqueue)
}

// WithOverlap sets the overlap policy (default SkipIfRunning).
func WithOverlap(o Overlap) JobOption { return func(j *jobOptions) { j.overlap = o } }

// WithCatchUp sets which missed times run and how far back times are
// considered at all (default CatchUpLatest within DefaultCatchUpWindow). A
// window of zero runs only times that are due now: up to a second late.
func WithCatchUp(c CatchUp, window time.Duration) JobOption {
	return func(j *jobOptions) { j.catchUp, j.window = c, window }
}

// WithRetries runs a time again, up to n more times with the given pause
// between attempts, when fn returns an error, as long as the same leader
// holds its term. Default: no retry.
func WithRetries(n int, backoff time.Duration) JobOption {
	return func(j *jobOptions) { j.retries, j.backoff = n, backoff }
}

// WithRerun runs a time again under the next leader when its run was
// interrupted: its leader claimed it and then lost leadership, or its
// scheduler was stopped, before fn returned, and the run had not committed
// with Run.Commit. Every such time within the catch-up window (WithCatchUp)
// is rerun, oldest first, with Attempt one more than the interrupted run,
// as long as Attempt stays within 1 + n + the retries of WithRetries. A job
// whose effects go through Run.Commit then has each scheduled time's effects
// applied exactly once (see the package doc); fn itself may start more than
// once for a time. Not rerun: triggers, runs that failed (fn returned an
// error: see WithRetries), and runs of a job paused when the new leader
// takes over. With SkipIfRunning, a rerun or a catch-up time that comes
// while an earlier rerun still goes is skipped like any other time. Default:
// no rerun (at most once).
func WithRerun(n int) JobOption { return func(j *jobOptions) { j.reruns = n } }

// check reports options out of range.
func (o jobOptions) check(jobName string) error {
	switch {
	case o.window < 0:
		return fmt.Errorf("cron: job %q: negative catch-up window %v", jobName, o.window)
	case o.retries < 0 || o.backoff < 0:
		return fmt.Errorf("cron: job %q: negative retries (%d) or backoff (%v)", jobName, o.retries, o.backoff)
	case o.reruns < 0:
		return fmt.Errorf("cron: job %q: negative reruns (%d)", jobName, o.reruns)
	case o.overlap != SkipIfRunning && o.overlap != AllowOverlap:
		return fmt.Errorf("cron: job %q: unknown overlap policy %d", jobName, o.overlap)
	case o.catchUp != CatchUpLatest && o.catchUp != CatchUpAll:
		return fmt.Errorf("cron: job %q: unknown catch-up policy %d", jobName, o.catchUp)
	}
	return nil
}

// job is what runs: a job added in code, or one definition of a defined
// job. It does not change once built; a definition's update builds another.
type job struct {
	name  string
	spec  string
	sched robfig.Schedule
	fn    Func
	opts  jobOptions
	// disp is where a dispatched job's runs go (AddDispatch); fn is nil
	// then.
	disp *dispatcher

	defined bool   // defined at runtime (Define), not added in code
	handler string // a defined job's handler name
	// problem says why a defined job does not run on this leader (its
	// handler is not registered here, its definition is invalid, a job
	// added in code has its name); fn is nil then.
	problem string
}

// runnable reports whether the job runs here: it has a func or a queue.
func (j *job) runnable() bool { return j.fn != nil || j.disp != nil }

// handler is what Handle or HandleDispatch registered under a name.
type handler struct {
	fn   Func
	disp *dispatcher
}

// Option configures a Scheduler.
type Option func(*options)

type options struct {
	value    string
	tp       trace.TracerProvider
	mp       metric.MeterProvider
	drain    time.Duration
	handover func([]election.Leader) string
}

// WithDrain lets the runs in progress finish, for up to d, when Run's ctx
// ends (a graceful stop, such as a replica's shutdown in a rolling
// deploy): the leader claims no time meanwhile and keeps its term while it
// waits, then cancels what still runs (an interrupted run, rerun by the
// next leader WithRerun), writes the statuses and resigns. A run that
// finished within d is done: the next leader does not run its time again.
// Default 0: runs are canceled at once, as when leadership is lost.
func WithDrain(d time.Duration) Option { return func(o *options) { o.drain = d } }

// WithHandover makes a graceful stop hand leadership to the replica choose
// picks among those waiting (election.Newest: the one started last, which
// in a rolling deploy runs the newest build) instead of the next in line,
// in one transaction (see election.Term.Handover). Default: the next in
// line leads, which takes the same one transaction.
func WithHandover(choose func(waiting []election.Leader) string) Option {
	return func(o *options) { o.handover = choose }
}

// WithValue sets the value the scheduler campaigns with (what Leader and
// Observe of the election named like the scheduler report). Default:
// "<hostname>/<pid>". A value over etcd's request limit is reported by Add
// and Run, before anything is written.
func WithValue(v string) Option { return func(o *options) { o.value = v } }

// WithTracerProvider sets the tracer provider (default: the global one).
func WithTracerProvider(tp trace.TracerProvider) Option { return func(o *options) { o.tp = tp } }

// WithMeterProvider sets the meter provider (default: the global one).
func WithMeterProvider(mp metric.MeterProvider) Option { return func(o *options) { o.mp = mp } }

// Scheduler runs jobs on whichever replica leads the election named like the
// scheduler. Every replica adds the same jobs and calls Run. Its methods are
// safe for concurrent use.
type Scheduler struct {
	k    *leasekeeper.Keeper
	name string
	keys keys
	err  error
	opts options
	el   *election.Election

	tracer trace.Tracer
	runs   metric.Int64Counter
	lag    metric.Float64Histogram

	mu       sync.Mutex // protects jobs, handlers, started
	jobs     []*job
	handlers map[string]handler
	started  bool
}

// New returns a scheduler named name bound to k's lease. It does no I/O; an
// invalid name is reported by Add and Run.
func New(k *leasekeeper.Keeper, name string, opts ...Option) *Scheduler {
	host, _ := os.Hostname()
	o := options{value: fmt.Sprintf("%s/%d", host, os.Getpid())}
	for _, opt := range opts {
		opt(&o)
	}
	if o.tp == nil {
		o.tp = otel.GetTracerProvider()
	}
	if o.mp == nil {
		o.mp = otel.GetMeterProvider()
	}
	s := &Scheduler{k: k, name: name, keys: keysOf(name), opts: o}
	s.err = names.Validate("cron", name)
	if k == nil && s.err == nil {
		s.err = errors.New("cron: nil keeper")
	}
	if s.err == nil {
		s.err = guard.CheckValueSize("cron", "value", len(o.value))
	}
	if s.err == nil && o.drain < 0 {
		s.err = fmt.Errorf("cron: drain %v: must not be negative", o.drain)
	}
	if s.err == nil {
		eopts := []election.Option{election.WithTracerProvider(o.tp), election.WithMeterProvider(o.mp)}
		if o.handover != nil {
			eopts = append(eopts, election.WithHandover(o.handover))
		}
		s.el = election.New(k, name, eopts...)
	}
	const scope = "github.com/concordkit/concord/cron"
	s.tracer = o.tp.Tracer(scope)
	m := o.mp.Meter(scope)
	s.runs, _ = m.Int64Counter("concord.cron.runs", metric.WithDescription("Job runs started or skipped, by job and outcome."))
	s.lag, _ = m.Float64Histogram("concord.cron.fire_lag", metric.WithUnit("s"),
		metric.WithDescription("From a job's scheduled time to the start of its run."))
	return s
}

// Add registers a job. spec is a standard cron spec (5 fields, or 6 with
// leading seconds) or a descriptor (@hourly, @every 10s). Add must be called
// before Run, with the same jobs on every replica.
func (s *Scheduler) Add(jobName, spec string, fn Func, opts ...JobOption) error {
	if fn == nil {
		return fmt.Errorf("cron: job %q: nil func", jobName)
	}
	return s.add(jobName, spec, fn, nil, opts)
}

func (s *Scheduler) add(jobName, spec string, fn Func, d *dispatcher, opts []JobOption) error {
	if s.err != nil {
		return s.err
	}
	if err := validateJob(jobName); err != nil {
		return err
	}
	sched, err := parseSpec(spec)
	if err != nil {
		return err
	}
	o := jobOptions{window: DefaultCatchUpWindow}
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.check(jobName); err != nil {
		return err
	}
	if d != nil {
		if err := o.checkDispatch(jobName); err != nil {
			return err
		}
	} else if o.enqueue != nil {
		return fmt.Errorf("cron: job %q: WithEnqueue is for dispatched jobs (AddDispatch)", jobName)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return ErrStarted
	}
	for _, j := range s.jobs {
		if j.name == jobName {
			return fmt.Errorf("%w: job %q", ErrDuplicate, jobName)
		}
	}
	s.jobs = append(s.jobs, &job{name: jobName, spec: spec, sched: sched, fn: fn, disp: d, opts: o})
	return nil
}

// Handle registers fn as the handler called name, for jobs defined at
// runtime (Define) that name it in Definition.Handler. Like Add, it must be called before
// Run; every replica that may lead should register the same handlers.
func (s *Scheduler) Handle(name string, fn Func) error {
	if fn == nil {
		return fmt.Errorf("cron: handler %q: nil func", name)
	}
	return s.handle(name, fn, nil)
}

func (s *Scheduler) handle(name string, fn Func, d *dispatcher) error {
	if s.err != nil {
		return s.err
	}
	if err := validateHandler(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return ErrStarted
	}
	if _, ok := s.handlers[name]; ok {
		return fmt.Errorf("%w: handler %q", ErrDuplicate, name)
	}
	if s.handlers == nil {
		s.handlers = map[string]handler{}
	}
	s.handlers[name] = handler{fn: fn, disp: d}
	return nil
}

// Run campaigns for leadership and, while leading, runs the jobs, until ctx
// ends; it returns ctx's cause then. It campaigns again after a loss. It
// returns early with an error that no retry can fix (corrupt records under
// the scheduler's keys, permission denied). Runs in progress get a canceled
// context when leadership is lost or ctx ends (after the WithDrain bound,
// if they have not finished by then); Run returns after they did,
// their status was written and the term resigned. While etcd cannot be
// reached those writes can keep Run past ctx's end, until etcd confirms them
// or the term's lease is lost (at most the TTL).
func (s *Scheduler) Run(ctx context.Context) error {
	if s.err != nil {
		return s.err
	}
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return ErrStarted
	}
	s.started = true
	jobs := append([]*job(nil), s.jobs...)
	handlers := s.handlers
	s.mu.Unlock()
	// A leader's own error (a corrupt record) ends Run; it is returned as
	// the leader gave it, without the election's "election: Run:" prefix.
	var leaderErr error
	err := s.el.Run(ctx, s.opts.value, func(ctx context.Context, t *election.Term) error {
		leaderErr = newLeader(s, t, jobs, handlers).run(ctx)
		return leaderErr
	})
	switch {
	case err == nil || ctx.Err() != nil && errors.Is(err, context.Cause(ctx)):
		return err
	case leaderErr != nil && errors.Is(err, leaderErr):
		return leaderErr
	}
	// What stopped the campaign (permission denied, a keeper closed),
	// reported as the scheduler's. The election's "campaign NAME" wrapping
	// only repeats the name and is dropped; any other election error (a
	// corrupt candidate key) is kept whole.
	if inner := errors.Unwrap(err); inner != nil && strings.HasPrefix(err.Error(), "election: campaign ") {
		err = inner
	}
	return fmt.Errorf("cron: run %q: campaigning: %w", s.name, err)
}

// Election returns the election the scheduler campaigns in (named like the
// scheduler), to see or observe which replica leads.
func (s *Scheduler) Election() *election.Election { return s.el }
