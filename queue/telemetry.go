package queue

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/concordkit/concord/internal/acquiretel"
)

const instrumentation = "github.com/concordkit/concord/queue"

// telemetry holds the queue's instruments. With no provider installed they
// are no-ops.
type telemetry struct {
	tracer      trace.Tracer
	attrs       metric.MeasurementOption
	redeliver   metric.Int64Counter
	dead        metric.Int64Counter
	claims      metric.Int64Counter
	waits       metric.Float64Histogram
	holds       metric.Float64Histogram
	reg         metric.Registration
	queueAttr   attribute.KeyValue
	conflictOpt metric.MeasurementOption
	okOpt       metric.MeasurementOption
}

func newTelemetry(q *Queue) *telemetry {
	m := q.o.mp.Meter(instrumentation)
	qa := attribute.String("queue", q.name)
	t := &telemetry{
		tracer:      q.o.tp.Tracer(instrumentation),
		attrs:       metric.WithAttributes(qa),
		queueAttr:   qa,
		conflictOpt: metric.WithAttributes(qa, attribute.Bool("conflict", true)),
		okOpt:       metric.WithAttributes(qa, attribute.Bool("conflict", false)),
	}
	// Instrument errors only come from invalid names, which these are not.
	t.redeliver, _ = m.Int64Counter("concord.queue.redeliveries",
		metric.WithDescription("Tasks handed out again after a worker lost its claim."))
	t.dead, _ = m.Int64Counter("concord.queue.dead_letters",
		metric.WithDescription("Tasks moved to the dead letters by this process."))
	t.claims, _ = m.Int64Counter("concord.queue.claims",
		metric.WithDescription("Claim transactions, by whether another worker was first."))
	t.waits, _ = m.Float64Histogram("concord.queue.wait.duration",
		metric.WithUnit("s"), metric.WithDescription("Time Dequeue waited for a task."))
	t.holds, _ = m.Float64Histogram("concord.queue.hold.duration",
		metric.WithUnit("s"), metric.WithDescription("Time from Dequeue handing a task out to its Ack, Nack or Fail, by outcome."))
	depth, _ := m.Int64ObservableGauge("concord.queue.depth",
		metric.WithDescription("Tasks by state, as this process's consumer view sees them."))
	t.reg, _ = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		ix := q.currentIndex()
		if ix == nil {
			return nil
		}
		ready, delayed, running, ok := ix.depth(time.Now())
		if !ok {
			return nil
		}
		o.ObserveInt64(depth, int64(ready), metric.WithAttributes(qa, attribute.String("state", "ready")))
		o.ObserveInt64(depth, int64(delayed), metric.WithAttributes(qa, attribute.String("state", "delayed")))
		o.ObserveInt64(depth, int64(running), metric.WithAttributes(qa, attribute.String("state", "running")))
		return nil
	}, depth)
	return t
}

func (t *telemetry) close() {
	if t.reg != nil {
		_ = t.reg.Unregister()
	}
}

// startDequeue opens the queue.dequeue span; finish records the outcome.
func (t *telemetry) startDequeue(ctx context.Context) (context.Context, func(*Task, error, time.Duration)) {
	ctx, span := t.tracer.Start(ctx, "queue.dequeue", trace.WithAttributes(t.queueAttr))
	return ctx, func(task *Task, err error, wait time.Duration) {
		outcome := acquiretel.Acquired
		switch {
		case err == nil:
		case errors.Is(err, ErrEmpty):
			outcome = acquiretel.Busy
		case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			outcome = acquiretel.Canceled
		default:
			outcome = acquiretel.Error
		}
		span.SetAttributes(
			attribute.String("queue.outcome", outcome),
			attribute.Float64("queue.wait_ms", float64(wait)/float64(time.Millisecond)),
		)
		if task != nil {
			if task.producer.IsValid() {
				span.AddLink(trace.Link{SpanContext: task.producer})
			}
			span.SetAttributes(
				attribute.String("queue.task_id", task.ID),
				attribute.Int64("queue.token", task.Token()),
				attribute.Int("queue.attempt", task.Attempt),
			)
		}
		if outcome == acquiretel.Error {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
		if task != nil {
			// Set before Dequeue returns the task: nothing else sees it yet.
			task.handedOut = time.Now()
			t.waits.Record(context.WithoutCancel(ctx), wait.Seconds(), t.attrs)
		}
	}
}

// traceOf returns the W3C trace context of ctx's span, to travel with a
// task (nil when ctx has no span).
func traceOf(ctx context.Context) map[string]string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c
}

// producerOf returns the span context a task's trace context names
// (invalid if none, or unreadable: a task is not refused for its trace).
func producerOf(tc map[string]string) trace.SpanContext {
	if len(tc) == 0 {
		return trace.SpanContext{}
	}
	return trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier(tc)))
}

// ProducerSpan returns the span context of the Enqueue that made the task,
// when the producer's context carried a span (invalid otherwise). The
// queue.dequeue span that handed the task out links to it; a worker links
// its own processing span to it the same way (trace.WithLinks), as
// OpenTelemetry's messaging conventions do for a consumer.
func (t *Task) ProducerSpan() trace.SpanContext { return t.producer }

// finished records how long a task was held, from Dequeue to its outcome.
func (t *telemetry) finished(ctx context.Context, task *Task, outcome string) {
	if task.handedOut.IsZero() {
		return
	}
	t.holds.Record(context.WithoutCancel(ctx), time.Since(task.handedOut).Seconds(),
		metric.WithAttributes(t.queueAttr, attribute.String("queue.outcome", outcome)))
}

func (t *telemetry) claimed(ctx context.Context, ok bool) {
	if ok {
		t.claims.Add(context.WithoutCancel(ctx), 1, t.okOpt)
	} else {
		t.claims.Add(context.WithoutCancel(ctx), 1, t.conflictOpt)
	}
}

func (t *telemetry) redelivered(ctx context.Context) {
	t.redeliver.Add(context.WithoutCancel(ctx), 1, t.attrs)
}

func (t *telemetry) deadLettered(ctx context.Context) {
	t.dead.Add(context.WithoutCancel(ctx), 1, t.attrs)
}
