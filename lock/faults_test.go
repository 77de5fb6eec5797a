package lock_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/lock"
	"github.com/concordkit/concord/testcluster"
)

// Mutual exclusion holds while the leader is killed and restarted, and
// while a member is partitioned away, on a private cluster. Lock calls ride
// through the faults (requests retried, watches re-created); the guarded
// counter and the overlap detector must stay exact.
func TestMutualExclusionUnderMemberFaults(t *testing.T) {
	c := testcluster.New(t)
	const name = "/test/faults"
	counter := name + "/counter"
	ctx := ctxT(t, 90*time.Second)
	const keepers, goroutines = 3, 4

	var (
		inside, overlaps, done atomic.Int32
		attempts               atomic.Int32 // guarded writes sent, confirmed or not
		stop                   atomic.Bool
		wg                     sync.WaitGroup
		mu                     sync.Mutex // protects errs
		errs                   []error
	)
	for range keepers {
		cli, err := c.NewClient()
		require.NoError(t, err)
		k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(2*time.Second))
		require.NoError(t, err)
		t.Cleanup(func() { _ = k.Close(context.Background()) })
		for range goroutines {
			m := lock.New(k, name)
			wg.Go(func() {
				for !stop.Load() {
					lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					h, err := m.Lock(lctx)
					cancel()
					if err != nil {
						// A lost lease during a fault is a legitimate outcome;
						// anything else is recorded.
						if !errorsIsLost(err) {
							mu.Lock()
							errs = append(errs, fmt.Errorf("lock: %w", err))
							mu.Unlock()
						}
						continue
					}
					if inside.Add(1) != 1 {
						overlaps.Add(1)
					}
					// Bounded, and failing fast on a member without a
					// leader: a read there would wait for one.
					ictx, icancel := context.WithTimeout(clientv3.WithRequireLeader(h.Context()), 2*time.Second)
					tried, err := incrementTry(ictx, k.Client(), counter, h.Guard())
					icancel()
					inside.Add(-1)
					if tried {
						attempts.Add(1)
					}
					if err == nil {
						done.Add(1)
					}
					// As a caller must: an unconfirmed unlock is tried again.
					for err := h.Unlock(ctx); err != nil; err = h.Unlock(ctx) {
						if ctx.Err() != nil {
							mu.Lock()
							errs = append(errs, fmt.Errorf("unlock: %w", err))
							mu.Unlock()
							return
						}
					}
				}
			})
		}
	}
	waitCycles := func(n int32) {
		t.Helper()
		t.Cleanup(func() {
			if t.Failed() {
				info, err := lock.Inspect(context.Background(), c.Admin(), name)
				if err == nil && info.Holder != nil {
					t.Logf("holder %+v, %d waiters", *info.Holder, len(info.Waiters))
				}
				mu.Lock()
				for _, e := range errs {
					t.Log(e)
				}
				mu.Unlock()
			}
		})
		target := done.Load() + n
		waitFor(t, 30*time.Second, fmt.Sprintf("%d more guarded increments", n), func() bool { return done.Load() >= target })
	}
	waitCycles(10)
	t.Log("kill leader")
	leader := c.Leader()
	require.NoError(t, c.Kill(leader))
	waitCycles(10)
	t.Log("restart")
	require.NoError(t, c.Restart(ctx, leader))
	waitCycles(10)
	t.Log("partition")
	c.Partition((leader + 1) % 3)
	waitCycles(10)
	c.Heal()
	waitCycles(10)
	stop.Store(true)
	wg.Wait()

	require.Zero(t, overlaps.Load(), "holders overlapped")
	for _, err := range errs {
		t.Error(err)
	}
	resp, err := c.Admin().Get(ctx, counter)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	// Every confirmed increment is there (an overlap would lose some);
	// writes whose answer was lost may or may not be.
	n, err := strconv.Atoi(string(resp.Kvs[0].Value))
	require.NoError(t, err)
	assert.GreaterOrEqual(t, n, int(done.Load()), "guarded increments lost")
	assert.LessOrEqual(t, n, int(attempts.Load()), "more increments than were sent")
	t.Logf("counter %d, confirmed %d, sent %d", n, done.Load(), attempts.Load())
	_, err = c.Admin().Delete(ctx, counter)
	require.NoError(t, err)
	left, err := c.Admin().Get(ctx, name+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	// Keys of live keepers may remain only while they hold; all have unlocked.
	assert.Zero(t, left.Count, "keys left under %s", name)
}

