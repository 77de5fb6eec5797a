package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/turn"
)

// Defaults.
const (
	DefaultMaxAttempts  = 5
	DefaultRetention    = 5 * time.Minute
	DefaultRetryBackoff = time.Second
	DefaultRetryMax     = time.Minute
)

// Queue is a durable work queue named by an etcd key prefix. Producers and
// consumers in any number of processes share a queue by using the same name.
// A Queue's methods are safe for concurrent use. A Queue that has served
// Dequeue runs one background goroutine (its index watch); Close stops it.
type Queue struct {
	cli  *clientv3.Client
	name string
	err  error // from validation; reported by every call
	keys layout
	o    options

	worker string // identifies this Queue's claims to other processes
	ids    idGen
	tel    *telemetry

	mu     sync.Mutex // protects ix, closed, retain
	ix     *index
	closed bool
	retain retentionLease
	// retainG serializes retention lease grants, so that concurrent Acks
	// share one lease. It is held across the Grant, so an Ack waiting for it
	// gives up when its own ctx ends.
	retainG turn.Turn
	// timeouts joins the timeouts being carried out (Task.timedOut): Close
	// waits for them, and none starts once the Queue is closed.
	timeouts sync.WaitGroup
	bound    bound // the last reading of a bounded queue's counters
}

type options struct {
	maxAttempts     int
	retention       time.Duration
	backoff         time.Duration
	backoffMax      time.Duration
	maxTxnOps       int
	maxRequestBytes int
	worker          string
	taskTimeout     time.Duration
	maxSize         int
	tp              trace.TracerProvider
	mp              metric.MeterProvider
	errs            []error
}

// Option configures a Queue.
type Option func(*options)

// WithMaxAttempts sets how many times a task is handed out before it goes to
// the dead letters (a Nack on the last attempt, or a claim lost on it).
// Default 5.
func WithMaxAttempts(n int) Option {
	return func(o *options) {
		if n < 1 {
			o.errs = append(o.errs, fmt.Errorf("max attempts %d: must be at least 1", n))
		}
		o.maxAttempts = n
	}
}

// WithMaxSize bounds the queue to n unfinished tasks (queued, delayed or
// running): an Enqueue or Requeue through this Queue that would go over it
// writes nothing and returns ErrFull, or, enqueued WithWaitIfFull, waits
// for room; an EnqueueBatch admits a transaction of at most n tasks at a
// time. The bound is exact under any number of producers, as long as every
// producer of the queue uses it (see Bounds in the package doc): a Queue
// without it, such as the one `concord queue requeue` uses, counts a
// requeued bounded task in without checking. EnqueueTx is refused on a
// bounded Queue.
func WithMaxSize(n int) Option {
	return func(o *options) {
		if n < 1 {
			o.errs = append(o.errs, fmt.Errorf("max size %d: must be at least 1", n))
		}
		o.maxSize = n
	}
}

// WithTaskTimeout sets how long a worker may hold a task it dequeued from
// this Queue before the task is taken from it, for tasks enqueued without
// their own WithTimeout. Default 0: no timeout (a live worker holds a task
// until it finishes it). See WithTimeout.
func WithTaskTimeout(d time.Duration) Option {
	return func(o *options) {
		if d < 0 {
			o.errs = append(o.errs, fmt.Errorf("task timeout %v: must not be negative", d))
		}
		o.taskTimeout = d
	}
}

// WithRetention sets how long the status record of a finished (acknowledged)
// task is kept for Status and Stats. It is bound to an etcd lease that
// expires, so etcd itself deletes it; no cleaner process is needed. Rounded
// up to whole seconds; kept between d and 1.25·d. Default 5 minutes. Zero keeps a receipt for about 10 s only, so
// that an Ack retried after a lost answer can tell that it committed.
func WithRetention(d time.Duration) Option {
	return func(o *options) {
		if d < 0 {
			o.errs = append(o.errs, fmt.Errorf("retention %v: must not be negative", d))
		}
		o.retention = d
	}
}

