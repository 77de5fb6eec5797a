package queue_test

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

	"github.com/concordkit/concord/queue"
)

func TestTelemetry(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	q := newQueue(t, cli, name, queue.WithTracerProvider(tp), queue.WithMeterProvider(mp), queue.WithMaxAttempts(1), queue.WithRetention(0))
	k1 := newKeeper(t, cli, 5*time.Second)
	k2 := newKeeper(t, cli, 5*time.Second)

	_, err := q.Enqueue(ctx, []byte("a"))
	require.NoError(t, err)
	_, err = q.Enqueue(ctx, []byte("b"), queue.WithDelay(time.Hour))
	require.NoError(t, err)
	task, err := q.Dequeue(ctx, k1)
	require.NoError(t, err)

	// Depth comes from the consumer's view: one running, one delayed.
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	depth := gauge(t, rm, "concord.queue.depth")
	assert.Equal(t, int64(1), depth["running"])
	assert.Equal(t, int64(1), depth["delayed"])
	assert.Equal(t, int64(0), depth["ready"])

	// A lost claim on the last attempt: redelivered, then dead-lettered.
	require.NoError(t, cluster.RevokeLease(ctx, k1.Current().ID()))
	<-task.Context().Done()
	tctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = q.Dequeue(tctx, k2)
	cancel()
	assert.ErrorIs(t, err, context.DeadlineExceeded, "the only ready task went to the dead letters")
	require.NoError(t, reader.Collect(ctx, &rm))
	assert.Equal(t, int64(1), sum(t, rm, "concord.queue.redeliveries"))
	assert.Equal(t, int64(1), sum(t, rm, "concord.queue.dead_letters"))

	ended := spans.Ended()
	require.GreaterOrEqual(t, len(ended), 2)
	first := ended[0]
	assert.Equal(t, "queue.dequeue", first.Name())
	attrs := map[attribute.Key]attribute.Value{}
	for _, kv := range first.Attributes() {
		attrs[kv.Key] = kv.Value
	}
	assert.Equal(t, "acquired", attrs["queue.outcome"].AsString())
	assert.Equal(t, task.Token(), attrs["queue.token"].AsInt64())
	assert.Contains(t, attrs, attribute.Key("queue.wait_ms"))
	last := ended[len(ended)-1]
	for _, kv := range last.Attributes() {
		if kv.Key == "queue.outcome" {
			assert.Equal(t, "canceled", kv.Value.AsString())
		}
	}
	_, err = q.PurgeDead(ctx)
	require.NoError(t, err)
	require.NoError(t, q.Delete(ctx))
}

func gauge(t *testing.T, rm metricdata.ResourceMetrics, name string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			g, ok := m.Data.(metricdata.Gauge[int64])
			require.True(t, ok, "%s is %T", name, m.Data)
			for _, dp := range g.DataPoints {
				st, _ := dp.Attributes.Value("state")
				out[st.AsString()] = dp.Value
			}
		}
	}
	return out
}

func sum(t *testing.T, rm metricdata.ResourceMetrics, name string) int64 {
	t.Helper()
	var total int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			s, ok := m.Data.(metricdata.Sum[int64])
			require.True(t, ok, "%s is %T", name, m.Data)
			for _, dp := range s.DataPoints {
				total += dp.Value
			}
		}
	}
	return total
}

func TestHoldMetric(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	q := newQueue(t, cli, name, queue.WithMeterProvider(mp), queue.WithRetention(0))
	k := newKeeper(t, cli, 5*time.Second)
	for range 2 {
		_, err := q.Enqueue(ctx, []byte("x"))
		require.NoError(t, err)
	}
	a, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	require.NoError(t, a.Ack(ctx))
	require.NoError(t, a.Ack(ctx), "a repeated Ack records nothing more")
	b, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	require.NoError(t, b.Fail(ctx, "no"))

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	got := map[string]uint64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "concord.queue.hold.duration" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
				v, _ := dp.Attributes.Value("queue.outcome")
				got[v.AsString()] += dp.Count
			}
		}
	}
	assert.Equal(t, map[string]uint64{"ack": 1, "fail": 1}, got)
	_, err = q.PurgeDead(ctx)
	require.NoError(t, err)
	require.NoError(t, q.Delete(ctx))
}

// The producer's trace context travels with the task: the consumer's
// queue.dequeue span links to the span that enqueued it, and the Task
// names it for the worker's own spans; EnqueueTx carries it too.
func TestTracePropagation(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	producer := newQueue(t, cli, name)
	consumer := newQueue(t, cli, name, queue.WithTracerProvider(tp))
	k := newKeeper(t, cli, 5*time.Second)

	pctx, produce := tp.Tracer("test").Start(ctx, "produce")
	id, err := producer.Enqueue(pctx, []byte("traced"))
	require.NoError(t, err)
	e, err := producer.EnqueueTx(pctx, []byte("traced in a transaction"))
	require.NoError(t, err)
	_, err = cli.Txn(ctx).Then(e.Ops...).Commit()
	require.NoError(t, err)
	produce.End()
	untraced, err := producer.Enqueue(ctx, []byte("untraced"))
	require.NoError(t, err)

	want := produce.SpanContext()
	links := map[string][]sdktrace.Link{}
	for range 3 {
		task, err := consumer.Dequeue(ctx, k)
		require.NoError(t, err)
		if task.ID == untraced {
			assert.False(t, task.ProducerSpan().IsValid())
		} else {
			assert.Equal(t, want.TraceID(), task.ProducerSpan().TraceID(), task.ID)
			assert.Equal(t, want.SpanID(), task.ProducerSpan().SpanID(), task.ID)
		}
		require.NoError(t, task.Ack(ctx))
		for _, s := range spans.Ended() {
			if s.Name() == "queue.dequeue" {
				for _, a := range s.Attributes() {
					if a.Key == "queue.task_id" && a.Value.AsString() == task.ID {
						links[task.ID] = s.Links()
					}
				}
			}
		}
	}
	for _, traced := range []string{id, e.ID} {
		require.Len(t, links[traced], 1, traced)
		assert.Equal(t, want.SpanID(), links[traced][0].SpanContext.SpanID())
		assert.Equal(t, want.TraceID(), links[traced][0].SpanContext.TraceID())
	}
	assert.Empty(t, links[untraced])
}
