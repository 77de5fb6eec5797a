package cron

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/concordkit/concord/internal/codec"
	"github.com/concordkit/concord/queue"
)

// dispatcher is where a job's runs go instead of a func: a queue, with the
// options each task is enqueued with.
type dispatcher struct {
	q    *queue.Queue
	opts []queue.EnqueueOption
}

// AddDispatch registers a job whose runs go to workers instead of running
// on the leader: for each scheduled time (and trigger) it claims, the leader
// enqueues a task into q, in the claim's own transaction, so that a time is
// enqueued if and only if it is claimed, and once. Any process that
// dequeues from q runs it: DecodeDispatched tells which job and time a task
// is, and the effects a worker writes with the task's Ack (queue.Task.Ack's
// operations) land exactly once per time, whatever workers die on the way
// (the queue hands an unfinished task to another worker when its claim's
// lease ends). q must be on the cluster the scheduler's keeper is on. The
// queue's attempts and backoff replace WithRetries and WithRerun, which are
// refused here; the overlap policy does not apply (times are enqueued as
// they come; the workers decide how many run at once). WithEnqueue sets
// the options of each task.
func (s *Scheduler) AddDispatch(jobName, spec string, q *queue.Queue, opts ...JobOption) error {
	var o jobOptions
	for _, opt := range opts {
		opt(&o)
	}
	d, err := newDispatcher(fmt.Sprintf("job %q", jobName), q, o.enqueue)
	if err != nil {
		return err
	}
	return s.add(jobName, spec, nil, d, opts)
}

// WithEnqueue sets the options each task of a dispatched job is enqueued
// with (AddDispatch): priority, timeout, delay. Not a dedup ID: the claim of
// a time is its dedup.
func WithEnqueue(opts ...queue.EnqueueOption) JobOption {
	return func(j *jobOptions) { j.enqueue = opts }
}

// HandleDispatch registers q as the handler named handler, for jobs defined
// at runtime (Define): their runs are enqueued into q as AddDispatch's are,
// each task with the options enqueue. A definition with WithRetries' or
// WithRerun's fields set is reported as invalid in Status for such a
// handler.
func (s *Scheduler) HandleDispatch(handler string, q *queue.Queue, enqueue ...queue.EnqueueOption) error {
	d, err := newDispatcher(fmt.Sprintf("handler %q", handler), q, enqueue)
	if err != nil {
		return err
	}
	return s.handle(handler, nil, d)
}

func newDispatcher(what string, q *queue.Queue, opts []queue.EnqueueOption) (*dispatcher, error) {
	if q == nil {
		return nil, fmt.Errorf("cron: %s: nil queue", what)
	}
	// Check the queue and the options now, not at the first scheduled time.
	e, err := q.EnqueueTx(context.Background(), nil, opts...)
	if err != nil {
		return nil, fmt.Errorf("cron: %s: %w", what, err)
	}
	if len(e.Cmps) > 0 {
		return nil, fmt.Errorf("cron: %s: a dedup ID is not for dispatched runs: the claim of a time is its dedup", what)
	}
	return &dispatcher{q: q, opts: opts}, nil
}

// checkDispatch refuses options that do not apply to dispatched runs.
func (o jobOptions) checkDispatch(jobName string) error {
	if o.retries != 0 || o.reruns != 0 {
		return fmt.Errorf("cron: job %q: retries and reruns of dispatched runs are the queue's (its attempts), not the scheduler's", jobName)
	}
	return nil
}

// DispatchedRun is a run the leader enqueued for a worker (AddDispatch), as
// the worker reads it from the task's payload.
type DispatchedRun struct {
	Scheduler string    `json:"scheduler"`
	Job       string    `json:"job"`
	Time      time.Time `json:"-"` // the scheduled time; for a trigger, when it was requested
	Token     int64     `json:"token"`
	Trigger   bool      `json:"trigger,omitempty"`
}

// dispatchedRecord is DispatchedRun as a task's payload.
type dispatchedRecord struct {
	DispatchedRun
	Time int64 `json:"time"` // Unix nanoseconds
}

// ErrNotDispatched reports a payload that is not a run a scheduler
// dispatched.
var ErrNotDispatched = errors.New("cron: not a dispatched run")

// DecodeDispatched reads a task's payload as a dispatched run. A payload a
// scheduler did not write is ErrNotDispatched.
func DecodeDispatched(payload []byte) (DispatchedRun, error) {
	var r dispatchedRecord
	if err := codec.Strict(payload, &r); err != nil {
		return DispatchedRun{}, fmt.Errorf("%w: %w", ErrNotDispatched, err)
	}
	if r.Scheduler == "" || validateJob(r.Job) != nil || r.Time <= 0 || r.Token <= 0 {
		return DispatchedRun{}, fmt.Errorf("%w: fields out of range", ErrNotDispatched)
	}
	d := r.DispatchedRun
	d.Time = time.Unix(0, r.Time)
	return d, nil
}

// enqueueOf prepares the task that carries run r of j to the workers.
func (l *leader) enqueueOf(ctx context.Context, d *dispatcher, r Run) (*queue.TxEnqueue, error) {
	b, err := json.Marshal(dispatchedRecord{
		DispatchedRun: DispatchedRun{Scheduler: l.s.name, Job: r.Job, Token: r.Token, Trigger: r.Trigger},
		Time:          r.Time.UnixNano(),
	})
	if err != nil {
		return nil, fmt.Errorf("cron: encode dispatched run: %w", err)
	}
	e, err := d.q.EnqueueTx(ctx, b, d.opts...)
	if err != nil {
		return nil, fmt.Errorf("cron: dispatch %s: %w", r.Job, err)
	}
	return &e, nil
}