// WithRetryBackoff sets the delay before a task nacked without an explicit
// delay is ready again: base·2^(attempt−1), at most max. Default 1 s, 1 min.
func WithRetryBackoff(base, max time.Duration) Option {
	return func(o *options) {
		if base < 0 || max < base {
			o.errs = append(o.errs, fmt.Errorf("retry backoff %v..%v: need 0 ≤ base ≤ max", base, max))
		}
		o.backoff, o.backoffMax = base, max
	}
}

// WithMaxTxnOps tells the queue the cluster's --max-txn-ops (default 128),
// which bounds how many tasks EnqueueBatch writes per transaction.
func WithMaxTxnOps(n int) Option {
	return func(o *options) {
		if n < 4 {
			o.errs = append(o.errs, fmt.Errorf("max txn ops %d: must be at least 4", n))
		}
		o.maxTxnOps = n
	}
}

// WithMaxRequestBytes tells the queue the cluster's --max-request-bytes
// (default 1.5 MiB), which bounds payloads and batches.
func WithMaxRequestBytes(n int) Option {
	return func(o *options) {
		if n < 4096 {
			o.errs = append(o.errs, fmt.Errorf("max request bytes %d: must be at least 4096", n))
		}
		o.maxRequestBytes = n
	}
}

// WithWorkerName sets the name this Queue's claims carry, shown by Status as
// the worker of a running task. Default: random.
func WithWorkerName(s string) Option {
	return func(o *options) {
		if err := checkLabel("worker name", s, 256); err != nil {
			o.errs = append(o.errs, err)
		}
		o.worker = s
	}
}

// WithTracerProvider sets the OpenTelemetry tracer provider (default: the
// global one).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tp = tp }
}

// WithMeterProvider sets the OpenTelemetry meter provider (default: the
// global one).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) { o.mp = mp }
}

// New returns the queue named name. It does no I/O and never fails: a nil
// client, an invalid name or invalid options are reported by every call on
// the Queue, before anything is written, as every recipe's constructor
// does.
func New(cli *clientv3.Client, name string, opts ...Option) *Queue {
	q, err := newQueue(cli, name, opts)
	if err != nil {
		return &Queue{name: name, err: err}
	}
	return q
}

func newQueue(cli *clientv3.Client, name string, opts []Option) (*Queue, error) {
	if cli == nil {
		return nil, errors.New("queue: nil client")
	}
	if err := names.Validate("queue", name); err != nil {
		return nil, err
	}
	o := options{
		maxAttempts:     DefaultMaxAttempts,
		retention:       DefaultRetention,
		backoff:         DefaultRetryBackoff,
		backoffMax:      DefaultRetryMax,
		maxTxnOps:       guard.MaxTxnOps,
		maxRequestBytes: guard.MaxRequestBytes,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if len(o.errs) > 0 {
		return nil, fmt.Errorf("queue: invalid option: %w", errors.Join(o.errs...))
	}
	if o.worker == "" {
		o.worker = "w-" + names.NewID()
	}
	if o.tp == nil {
		o.tp = otel.GetTracerProvider()
	}
	if o.mp == nil {
		o.mp = otel.GetMeterProvider()
	}
	q := &Queue{
		cli:     cli,
		name:    name,
		keys:    layout{prefix: names.Prefix(name, "queue")},
		o:       o,
		worker:  o.worker,
		retainG: turn.New(),
	}
	q.tel = newTelemetry(q)
	return q, nil
}

// Name returns the queue's name.
func (q *Queue) Name() string { return q.name }

// Worker returns the name this Queue's claims carry.
func (q *Queue) Worker() string { return q.worker }

// Close stops the background index watch, if Dequeue started one, gives
// back the tasks a batched claim took but no Dequeue handed out, and
// unregisters the queue's metrics callback. Tasks already dequeued remain
// usable, without their timeouts: Close stops the timers, and waits for the
// timeouts already being carried out (each bounded by the lease TTL). Dequeue on a closed Queue returns ErrClosed; producer and
// inspection calls keep working.
func (q *Queue) Close() error {
	if q.err != nil {
		return nil // nothing was started
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	ix := q.ix
	q.mu.Unlock()
	var err error
	if ix != nil {
		ix.stopTimeouts()
		ix.stop()
		// Tasks a batch claimed but no Dequeue took go back at once rather
		// than when the lease ends.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		for _, t := range ix.drainBuffered() {
			if rerr := t.release(ctx); rerr != nil && !errors.Is(rerr, ErrLost) {
				err = errors.Join(err, rerr)
			}
		}
		// And the claims the index goroutine was still trying to give back;
		// those it cannot reach now end with their lease.
		ix.retryGiveBacks(ctx)
		cancel()
	}
	q.timeouts.Wait()
	q.tel.close()
	return err
}

// indexFor returns the running index, starting it on first use.
func (q *Queue) indexFor() (*index, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil, ErrClosed
	}
	if q.ix == nil {
		q.ix = startIndex(q)
	}
	return q.ix, nil
}

