package election_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/testcluster"
)

func nextLeader(t *testing.T, ch <-chan election.Leader, d time.Duration) election.Leader {
	t.Helper()
	select {
	case l, ok := <-ch:
		require.True(t, ok, "observe channel closed")
		return l
	case <-time.After(d):
		t.Fatalf("no leader change within %v", d)
		return election.Leader{}
	}
}

func TestObserveEveryChange(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	a := election.New(newProcess(t, cluster, 2*time.Second).k, name)
	b := election.New(newProcess(t, cluster, 2*time.Second).k, name)

	octx, cancel := context.WithCancel(ctx)
	ch, errf := a.Observe(octx)
	l := nextLeader(t, ch, 5*time.Second)
	assert.False(t, l.Exists(), "first state: no leader")
	require.NoError(t, errf())

	ta, err := a.Campaign(ctx, "A")
	require.NoError(t, err)
	bch := async(func() (*election.Term, error) { return b.Campaign(ctx, "B") })
	waitCount(t, cluster, prefixOf(name), 2, 5*time.Second)
	require.NoError(t, ta.Proclaim(ctx, "A2"))
	require.NoError(t, ta.Resign(ctx))
	tb := recv(t, bch, 5*time.Second)
	require.NoError(t, tb.err)
	require.NoError(t, tb.v.Resign(ctx))

	// Read only now: every change was queued, none dropped or reordered.
	want := []struct {
		value string
		token int64
	}{{"A", ta.Token()}, {"A2", ta.Token()}, {"B", tb.v.Token()}, {"", 0}}
	prev := l.Rev
	for _, w := range want {
		got := nextLeader(t, ch, 5*time.Second)
		assert.Equal(t, w.value, got.Value)
		assert.Equal(t, w.token, got.Token)
		assert.Greater(t, got.Rev, prev, "revisions increase")
		prev = got.Rev
	}
	cancel()
	select {
	case _, ok := <-ch:
		assert.False(t, ok, "a state after the last change")
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after ctx ended")
	}
	assert.ErrorIs(t, errf(), context.Canceled)
}

// TestObserveSurvivesRestartAndCompaction: the observer's only member is
// stopped; leaders change and the history is compacted meanwhile; after the
// restart the observer reports the current state, never an older one.
func TestObserveSurvivesRestartAndCompaction(t *testing.T) {
	c := testcluster.New(t)
	name := t.Name()
	assertNoKeys(t, c, name)
	ctx := ctxT(t, 60*time.Second)
	obs := newProcess(t, c, 2*time.Second, testcluster.To(0))
	a := election.New(newProcess(t, c, 2*time.Second, testcluster.To(1, 2)).k, name)
	b := election.New(newProcess(t, c, 2*time.Second, testcluster.To(1, 2)).k, name)

	ch, errf := election.New(obs.k, name).Observe(ctx)
	require.False(t, nextLeader(t, ch, 5*time.Second).Exists())
	ta, err := a.Campaign(ctx, "A")
	require.NoError(t, err)
	l := nextLeader(t, ch, 5*time.Second)
	require.Equal(t, ta.Token(), l.Token)

	require.NoError(t, c.Stop(0))
	require.NoError(t, ta.Resign(ctx))
	tb, err := b.Campaign(ctx, "B")
	require.NoError(t, err)
	require.NoError(t, tb.Proclaim(ctx, "B2"))
	_, err = c.Compact(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Restart(ctx, 0))

	got := nextLeader(t, ch, 15*time.Second)
	assert.Greater(t, got.Rev, l.Rev)
	assert.Equal(t, tb.Token(), got.Token, "after compaction the current leader is reported")
	assert.Equal(t, "B2", got.Value)
	require.NoError(t, tb.Resign(ctx))
	got = nextLeader(t, ch, 5*time.Second)
	assert.False(t, got.Exists())
	require.NoError(t, errf())
}

// TestObserveResumesWithoutSkipping: the observer's member restarts while
// nothing is compacted: every change made meanwhile is delivered in order.
func TestObserveResumesWithoutSkipping(t *testing.T) {
	c := testcluster.New(t)
	name := t.Name()
	assertNoKeys(t, c, name)
	ctx := ctxT(t, 60*time.Second)
	obs := newProcess(t, c, 2*time.Second, testcluster.To(0))
	a := election.New(newProcess(t, c, 2*time.Second, testcluster.To(1, 2)).k, name)

	ch, _ := election.New(obs.k, name).Observe(ctx)
	require.False(t, nextLeader(t, ch, 5*time.Second).Exists())
	require.NoError(t, c.Stop(0))
	var tokens []int64
	for range 3 {
		ta, err := a.Campaign(ctx, "A")
		require.NoError(t, err)
		tokens = append(tokens, ta.Token())
		require.NoError(t, ta.Resign(ctx))
	}
	require.NoError(t, c.Restart(ctx, 0))
	for _, tok := range tokens {
		assert.Equal(t, tok, nextLeader(t, ch, 15*time.Second).Token)
		assert.False(t, nextLeader(t, ch, 5*time.Second).Exists())
	}
}
