package semaphore

import (
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Option configures a Semaphore.
type Option func(*options)

type options struct {
	value  string
	tracer trace.TracerProvider
	meter  metric.MeterProvider
}

// WithValue sets the value stored in each permit's key, shown by Inspect.
func WithValue(v string) Option { return func(o *options) { o.value = v } }

// WithTracerProvider sets the OpenTelemetry tracer provider for the
// semaphore.acquire span (default: the global one).
func WithTracerProvider(tp trace.TracerProvider) Option { return func(o *options) { o.tracer = tp } }

// WithMeterProvider sets the OpenTelemetry meter provider for the wait and
// hold duration histograms (default: the global one).
func WithMeterProvider(mp metric.MeterProvider) Option { return func(o *options) { o.meter = mp } }