func errorsIsLost(err error) bool {
	return err != nil && (errorIs(err, lock.ErrLost) || errorIs(err, context.DeadlineExceeded))
}

func errorIs(err, target error) bool { return errors.Is(err, target) }

// incrementTry is increment, reporting whether the guarded write was sent.
func incrementTry(ctx context.Context, cli *clientv3.Client, counter string, g []clientv3.Cmp) (bool, error) {
	resp, err := cli.Get(ctx, counter)
	if err != nil {
		return false, err
	}
	n := 0
	if len(resp.Kvs) == 1 {
		if n, err = strconv.Atoi(string(resp.Kvs[0].Value)); err != nil {
			return false, err
		}
	}
	tresp, err := cli.Txn(ctx).If(g...).Then(clientv3.OpPut(counter, strconv.Itoa(n+1))).Commit()
	if err != nil {
		return true, err
	}
	if !tresp.Succeeded {
		return true, errors.New("guard failed while holding")
	}
	return true, nil
}

// A Lock on a client cut off from etcd returns when its context ends, with
// its cause. The etcd client holds the start of a watch until etcd confirms
// it, and a request that was never sent needs no withdrawal: neither may
// keep a fresh Mutex value's Lock past its context. A value used before
// (its watch pooled) sends its request, which stalls: that Lock withdraws it
// until the lease is lost. After the client is restored the same values
// work.
func TestLockCutOffReturnsOnTime(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 30*time.Second)
	cli := newClient(t)
	k := newKeeper(t, cli, 2*time.Second)
	h, err := lock.New(newKeeper(t, newClient(t), 5*time.Second), name).Lock(ctx)
	require.NoError(t, err)
	fresh := lock.New(k, name)
	used := lock.New(k, lockName(t, "used"))
	uh, err := used.Lock(ctx)
	require.NoError(t, err)
	require.NoError(t, uh.Unlock(ctx))

	cluster.CutClient(cli)
	restored := false
	defer func() {
		if !restored {
			cluster.RestoreClient(cli)
		}
	}()
	// The used value first: its pooled watch closes after
	// watch.IdleTimeout unused, and the case would then test the
	// fresh path twice.
	require.Equal(t, 1, lock.OwnWatchesIdle(used), "the used value's own watch is not pooled")
	for _, m := range []*lock.Mutex{used, fresh} {
		lctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		done := make(chan error, 1)
		go func() {
			_, err := m.Lock(lctx)
			done <- err
		}()
		select {
		case err := <-done:
			require.ErrorIs(t, err, context.DeadlineExceeded)
		case <-time.After(3 * time.Second):
			t.Fatalf("Lock of %s on a cut-off client did not return in time", m.Name())
		}
		cancel()
	}

	cluster.RestoreClient(cli)
	restored = true
	ch := lockAsync(ctx, fresh)
	waitQueue(t, name, 2)
	require.NoError(t, h.Unlock(ctx))
	r := recv(t, ch, 10*time.Second)
	require.NoError(t, r.err)
	require.NoError(t, r.h.Unlock(ctx))
	uh, err = used.Lock(ctx)
	require.NoError(t, err)
	require.NoError(t, uh.Unlock(ctx))
}

