package pubsub

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

const scope = "github.com/concordkit/concord/pubsub"

// metrics are a Hub's instruments. With no meter provider installed the
// global one is a no-op and recording costs next to nothing.
type metrics struct {
	gaps metric.Int64Counter
	lag  metric.Float64Histogram
}

func newMetrics(mp metric.MeterProvider) *metrics {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(scope)
	// Instrument constructors return a usable no-op instrument alongside any
	// error, so a bad provider never stops the Hub.
	gaps, _ := m.Int64Counter("concord.pubsub.gaps",
		metric.WithDescription("Gap notices delivered to subscriptions: messages a subscription did not get, by reason"),
		metric.WithUnit("{gap}"))
	lag, _ := m.Float64Histogram("concord.pubsub.delivery_lag",
		metric.WithDescription("Time from publish (publisher's clock) to delivery by Subscription.Next"),
		metric.WithUnit("s"))
	return &metrics{gaps: gaps, lag: lag}
}

var (
	topicKey  = attribute.Key("pubsub.topic")
	reasonKey = attribute.Key("pubsub.gap.reason")
)

// topicAttrs is built once per subscription, so that recording a delivery
// does not allocate.
func topicAttrs(topic string) metric.MeasurementOption {
	return metric.WithAttributeSet(attribute.NewSet(topicKey.String(topic)))
}

// delivered records an event handed to a reader.
func (m *metrics) delivered(ctx context.Context, attrs metric.MeasurementOption, topic string, ev Event) {
	if ev.Message != nil {
		m.lag.Record(ctx, time.Since(ev.Message.Time).Seconds(), attrs)
		return
	}
	m.gaps.Add(ctx, 1, metric.WithAttributes(topicKey.String(topic), reasonKey.String(string(ev.Gap.Reason))))
}
