package election_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/leasekeeper"
)

func prefixOf(name string) string { return names.Prefix(name, "election") }

func TestBadInput(t *testing.T) {
	p := newProcess(t, cluster, 2*time.Second)
	ctx := ctxT(t, 10*time.Second)
	for _, name := range []string{"", "a/.x", "bad/", "a//b"} {
		e := election.New(p.k, name)
		_, err := e.Campaign(ctx, "v")
		require.Error(t, err, name)
		assert.True(t, strings.HasPrefix(err.Error(), "election: "), err.Error())
		_, err = e.Leader(ctx)
		require.Error(t, err)
		ch, errf := e.Observe(ctx)
		_, ok := <-ch
		assert.False(t, ok)
		assert.Error(t, errf())
	}
	name := t.Name()
	assertNoKeys(t, cluster, name)
	_, err := election.New(p.k, name).Campaign(ctx, strings.Repeat("x", 2<<20))
	require.ErrorContains(t, err, "election: value of")
	assert.Error(t, election.New(nil, name).Run(ctx, "v", func(context.Context, *election.Term) error { return nil }))
}

func TestCampaignResignHandoff(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	a := election.New(newProcess(t, cluster, 2*time.Second).k, name)
	b := election.New(newProcess(t, cluster, 2*time.Second).k, name)

	_, err := a.Leader(ctx)
	require.ErrorIs(t, err, election.ErrNoLeader)

	ta, err := a.Campaign(ctx, "A")
	require.NoError(t, err)
	l, err := b.Leader(ctx)
	require.NoError(t, err)
	assert.Equal(t, "A", l.Value)
	assert.Equal(t, ta.Token(), l.Token)
	assert.Equal(t, a.Key(), l.Key)

	bch := async(func() (*election.Term, error) { return b.Campaign(ctx, "B") })
	waitCount(t, cluster, prefixOf(name), 2, 5*time.Second)
	notYet(t, bch, "B's campaign")

	cands, err := election.Candidates(ctx, cluster.Client(), name)
	require.NoError(t, err)
	require.Len(t, cands, 2)
	assert.Equal(t, []string{"A", "B"}, []string{cands[0].Value, cands[1].Value})
	assert.Equal(t, ta.Token(), cands[0].Token)

	require.NoError(t, ta.Proclaim(ctx, "A2"))
	l, err = election.LeaderOf(ctx, cluster.Client(), name)
	require.NoError(t, err)
	assert.Equal(t, "A2", l.Value)
	assert.Equal(t, ta.Token(), l.Token, "proclaim keeps the token")

	require.NoError(t, ta.Resign(ctx))
	require.NoError(t, ta.Resign(ctx), "resign is idempotent")
	assert.ErrorIs(t, context.Cause(ta.Context()), election.ErrResigned)
	assert.ErrorIs(t, ta.Proclaim(ctx, "late"), election.ErrNotLeader)

	r := recv(t, bch, 5*time.Second)
	require.NoError(t, r.err)
	tb := r.v
	assert.Greater(t, tb.Token(), ta.Token(), "tokens increase")
	assert.NoError(t, tb.Context().Err())

	// A guarded write of the old term fails; the new one's succeeds.
	fence := name + "/fenced"
	resp, err := cluster.Client().Txn(ctx).If(ta.Guard()...).Then(clientv3.OpPut(fence, "A")).Commit()
	require.NoError(t, err)
	assert.False(t, resp.Succeeded)
	resp, err = cluster.Client().Txn(ctx).If(tb.Guard()...).Then(clientv3.OpPut(fence, "B")).Commit()
	require.NoError(t, err)
	assert.True(t, resp.Succeeded)
	_, err = cluster.Client().Delete(ctx, fence)
	require.NoError(t, err)

	// A campaigns again on the same Election (its key is reused).
	ach := async(func() (*election.Term, error) { return a.Campaign(ctx, "A3") })
	waitCount(t, cluster, prefixOf(name), 2, 5*time.Second)
	require.NoError(t, tb.Resign(ctx))
	r = recv(t, ach, 5*time.Second)
	require.NoError(t, r.err)
	assert.Greater(t, r.v.Token(), tb.Token())
	require.NoError(t, r.v.Resign(ctx))
	_, err = a.Leader(ctx)
	require.ErrorIs(t, err, election.ErrNoLeader)
}

