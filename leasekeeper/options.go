package leasekeeper

import (
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// Option configures a Keeper.
type Option func(*options)

type options struct {
	ttl    time.Duration
	margin time.Duration
	logger *slog.Logger
	meter  metric.MeterProvider
}

// DefaultTTL is the lease TTL when WithTTL is not given.
const DefaultTTL = 10 * time.Second

// WithTTL sets the lease TTL, a whole number of seconds (etcd leases have
// second granularity). A longer TTL survives longer outages; a shorter one
// frees a crashed holder's resources sooner. etcd refuses TTLs below
// ceil(1.5 × its election timeout) by raising them; New reports that as an
// error rather than silently holding longer than asked. Default 10 s.
func WithTTL(d time.Duration) Option { return func(o *options) { o.ttl = d } }

// WithMargin sets how long before the safe deadline holdings are told the
// lease is lost: room for timer lateness and scheduling delays between the
// notice and the holder acting on it. Default TTL/10, at least 50 ms.
func WithMargin(d time.Duration) Option { return func(o *options) { o.margin = d } }

// WithLogger sets the logger for state changes (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithMeterProvider sets the OpenTelemetry meter provider (default: the
// global one).
func WithMeterProvider(mp metric.MeterProvider) Option { return func(o *options) { o.meter = mp } }
