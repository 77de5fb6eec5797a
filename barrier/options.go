package barrier

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

// Option configures a Barrier, DoubleBarrier or Latch.
type Option func(*options)

type options struct {
	tp trace.TracerProvider
	mp metric.MeterProvider
}

// WithTracerProvider sets the tracer provider for barrier.wait spans
// (default: the global one).
func WithTracerProvider(tp trace.TracerProvider) Option { return func(o *options) { o.tp = tp } }

// WithMeterProvider sets the meter provider (default: the global one).
func WithMeterProvider(mp metric.MeterProvider) Option { return func(o *options) { o.mp = mp } }

// telemetry is what every barrier type records.
type telemetry struct {
	tracer trace.Tracer
	waits  metric.Float64Histogram
}

func newTelemetry(opts []Option) telemetry {
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.tp == nil {
		o.tp = otel.GetTracerProvider()
	}
	if o.mp == nil {
		o.mp = otel.GetMeterProvider()
	}
	const scope = "github.com/concordkit/concord/barrier"
	h, _ := o.mp.Meter(scope).Float64Histogram("concord.barrier.wait.duration", metric.WithUnit("s"),
		metric.WithDescription("Time spent waiting on a barrier, double barrier or latch, by kind and outcome."))
	return telemetry{tracer: o.tp.Tracer(scope), waits: h}
}

// span starts a barrier.wait span; end records the wait time and outcome.
func (tm telemetry) span(ctx context.Context, kind, name string) (context.Context, func(token int64, err error)) {
	start := time.Now()
	ctx, sp := tm.tracer.Start(ctx, "barrier.wait", trace.WithAttributes(
		attribute.String("barrier.kind", kind), attribute.String("barrier.name", name)))
	return ctx, func(token int64, err error) {
		ms := float64(time.Since(start)) / float64(time.Millisecond)
		out := "ok"
		switch {
		case err == nil:
		case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			out = "canceled"
		case errors.Is(err, ErrLost):
			out = "lost"
		default:
			out = "error"
		}
		sp.SetAttributes(attribute.Float64("barrier.wait_ms", ms), attribute.String("barrier.outcome", out))
		if token != 0 {
			sp.SetAttributes(attribute.Int64("barrier.token", token))
		}
		if err != nil {
			sp.RecordError(err)
			sp.SetStatus(codes.Error, err.Error())
		}
		sp.End()
		tm.waits.Record(context.WithoutCancel(ctx), ms/1000, metric.WithAttributes(
			attribute.String("barrier.kind", kind), attribute.String("barrier.outcome", out)))
	}
}