// An Unlock on a client cut off from etcd succeeds once the lease is lost:
// the key goes with the lease, so there is nothing left to wait for or to
// report as a failure.
func TestUnlockCutOffEndsWithLease(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 30*time.Second)
	cli := newClient(t)
	h, err := lock.New(newKeeper(t, cli, 2*time.Second), name).Lock(ctx)
	require.NoError(t, err)
	cluster.CutClient(cli)
	defer cluster.RestoreClient(cli)
	done := make(chan error, 1)
	go func() { done <- h.Unlock(ctx) }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Unlock on a cut-off client did not return")
	}
	require.ErrorIs(t, context.Cause(h.Context()), lock.ErrLost)
	// The key goes when the server expires the lease.
	cluster.RestoreClient(cli)
	waitQueue(t, name, 0)
}

// An Unlock behind another Unlock of the same hold that is stalled on a
// cut-off client gives up when its own context ends, instead of waiting as
// long as the first (up to the TTL).
func TestUnlockBehindStalledUnlockReturnsOnTime(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 60*time.Second)
	cli := newClient(t)
	h, err := lock.New(newKeeper(t, cli, 20*time.Second), name).Lock(ctx)
	require.NoError(t, err)
	cluster.CutClient(cli)
	defer cluster.RestoreClient(cli)
	first := make(chan error, 1)
	go func() { first <- h.Unlock(ctx) }()
	waitFor(t, 10*time.Second, "first Unlock to hold its turn", func() bool { return lock.Unlocking(h) })

	second := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		second <- h.Unlock(sctx)
	}()
	select {
	case err := <-second:
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(5 * time.Second):
		t.Fatal("Unlock behind a stalled Unlock did not return when its context ended")
	}
	require.NoError(t, h.Context().Err(), "the hold ended before etcd confirmed the delete")

	cluster.RestoreClient(cli)
	require.NoError(t, <-first)
	require.ErrorIs(t, context.Cause(h.Context()), lock.ErrUnlocked)
	require.NoError(t, h.Unlock(ctx))
	waitQueue(t, name, 0)
}

// A Lock that etcd refuses because the keeper's lease is gone on the server
// (revoked behind the keeper's back) has the keeper replace the lease at
// once: the next Lock succeeds on a new lease instead of failing on the old
// one until the keeper's next renewal (10 s away at this TTL).
func TestLockOnRevokedLeaseReplacesIt(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 30*time.Second)
	k := newKeeper(t, newClient(t), 30*time.Second)
	l, err := k.Lease(ctx)
	require.NoError(t, err)
	require.NoError(t, cluster.RevokeLease(ctx, l.ID()))
	m := lock.New(k, name)
	_, err = m.Lock(ctx)
	require.ErrorIs(t, err, lock.ErrLost)
	require.ErrorIs(t, l.Err(), leasekeeper.ErrLeaseLost, "the keeper was not told")

	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	h, err := m.Lock(lctx)
	require.NoError(t, err)
	require.NotEqual(t, l.ID(), h.Lease())
	require.NoError(t, h.Unlock(ctx))
	waitQueue(t, name, 0)
}