// TestRevokedWaiterGetsNoTerm is the scenario in which etcd's
// concurrency.Election.Campaign returns nil: candidate B's lease is revoked
// while it waits, then leader A resigns. B must get an error, never a term.
func TestRevokedWaiterGetsNoTerm(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	pa, pb := newProcess(t, cluster, 2*time.Second), newProcess(t, cluster, 2*time.Second)
	a, b := election.New(pa.k, name), election.New(pb.k, name)

	ta, err := a.Campaign(ctx, "A")
	require.NoError(t, err)
	bch := async(func() (*election.Term, error) { return b.Campaign(ctx, "B") })
	waitCount(t, cluster, prefixOf(name), 2, 5*time.Second)

	require.NoError(t, cluster.RevokeLease(ctx, pb.k.Current().ID()))
	require.NoError(t, ta.Resign(ctx))

	r := recv(t, bch, 10*time.Second)
	require.Error(t, r.err, "B was handed a term on a revoked lease")
	assert.Nil(t, r.v)
	assert.ErrorIs(t, r.err, election.ErrLost)
	_, err = a.Leader(ctx)
	assert.ErrorIs(t, err, election.ErrNoLeader)

	// B's keeper grants a new lease; B can campaign again.
	tb, err := b.Campaign(ctx, "B")
	require.NoError(t, err)
	assert.NotEqual(t, pb.k.Current().ID(), 0)
	require.NoError(t, tb.Resign(ctx))
}

// TestCutLeaderLosesBeforeNextWins: the leader's client is cut off, its lease
// expires on the server and B is elected. A must know it lost (its term's
// context canceled with ErrLost) before B's Campaign returns, and A's fenced
// writes must fail.
func TestCutLeaderLosesBeforeNextWins(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	pa, pb := newProcess(t, cluster, time.Second), newProcess(t, cluster, time.Second)
	a, b := election.New(pa.k, name), election.New(pb.k, name)

	ta, err := a.Campaign(ctx, "A")
	require.NoError(t, err)
	bch := async(func() (*election.Term, error) { return b.Campaign(ctx, "B") })
	waitCount(t, cluster, prefixOf(name), 2, 5*time.Second)

	lostAt := make(chan time.Time, 1)
	context.AfterFunc(ta.Context(), func() { lostAt <- time.Now() })
	cutAt := time.Now()
	cluster.CutClient(pa.cli)

	r := recv(t, bch, 10*time.Second)
	require.NoError(t, r.err)
	tb := r.v
	var aLost time.Time
	select {
	case aLost = <-lostAt:
	default:
		t.Fatalf("B elected %v after the cut while A still believed it led", r.at.Sub(cutAt))
	}
	assert.True(t, aLost.Before(r.at), "A lost at %v, B won at %v", aLost.Sub(cutAt), r.at.Sub(cutAt))
	assert.ErrorIs(t, context.Cause(ta.Context()), election.ErrLost)
	t.Logf("A lost %v after the cut, B elected %v after it", aLost.Sub(cutAt), r.at.Sub(cutAt))

	cluster.RestoreClient(pa.cli)
	resp, err := cluster.Client().Txn(ctx).If(ta.Guard()...).Then(clientv3.OpPut(name+"/x", "A")).Commit()
	require.NoError(t, err)
	assert.False(t, resp.Succeeded, "the old term's guard still holds")
	require.NoError(t, ta.Resign(ctx))
	require.NoError(t, tb.Resign(ctx))
}

func TestCanceledCampaignLeavesNoKey(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	a := election.New(newProcess(t, cluster, 2*time.Second).k, name)
	b := election.New(newProcess(t, cluster, 2*time.Second).k, name)
	ta, err := a.Campaign(ctx, "A")
	require.NoError(t, err)

	cctx, cancel := context.WithCancel(ctx)
	bch := async(func() (*election.Term, error) { return b.Campaign(cctx, "B") })
	waitCount(t, cluster, prefixOf(name), 2, 5*time.Second)
	cancel()
	r := recv(t, bch, 5*time.Second)
	require.ErrorIs(t, r.err, context.Canceled)
	waitCount(t, cluster, prefixOf(name), 1, 5*time.Second)
	require.NoError(t, ta.Resign(ctx))
}

func TestSameElectionQueuesLocally(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	a := election.New(newProcess(t, cluster, 2*time.Second).k, name)
	t1, err := a.Campaign(ctx, "1")
	require.NoError(t, err)
	ch := async(func() (*election.Term, error) { return a.Campaign(ctx, "2") })
	shortCtx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = a.Campaign(shortCtx, "3")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	notYet(t, ch, "second campaign on one Election")
	require.NoError(t, t1.Resign(ctx))
	r := recv(t, ch, 5*time.Second)
	require.NoError(t, r.err)
	assert.Greater(t, r.v.Token(), t1.Token())
	assert.Equal(t, "2", r.v.Value())
	require.NoError(t, r.v.Resign(ctx))
}

func TestKeyDeletedEndsTerm(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	a := election.New(newProcess(t, cluster, 2*time.Second).k, name)
	ta, err := a.Campaign(ctx, "A")
	require.NoError(t, err)
	_, err = cluster.Admin().Delete(ctx, a.Key())
	require.NoError(t, err)
	select {
	case <-ta.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("term not ended after its key was deleted")
	}
	assert.ErrorIs(t, ta.Err(), election.ErrLost)
	assert.ErrorIs(t, ta.Proclaim(ctx, "x"), election.ErrLost)
	require.NoError(t, ta.Resign(ctx))
}

