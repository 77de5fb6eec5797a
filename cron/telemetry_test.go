package cron_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/concordkit/concord/cron"
)

func TestTelemetry(t *testing.T) {
	name := t.Name()
	cleanupName(t, cluster, name)
	ctx := ctxT(t, 20*time.Second)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	runs := make(chan cron.Run, 4)
	s := cron.New(newProcess(t, cluster, 2*time.Second).k, name, cron.WithTracerProvider(tp), cron.WithMeterProvider(mp))
	require.NoError(t, s.Add("j", everySecond, func(_ context.Context, r cron.Run) error {
		runs <- r
		return nil
	}))
	stop := runScheduler(t, s)
	r := recvT(t, runs, 5*time.Second, "run")
	require.ErrorIs(t, stop(), context.Canceled)

	var run, campaign bool
	for _, sp := range exp.GetSpans() {
		a := map[attribute.Key]attribute.Value{}
		for _, kv := range sp.Attributes {
			a[kv.Key] = kv.Value
		}
		switch sp.Name {
		case "election.campaign":
			campaign = true
		case "cron.run":
			if a["cron.time"].AsString() == r.Time.Format(time.RFC3339Nano) {
				run = true
				assert.Equal(t, "ok", a["cron.outcome"].AsString())
				assert.Equal(t, r.Token, a["cron.token"].AsInt64())
			}
		}
	}
	assert.True(t, run, "no cron.run span for the run")
	assert.True(t, campaign, "no election.campaign span: the scheduler's election should use the same provider")

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	found := map[string]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			found[m.Name] = true
		}
	}
	for _, n := range []string{"concord.cron.runs", "concord.cron.fire_lag", "concord.election.leadership_changes"} {
		assert.True(t, found[n], "metric %s missing: %v", n, found)
	}
}
