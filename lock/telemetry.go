package lock

import (
	"go.opentelemetry.io/otel/attribute"

	"github.com/concordkit/concord/internal/acquiretel"
)

// telemetry holds the instruments of one lock value: the lock.acquire span
// and the concord.lock.wait.duration and concord.lock.hold.duration
// histograms. Outcomes: "acquired", "busy" (TryLock found it held),
// "canceled", "lost" or "error".
type telemetry = acquiretel.Recorder

func newTelemetry(o *options, name, kind string) *telemetry {
	return acquiretel.New(acquiretel.Config{
		Scope:    "github.com/concordkit/concord/lock",
		Prefix:   "lock",
		Attrs:    []attribute.KeyValue{attribute.String("lock.name", name), attribute.String("lock.kind", kind)},
		Busy:     ErrLocked,
		Lost:     ErrLost,
		WaitHelp: "Time from asking for a lock to holding it or giving up.",
		HoldHelp: "Time a lock was held, until unlocked or lost.",
	}, o.tracer, o.meter)
}