func TestRunRecampaignsAfterLoss(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	p := newProcess(t, cluster, 2*time.Second)
	e := election.New(p.k, name)

	type term struct {
		token int64
		lease clientv3.LeaseID
	}
	terms := make(chan term, 4)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := async(func() (struct{}, error) {
		return struct{}{}, e.Run(rctx, "R", func(fctx context.Context, t *election.Term) error {
			terms <- term{t.Token(), t.Lease()}
			<-fctx.Done()
			return context.Cause(fctx)
		})
	})
	first := recv(t, asyncRecv(terms), 5*time.Second).v
	require.NoError(t, cluster.RevokeLease(ctx, first.lease))
	second := recv(t, asyncRecv(terms), 10*time.Second).v
	assert.Greater(t, second.token, first.token)
	assert.NotEqual(t, first.lease, second.lease)
	cancel()
	r := recv(t, done, 5*time.Second)
	assert.ErrorIs(t, r.err, context.Canceled)

	// fn returning nil resigns and campaigns again.
	n := 0
	err := e.Run(ctx, "R", func(_ context.Context, t *election.Term) error {
		if n++; n == 3 {
			return errors.New("third term")
		}
		return nil
	})
	assert.ErrorContains(t, err, "third term")
	assert.Equal(t, 3, n)

	// fn's own error ends Run after resigning.
	boom := errors.New("boom")
	err = e.Run(ctx, "R", func(context.Context, *election.Term) error { return boom })
	assert.ErrorIs(t, err, boom)
}

func asyncRecv[T any](ch <-chan T) <-chan result[T] {
	return async(func() (T, error) { return <-ch, nil })
}

// A Campaign that etcd refuses because the keeper's lease is gone on the
// server has the keeper replace the lease at once, and wins on the new one,
// instead of retrying on the old one until the keeper's next renewal (10 s
// away at this TTL).
func TestCampaignOnRevokedLeaseReplacesIt(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	p := newProcess(t, cluster, 30*time.Second)
	l, err := p.k.Lease(ctx)
	require.NoError(t, err)
	require.NoError(t, cluster.RevokeLease(ctx, l.ID()))

	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	term, err := election.New(p.k, name).Campaign(cctx, "v")
	require.NoError(t, err)
	require.NotEqual(t, l.ID(), term.Lease())
	require.ErrorIs(t, l.Err(), leasekeeper.ErrLeaseLost)
	require.NoError(t, term.Resign(ctx))
}

// The package's functions that take a client report a nil one as an error.
func TestNilClient(t *testing.T) {
	ctx := ctxT(t, 5*time.Second)
	_, err := election.LeaderOf(ctx, nil, "n")
	require.ErrorContains(t, err, "election: nil client")
	_, err = election.Candidates(ctx, nil, "n")
	require.ErrorContains(t, err, "election: nil client")
}

// A key under the election's prefix that no Campaign wrote is ErrCorrupt for
// LeaderOf, Candidates, Observe and a Campaign that would wait behind it,
// instead of leading the election, or blocking it, for good. The Campaign
// leaves no key behind.
func TestForeignKeys(t *testing.T) {
	for _, tc := range []struct{ name, key string }{
		{"not hex", "zz"},
		{"nested", "0123456789abcdef/x"},
		{"no lease", "0123456789abcdef"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(t.Name(), " ", "_")
			assertNoKeys(t, cluster, name)
			ctx := ctxT(t, 20*time.Second)
			p := newProcess(t, cluster, 5*time.Second)
			planted := prefixOf(name) + tc.key
			_, err := cluster.Admin().Put(ctx, planted, "x")
			require.NoError(t, err)
			defer func() { _, _ = cluster.Admin().Delete(context.Background(), planted) }()

			_, err = election.LeaderOf(ctx, p.cli, name)
			require.ErrorIs(t, err, election.ErrCorrupt)
			_, err = election.Candidates(ctx, p.cli, name)
			require.ErrorIs(t, err, election.ErrCorrupt)
			ch, errf := election.ObserveOf(ctx, p.cli, name)
			for range ch {
			}
			require.ErrorIs(t, errf(), election.ErrCorrupt)
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, err = election.New(p.k, name).Campaign(cctx, "v")
			require.ErrorIs(t, err, election.ErrCorrupt)
			resp, err := cluster.Admin().Get(ctx, prefixOf(name), clientv3.WithPrefix(), clientv3.WithKeysOnly())
			require.NoError(t, err)
			require.Len(t, resp.Kvs, 1, "the Campaign left its key")
		})
	}
}
