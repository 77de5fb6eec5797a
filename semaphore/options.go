package semaphore

import (
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Option configures a Semaphore.
type Option func(*options)

type options struct {
	value   string
	maxHold time.Duration
	tracer  trace.TracerProvider
	meter   metric.MeterProvider
}

// WithValue sets the value stored in each permit's key, shown by Inspect.
func WithValue(v string) Option { return func(o *options) { o.value = v } }

// WithMaxHold bounds every permit to d, even while its process lives and
// renews its lease: after d the permit's context is canceled with a cause
// that errors.Is ErrExpired and ErrLost, and then its key is deleted (a
// fenced delete, as by Release), so waiters may be granted its permits.
// Release before d works as always. The bound is timed by the holder's
// clock, from the grant. Default 0: unbounded.
func WithMaxHold(d time.Duration) Option { return func(o *options) { o.maxHold = d } }

// WithTracerProvider sets the OpenTelemetry tracer provider for the
// semaphore.acquire span (default: the global one).
func WithTracerProvider(tp trace.TracerProvider) Option { return func(o *options) { o.tracer = tp } }

// WithMeterProvider sets the OpenTelemetry meter provider for the wait and
// hold duration histograms (default: the global one).
func WithMeterProvider(mp metric.MeterProvider) Option { return func(o *options) { o.meter = mp } }