// currentIndex returns the index if running, without starting it.
func (q *Queue) currentIndex() *index {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.ix
}

// retentionLease is the lease finished-task records are attached to. A new
// one is granted every retention/4 with a TTL of 1.25·retention, so a record
// attached to it lives between retention and 1.25·retention: etcd deletes it
// when the lease expires, without a cleaner.
type retentionLease struct {
	id      clientv3.LeaseID
	granted time.Time
}

// receiptTTL is how long a finished record is kept with retention 0: long
// enough for an Ack whose answer was lost to recognise, on retry, that it
// committed.
const receiptTTL = 10 * time.Second

func (q *Queue) retentionPeriod() time.Duration {
	if q.o.retention == 0 {
		return receiptTTL
	}
	return q.o.retention
}

func (q *Queue) retentionTTL() int64 {
	r := q.retentionPeriod()
	secs := int64((r + r/4 + time.Second - 1) / time.Second)
	return max(secs, 1)
}

// retentionLeaseID returns the current retention lease, granting a new one
// if it is due or renew is set (the last one was not found). A grant that
// fails leaves the current lease as it was, for the next caller to retry.
//
// wait bounds the wait for the turn of a grant in flight; ctx bounds the
// grant.
func (q *Queue) retentionLeaseID(wait, ctx context.Context, renew bool, try time.Duration) (clientv3.LeaseID, error) {
	// A fresh lease needs no turn behind a grant in flight.
	if id, ok := q.freshRetentionLease(); ok && !renew {
		return id, nil
	}
	if err := q.retainG.Take(wait); err != nil {
		return 0, fmt.Errorf("queue: grant retention lease: %w", err)
	}
	defer q.retainG.Done()
	// Again: the grant we waited for may have made one.
	if id, ok := q.freshRetentionLease(); ok && !renew {
		return id, nil
	}
	// Each try is bounded by try (retry.Attempt): a grant sent to an etcd
	// leader that died or hangs is sent again once another is elected. A
	// grant given up that landed all the same leaves a lease nothing is
	// attached to, which expires after the retention.
	var resp *clientv3.LeaseGrantResponse
	err := retry.Attempts(ctx, retry.RequestPolicy, try, func(ctx context.Context) (err error) {
		resp, err = q.cli.Grant(ctx, q.retentionTTL())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("queue: grant retention lease: %w", err)
	}
	q.mu.Lock()
	q.retain = retentionLease{id: resp.ID, granted: time.Now()}
	q.mu.Unlock()
	return resp.ID, nil
}

// freshRetentionLease returns the retention lease if it was granted less
// than retention/4 (at least 0.5 s) ago.
func (q *Queue) freshRetentionLease() (clientv3.LeaseID, bool) {
	q.mu.Lock()
	r := q.retain
	q.mu.Unlock()
	return r.id, r.id != 0 && time.Since(r.granted) < max(q.retentionPeriod()/4, time.Second/2)
}

func (q *Queue) backoffFor(attempt int) time.Duration {
	d := q.o.backoff
	for i := 1; i < attempt && d < q.o.backoffMax; i++ {
		d *= 2
	}
	return min(d, q.o.backoffMax)
}
