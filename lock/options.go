package lock

import (
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Option configures a Mutex, an RWMutex or a Multi.
type Option func(*options)

type options struct {
	value     string
	lockDelay time.Duration
	maxHold   time.Duration
	tracer    trace.TracerProvider
	meter     metric.MeterProvider
}

// WithValue sets the value stored in the lock's key, shown by Inspect (for
// example a host name and process ID). Default empty.
func WithValue(v string) Option { return func(o *options) { o.value = v } }

// WithLockDelay makes a waiter wait d more before taking the lock when the
// holder before it lost the lock involuntarily (its lease expired or was
// revoked) rather than unlocking, as Chubby and Consul do. It is for
// resources that cannot check fencing tokens: a holder that was paused past
// its lease gets d to notice before the next holder starts. The price is that
// every involuntary handoff takes d longer, and it is only a delay: a pause
// longer than d still overlaps. Fencing is the real protection.
//
// The delay applies when the last keys ahead of a waiter go and the lease of
// any of them is gone with them (a LeaseTimeToLive read per lease tells), so
// a waiter ahead that lost its lease delays the grant too: the waiter cannot
// tell which of the keys that went was the holder's, and delaying is the
// safe reading. A request made
// after the key had already vanished is not delayed: etcd keeps no record of
// why a key went once it is gone. Default 0.
func WithLockDelay(d time.Duration) Option { return func(o *options) { o.lockDelay = d } }

// WithMaxHold bounds every hold to d, even while its process lives and
// renews its lease: after d the hold's context is canceled with a cause
// that errors.Is ErrExpired and ErrLost, and then its key is deleted (a
// fenced delete, as by Unlock), so the next waiter is granted the lock. A
// holder that runs past d without looking at its context is told by its
// fencing token: the next holder's is larger. Unlock before d works as
// always. The bound is timed by the holder's clock, from the grant; a
// holder cut off from etcd loses the hold by its lease first. Default 0:
// unbounded.
func WithMaxHold(d time.Duration) Option { return func(o *options) { o.maxHold = d } }

// WithTracerProvider sets the OpenTelemetry tracer provider for the
// lock.acquire span (default: the global one).
func WithTracerProvider(tp trace.TracerProvider) Option { return func(o *options) { o.tracer = tp } }

// WithMeterProvider sets the OpenTelemetry meter provider for the wait and
// hold duration histograms (default: the global one).
func WithMeterProvider(mp metric.MeterProvider) Option { return func(o *options) { o.meter = mp } }