// A key in the queue that this package did not write, or a request whose
// value it cannot read, stops Lock, TryLock, Inspect and the releases with
// ErrCorrupt instead of being taken for a holder, and nothing is written: no
// request left behind, no release request for the foreign holder.
func TestForeignEntries(t *testing.T) {
	// badKey: the key's shape is foreign, which the acquire path sees (it
	// reads keys only); a foreign value under a request's shape shows to
	// Inspect and the releases, which read values.
	cases := []struct {
		kind, key, value string
		badKey           bool
	}{
		{"lock", "q/abc", "c1:1:x", true},
		{"lock", "q/0123456789abcdef", "garbage", false},
		{"rwlock", "q/zzz", "c1:1:x", true},
		{"rwlock", "q/w0123456789abcdef", "", false},
		{"rwlock", "q/r0123456789abcdeg", "c1:1:x", true}, // not hex
	}
	for _, tc := range cases {
		t.Run(tc.kind+"/"+tc.key, func(t *testing.T) {
			name := lockName(t)
			ctx := ctxT(t, 20*time.Second)
			cli := newClient(t)
			k := newKeeper(t, cli, 5*time.Second)
			planted := name + "/." + tc.kind + "/" + tc.key
			_, err := cluster.Admin().Put(ctx, planted, tc.value)
			require.NoError(t, err)
			defer func() { _, _ = cluster.Admin().Delete(context.Background(), planted) }()

			// The calls that must refuse: the acquisitions (only a foreign
			// key's shape shows to them), then those that read values.
			var acquire, reads []func(context.Context) error
			if tc.kind == "lock" {
				m := lock.New(k, name)
				acquire = []func(context.Context) error{
					func(ctx context.Context) error { _, err := m.Lock(ctx); return err },
					func(ctx context.Context) error { _, err := m.TryLock(ctx); return err },
				}
				reads = []func(context.Context) error{
					func(ctx context.Context) error { _, err := lock.Inspect(ctx, cli, name); return err },
					func(ctx context.Context) error { _, err := lock.ForceRelease(ctx, cli, name); return err },
					func(ctx context.Context) error { _, err := lock.RequestRelease(ctx, cli, name); return err },
				}
			} else {
				rw := lock.NewRWMutex(k, name)
				acquire = []func(context.Context) error{
					func(ctx context.Context) error { _, err := rw.Lock(ctx); return err },
					func(ctx context.Context) error { _, err := rw.RLock(ctx); return err },
				}
				reads = []func(context.Context) error{
					func(ctx context.Context) error { _, err := lock.InspectRWMutex(ctx, cli, name); return err },
					func(ctx context.Context) error { _, err := lock.ForceReleaseRWMutex(ctx, cli, name); return err },
					func(ctx context.Context) error { _, err := lock.RequestReleaseRWMutex(ctx, cli, name); return err },
				}
			}
			if !tc.badKey {
				acquire = nil
			}
			for i, call := range append(acquire, reads...) {
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				require.ErrorIs(t, call(cctx), lock.ErrCorrupt, "call %d", i)
				cancel()
			}
			resp, err := cluster.Admin().Get(ctx, name+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
			require.NoError(t, err)
			require.Len(t, resp.Kvs, 1, "written besides the planted key")
			require.Equal(t, planted, string(resp.Kvs[0].Key))
		})
	}
}

// An Unlock, and the next waiter's grant, go on about one election after
// the etcd leader process hangs (SIGSTOP), not a TTL later: each request is
// given up after retry.Attempt and sent again, and reaches the new leader.
// Process mode only (Pause).
func TestUnlockGoesOnWhileLeaderHangs(t *testing.T) {
	c := testcluster.New(t)
	if c.Binary() == "" {
		t.Skip("Pause needs process mode (CONCORD_ETCD)")
	}
	ctx := ctxT(t, 120*time.Second)
	const ttl = 30 * time.Second // far longer than a failover
	name := "/test/" + t.Name()
	newMutex := func() *lock.Mutex {
		cli, err := c.NewClient()
		require.NoError(t, err)
		k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(ttl))
		require.NoError(t, err)
		t.Cleanup(func() { _ = k.Close(context.Background()) })
		return lock.New(k, name)
	}
	a, b := newMutex(), newMutex()
	ha, err := a.Lock(ctx)
	require.NoError(t, err)
	got := make(chan error, 1)
	go func() {
		hb, err := b.Lock(ctx)
		if err == nil {
			err = hb.Unlock(ctx)
		}
		got <- err
	}()
	lead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Pause(lead))
	defer func() { _ = c.Resume(lead) }()
	start := time.Now()
	require.NoError(t, ha.Unlock(ctx))
	select {
	case err := <-got:
		require.NoError(t, err)
	case <-time.After(ttl / 2):
		t.Fatalf("the next waiter was not granted within half the TTL of the leader's hang")
	}
	t.Logf("unlock and handoff %v after the leader hung (election timeout %v)", time.Since(start), c.ElectionTimeout())
	assert.Less(t, time.Since(start), ttl/2, "Unlock waited for the hung leader")
}
