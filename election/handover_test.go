package election_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/internal/names"
)

// Handover to the newest of three waiting candidates elects it in one
// revision (observers see the leadership go from A straight to D), and the
// two passed over campaign on, at the back, without an error: they lead
// after D. No marker or key is left.
func TestHandoverToNewest(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	es := map[string]*election.Election{}
	for _, v := range []string{"A", "B", "C", "D"} {
		es[v] = election.New(newProcess(t, cluster, 2*time.Second).k, name)
	}
	ta, err := es["A"].Campaign(ctx, "A")
	require.NoError(t, err)
	chs := map[string]<-chan result[*election.Term]{}
	for i, v := range []string{"B", "C", "D"} {
		chs[v] = async(func() (*election.Term, error) { return es[v].Campaign(ctx, v) })
		waitCount(t, cluster, prefixOf(name), int64(i+2), 5*time.Second)
	}
	obs, stopObs := election.ObserveOf(ctx, cluster.Client(), name)
	defer func() { _ = stopObs() }()
	first := <-obs
	require.Equal(t, "A", first.Value)

	var offered []string
	require.NoError(t, ta.Handover(ctx, func(w []election.Leader) string {
		for _, c := range w {
			offered = append(offered, c.Value)
		}
		return election.Newest(w)
	}))
	assert.Equal(t, []string{"B", "C", "D"}, offered)
	assert.ErrorIs(t, context.Cause(ta.Context()), election.ErrResigned)
	r := recv(t, chs["D"], 5*time.Second)
	require.NoError(t, r.err)
	td := r.v
	assert.Greater(t, td.Token(), ta.Token())
	next := <-obs
	assert.Equal(t, "D", next.Value, "a passed-over candidate led in between")
	assert.Equal(t, td.Token(), next.Token)
	notYet(t, chs["B"], "B's campaign")
	notYet(t, chs["C"], "C's campaign")
	waitCount(t, cluster, prefixOf(name), 3, 5*time.Second) // B and C queued again
	markers, err := cluster.Admin().Get(ctx, names.Prefix(name, "handover"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	assert.Zero(t, markers.Count, "markers left after the passed-over candidates queued again")

	// B and C lead after D, in the order they queued again, each with a
	// new token.
	require.NoError(t, td.Resign(ctx))
	led := make(chan result[*election.Term], 2)
	for _, v := range []string{"B", "C"} {
		go func() { led <- <-chs[v] }()
	}
	for range 2 {
		r := recv(t, led, 5*time.Second)
		require.NoError(t, r.err)
		assert.Greater(t, r.v.Token(), td.Token(), "a passed-over candidate led with its old token")
		require.NoError(t, r.v.Resign(ctx))
	}
}

// A choice of nobody, or of the next in line, is a plain resignation; the
// chosen candidate leaving before the transaction makes Handover read again
// and choose among those left.
func TestHandoverFallbacks(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	a := election.New(newProcess(t, cluster, 2*time.Second).k, name)
	b := election.New(newProcess(t, cluster, 2*time.Second).k, name)
	c := election.New(newProcess(t, cluster, 2*time.Second).k, name)

	ta, err := a.Campaign(ctx, "A")
	require.NoError(t, err)
	require.NoError(t, ta.Handover(ctx, func([]election.Leader) string { return "" }), "no candidate waiting")
	require.NoError(t, ta.Handover(ctx, election.Newest), "handover after the end is a no-op")
	require.EqualError(t, ta.Handover(ctx, nil), "election: handover: nil choose")

	ta, err = a.Campaign(ctx, "A")
	require.NoError(t, err)
	bch := async(func() (*election.Term, error) { return b.Campaign(ctx, "B") })
	waitCount(t, cluster, prefixOf(name), 2, 5*time.Second)
	cctx, cancelC := context.WithCancel(ctx)
	cch := async(func() (*election.Term, error) { return c.Campaign(cctx, "C") })
	waitCount(t, cluster, prefixOf(name), 3, 5*time.Second)

	calls := 0
	require.NoError(t, ta.Handover(ctx, func(w []election.Leader) string {
		calls++
		if calls == 1 {
			// C gives up between the read and the transaction.
			cancelC()
			r := recv(t, cch, 5*time.Second)
			require.Error(t, r.err)
			waitCount(t, cluster, prefixOf(name), 2, 5*time.Second)
		}
		return election.Newest(w)
	}))
	assert.Equal(t, 2, calls, "Handover did not read again after its choice left")
	r := recv(t, bch, 5*time.Second)
	require.NoError(t, r.err)
	require.NoError(t, r.v.Resign(ctx))
}

// Run with WithHandover hands leadership to the newest candidate when its
// ctx ends.
func TestRunHandsOver(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	a := election.New(newProcess(t, cluster, 2*time.Second).k, name, election.WithHandover(election.Newest))
	b := election.New(newProcess(t, cluster, 2*time.Second).k, name)
	c := election.New(newProcess(t, cluster, 2*time.Second).k, name)

	rctx, stop := context.WithCancel(ctx)
	led := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- a.Run(rctx, "A", func(ctx context.Context, _ *election.Term) error {
			close(led)
			<-ctx.Done()
			return nil
		})
	}()
	<-led
	bch := async(func() (*election.Term, error) { return b.Campaign(ctx, "B") })
	waitCount(t, cluster, prefixOf(name), 2, 5*time.Second)
	cch := async(func() (*election.Term, error) { return c.Campaign(ctx, "C") })
	waitCount(t, cluster, prefixOf(name), 3, 5*time.Second)
	stop()
	require.ErrorIs(t, <-done, context.Canceled)
	r := recv(t, cch, 5*time.Second)
	require.NoError(t, r.err, "the newest candidate was not handed the leadership")
	notYet(t, bch, "B's campaign")
	require.NoError(t, r.v.Resign(ctx))
	r = recv(t, bch, 5*time.Second)
	require.NoError(t, r.err)
	require.NoError(t, r.v.Resign(ctx))
}

// A Handover that would pass over more candidates than one transaction may
// hold (etcd's --max-txn-ops, 128 by default, with two operations each)
// resigns instead: the next in line leads, and nothing fails.
func TestHandoverTooFarBehindResigns(t *testing.T) {
	const waiting = 65 // the newest is 64 places behind the next in line
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 60*time.Second)
	k := newProcess(t, cluster, 2*time.Second).k
	lead, err := election.New(k, name).Campaign(ctx, "leader")
	require.NoError(t, err)
	chs := make([]<-chan result[*election.Term], waiting)
	for i := range chs {
		e := election.New(k, name)
		chs[i] = async(func() (*election.Term, error) { return e.Campaign(ctx, fmt.Sprint(i)) })
		waitCount(t, cluster, prefixOf(name), int64(i+2), 5*time.Second)
	}
	require.NoError(t, lead.Handover(ctx, election.Newest))
	for i, ch := range chs {
		r := recv(t, ch, 5*time.Second)
		require.NoError(t, r.err, "candidate %d", i)
		require.Equal(t, fmt.Sprint(i), r.v.Value(), "candidates led out of turn")
		require.NoError(t, r.v.Resign(ctx))
	}
}
