package semaphore

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

const instrumentation = "github.com/concordkit/concord/semaphore"

// telemetry holds the instruments of one semaphore. With no provider
// installed the global ones are no-ops and cost a few nanoseconds.
type telemetry struct {
	tracer trace.Tracer
	wait   metric.Float64Histogram
	hold   metric.Float64Histogram
	attrs  attribute.Set
}

func newTelemetry(o *options, name string) *telemetry {
	tp, mp := o.tracer, o.meter
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(instrumentation)
	// Errors from instrument creation only report invalid names; the
	// returned instruments are usable no-ops either way.
	wait, _ := m.Float64Histogram("concord.semaphore.wait.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from asking for permits to holding them or giving up."))
	hold, _ := m.Float64Histogram("concord.semaphore.hold.duration", metric.WithUnit("s"),
		metric.WithDescription("Time permits were held, until released or lost."))
	return &telemetry{
		tracer: tp.Tracer(instrumentation),
		wait:   wait,
		hold:   hold,
		attrs:  attribute.NewSet(attribute.String("semaphore.name", name)),
	}
}

// span is one acquisition in progress.
type span struct {
	t     *telemetry
	sp    trace.Span
	start time.Time
}

func (t *telemetry) startAcquire(ctx context.Context, try bool) (context.Context, *span) {
	ctx, sp := t.tracer.Start(ctx, "semaphore.acquire", trace.WithAttributes(t.attrs.ToSlice()...),
		trace.WithAttributes(attribute.Bool("semaphore.try", try)))
	return ctx, &span{t: t, sp: sp, start: time.Now()}
}

// end records the outcome of an acquisition: "acquired", "unavailable"
// (TryAcquire found no permits), "canceled", "lost" or "error".
func (s *span) end(ctx context.Context, token int64, err error) {
	waited := time.Since(s.start)
	outcome := "acquired"
	switch {
	case err == nil:
	case errors.Is(err, ErrNoPermits):
		outcome = "unavailable"
	case errors.Is(err, ErrLost):
		outcome = "lost"
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		outcome = "canceled"
	default:
		outcome = "error"
	}
	s.sp.SetAttributes(
		attribute.Float64("semaphore.wait_ms", float64(waited)/float64(time.Millisecond)),
		attribute.String("semaphore.outcome", outcome))
	if err == nil {
		s.sp.SetAttributes(attribute.Int64("semaphore.token", token))
	} else if outcome == "error" || outcome == "lost" {
		s.sp.RecordError(err)
		s.sp.SetStatus(codes.Error, err.Error())
	}
	s.sp.End()
	s.t.wait.Record(context.WithoutCancel(ctx), waited.Seconds(),
		metric.WithAttributeSet(s.t.attrs), metric.WithAttributes(attribute.String("semaphore.outcome", outcome)))
}

func (t *telemetry) held(d time.Duration) {
	t.hold.Record(context.Background(), d.Seconds(), metric.WithAttributeSet(t.attrs))
}
