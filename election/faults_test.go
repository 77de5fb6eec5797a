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

// TestHandoffAfterLeaderMemberStopped: the etcd leader member is stopped
// while B waits; A's resignation still elects B, and the next handoff too.
func TestHandoffAfterLeaderMemberStopped(t *testing.T) {
	for _, kill := range []bool{false, true} {
		t.Run(map[bool]string{false: "stop", true: "kill"}[kill], func(t *testing.T) {
			c := testcluster.New(t)
			name := t.Name()
			assertNoKeys(t, c, name)
			ctx := ctxT(t, 60*time.Second)
			// Leases must outlive the leader member's death.
			a := election.New(newProcess(t, c, c.FailoverTTL()).k, name)
			b := election.New(newProcess(t, c, c.FailoverTTL()).k, name)

			ta, err := a.Campaign(ctx, "A")
			require.NoError(t, err)
			bch := async(func() (*election.Term, error) { return b.Campaign(ctx, "B") })
			waitCount(t, c, prefixOf(name), 2, 5*time.Second)

			lead, err := c.WaitLeader(ctx)
			require.NoError(t, err)
			if kill {
				require.NoError(t, c.Kill(lead))
			} else {
				require.NoError(t, c.Stop(lead))
			}
			_, err = c.WaitLeader(ctx)
			require.NoError(t, err)
			require.NoError(t, ta.Resign(ctx))
			r := recv(t, bch, 10*time.Second)
			require.NoError(t, r.err)
			assert.Greater(t, r.v.Token(), ta.Token())

			ach := async(func() (*election.Term, error) { return a.Campaign(ctx, "A") })
			waitCount(t, c, prefixOf(name), 2, 5*time.Second)
			require.NoError(t, c.Restart(ctx, lead))
			require.NoError(t, r.v.Resign(ctx))
			r2 := recv(t, ach, 10*time.Second)
			require.NoError(t, r2.err)
			assert.Greater(t, r2.v.Token(), r.v.Token())
			require.NoError(t, r2.v.Resign(ctx))
		})
	}
}

// TestLeaderPartitioned: the leader's client reaches only a member that is
// then cut off from its peers. Its lease cannot be renewed; it must learn of
// its loss before B, on the majority side, is elected.
func TestLeaderPartitioned(t *testing.T) {
	c := testcluster.New(t)
	name := t.Name()
	assertNoKeys(t, c, name)
	ctx := ctxT(t, 60*time.Second)
	lead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	iso := (lead + 1) % 3
	var others []int
	for i := range 3 {
		if i != iso {
			others = append(others, i)
		}
	}
	pa := newProcess(t, c, 2*time.Second, testcluster.To(iso))
	a := election.New(pa.k, name)
	b := election.New(newProcess(t, c, 2*time.Second, testcluster.To(others...)).k, name)

	ta, err := a.Campaign(ctx, "A")
	require.NoError(t, err)
	bch := async(func() (*election.Term, error) { return b.Campaign(ctx, "B") })
	waitCount(t, c, prefixOf(name), 2, 5*time.Second)

	lostAt := make(chan time.Time, 1)
	context.AfterFunc(ta.Context(), func() { lostAt <- time.Now() })
	c.Partition(iso)
	r := recv(t, bch, 15*time.Second)
	require.NoError(t, r.err)
	select {
	case at := <-lostAt:
		assert.True(t, at.Before(r.at))
	default:
		t.Fatal("B elected while partitioned A still believed it led")
	}
	assert.ErrorIs(t, ta.Err(), election.ErrLost)
	c.Heal()
	_, err = c.WaitLeader(ctx)
	require.NoError(t, err)
	require.NoError(t, ta.Resign(ctx))

	// After healing, A campaigns again (on a new lease) and follows B.
	ach := async(func() (*election.Term, error) { return a.Campaign(ctx, "A") })
	waitCount(t, c, prefixOf(name), 2, 10*time.Second)
	require.NoError(t, r.v.Resign(ctx))
	r2 := recv(t, ach, 10*time.Second)
	require.NoError(t, r2.err)
	assert.Greater(t, r2.v.Token(), r.v.Token())
	require.NoError(t, r2.v.Resign(ctx))
}

// A Proclaim or Resign with a deadline returns on time on a client cut off
// from etcd, also while another Proclaim, with a context that never ends,
// is stalled on it: Proclaim returns its context's cause, and Resign returns
// once the lease is lost (its key goes with the lease) instead of after the
// whole TTL.
func TestCutOffTermCallsReturnOnTime(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := "/test/" + t.Name()
	assertNoKeys(t, cluster, name)
	p := newProcess(t, cluster, 3*time.Second)
	term, err := election.New(p.k, name).Campaign(ctx, "a")
	require.NoError(t, err)

	cluster.CutClient(p.cli)
	stalled := make(chan error, 1)
	go func() { stalled <- term.Proclaim(context.Background(), "stalled") }()
	require.Eventually(t, term.Proclaiming, 5*time.Second, time.Millisecond)

	returns := func(what string, d time.Duration, call func() error) error {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- call() }()
		select {
		case err := <-done:
			return err
		case <-time.After(d):
			t.Fatalf("%s on a cut-off client did not return within %v", what, d)
			return nil
		}
	}
	err = returns("Proclaim", 3*time.Second, func() error {
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		return term.Proclaim(pctx, "b")
	})
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// The lease is lost at its safe deadline, under 3 s after the cut.
	start := time.Now()
	err = returns("Resign", 5*time.Second, func() error {
		rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		return term.Resign(rctx)
	})
	require.NoError(t, err)
	require.Less(t, time.Since(start), 3*time.Second, "Resign waited past the lease's loss")
	require.ErrorIs(t, term.Err(), election.ErrLost)

	cluster.RestoreClient(p.cli)
	select {
	case <-stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the stalled Proclaim did not end after the client was restored")
	}
}
