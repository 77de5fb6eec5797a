package semaphore

import (
	"go.opentelemetry.io/otel/attribute"

	"github.com/concordkit/concord/internal/acquiretel"
)

// telemetry holds the instruments of one semaphore: the semaphore.acquire
// span and the concord.semaphore.wait.duration and
// concord.semaphore.hold.duration histograms. Outcomes: "acquired",
// "busy" (TryAcquire found no permits), "canceled", "lost" or "error".
type telemetry = acquiretel.Recorder

func newTelemetry(o *options, name string) *telemetry {
	return acquiretel.New(acquiretel.Config{
		Scope:    "github.com/concordkit/concord/semaphore",
		Prefix:   "semaphore",
		Attrs:    []attribute.KeyValue{attribute.String("semaphore.name", name)},
		Busy:     ErrNoPermits,
		Lost:     ErrLost,
		WaitHelp: "Time from asking for permits to holding them or giving up.",
		HoldHelp: "Time permits were held, until released or lost.",
	}, o.tracer, o.meter)
}
