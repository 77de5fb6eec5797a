package lock_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
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

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster) }

func ctxT(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// newClient returns a client of its own (a separate connection, as another
// process would have), closed at the end of the test.
func newClient(t testing.TB, opts ...testcluster.ClientOption) *clientv3.Client {
	t.Helper()
	cli, err := cluster.NewClient(opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func newKeeper(t testing.TB, cli *clientv3.Client, ttl time.Duration) *leasekeeper.Keeper {
	t.Helper()
	k, err := leasekeeper.New(ctxT(t, 10*time.Second), cli, leasekeeper.WithTTL(cluster.LeaseTTL(ttl)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close(context.Background()) })
	return k
}

// lockName returns a name unique to the test, and checks at the end of the
// test, after its keepers are closed, that nothing is left under it.
func lockName(t testing.TB, suffix ...string) string {
	t.Helper()
	name := "/test/" + strings.ReplaceAll(t.Name(), "/", "_")
	if len(suffix) > 0 {
		name += "_" + strings.Join(suffix, "_")
	}
	t.Cleanup(func() { requireNoKeys(t, name) })
	return name
}

// requireNoKeys checks that no key is left under name.
func requireNoKeys(t testing.TB, name string) {
	t.Helper()
	resp, err := cluster.Admin().Get(ctxT(t, 5*time.Second), name+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	assert.Empty(t, keys, "keys left under %s", name)
}

// queueLen returns the number of requests in the lock's queue.
func queueLen(t testing.TB, name string) int {
	t.Helper()
	info, err := lock.Inspect(ctxT(t, 5*time.Second), cluster.Admin(), name)
	require.NoError(t, err)
	n := len(info.Waiters)
	if info.Holder != nil {
		n++
	}
	return n
}

// waitFor polls cond, for conditions that have no event to wait on.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(d)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

// waitQueue waits until the lock's queue holds n requests.
func waitQueue(t testing.TB, name string, n int) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("%d requests in %s", n, name), func() bool { return queueLen(t, name) == n })
}

type lockResult struct {
	h   *lock.Hold
	err error
}

func lockAsync(ctx context.Context, m *lock.Mutex) <-chan lockResult {
	ch := make(chan lockResult, 1)
	go func() {
		h, err := m.Lock(ctx)
		ch <- lockResult{h, err}
	}()
	return ch
}

func recv(t testing.TB, ch <-chan lockResult, d time.Duration) lockResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("no result within %v", d)
		return lockResult{}
	}
}

func TestBadInput(t *testing.T) {
	k := newKeeper(t, cluster.Client(), 2*time.Second)
	ctx := ctxT(t, 10*time.Second)
	cases := []struct {
		name string
		m    *lock.Mutex
		want string
	}{
		{"empty name", lock.New(k, ""), "lock: invalid name"},
		{"trailing slash", lock.New(k, "/a/"), "lock: invalid name"},
		{"reserved segment", lock.New(k, "/a/.lock"), "lock: invalid name"},
		{"nil keeper", lock.New(nil, "/a"), "lock: nil keeper"},
		{"negative delay", lock.New(k, "/a", lock.WithLockDelay(-time.Second)), "lock: lock-delay"},
		{"negative max hold", lock.New(k, "/a", lock.WithMaxHold(-time.Second)), "lock: max hold -1s: must not be negative"},
		{"huge value", lock.New(k, "/a", lock.WithValue(strings.Repeat("x", 2<<20))), "lock: value of"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.m.Lock(ctx)
			require.ErrorContains(t, err, c.want)
			_, err = c.m.TryLock(ctx)
			require.ErrorContains(t, err, c.want)
		})
	}
	_, err := lock.Inspect(ctx, cluster.Client(), "")
	require.ErrorContains(t, err, "lock: invalid name")
	_, err = lock.ForceRelease(ctx, cluster.Client(), "a//b")
	require.ErrorContains(t, err, "lock: invalid name")
	requireNoKeys(t, "/a")
}

func TestLockUnlock(t *testing.T) {
	name := lockName(t)
	cli := cluster.Client()
	k := newKeeper(t, cli, 2*time.Second)
	ctx := ctxT(t, 10*time.Second)
	m := lock.New(k, name, lock.WithValue("me"))

	h, err := m.Lock(ctx)
	require.NoError(t, err)
	require.Positive(t, h.Token())
	require.NoError(t, h.Context().Err())

	info, err := lock.Inspect(ctx, cli, name)
	require.NoError(t, err)
	require.NotNil(t, info.Holder)
	assert.Equal(t, "me", info.Holder.Value)
	assert.Equal(t, h.Token(), info.Holder.Token)
	assert.Equal(t, k.Current().ID(), info.Holder.Lease)
	assert.WithinDuration(t, time.Now(), info.Holder.Since, time.Minute)
	assert.Empty(t, info.Waiters)

	// A guarded write succeeds while held.
	resp, err := cli.Txn(ctx).If(h.Guard()...).Then(clientv3.OpPut(name+"/data", "1")).Commit()
	require.NoError(t, err)
	require.True(t, resp.Succeeded)

	require.NoError(t, h.Unlock(ctx))
	require.NoError(t, h.Unlock(ctx), "second unlock")
	require.ErrorIs(t, context.Cause(h.Context()), lock.ErrUnlocked)
	require.NotErrorIs(t, context.Cause(h.Context()), lock.ErrLost)

	// ... and fails after.
	resp, err = cli.Txn(ctx).If(h.Guard()...).Then(clientv3.OpPut(name+"/data", "2")).Commit()
	require.NoError(t, err)
	require.False(t, resp.Succeeded)
	_, err = cli.Delete(ctx, name+"/data")
	require.NoError(t, err)

	// The key is reused, the token is not.
	h2, err := m.Lock(ctx)
	require.NoError(t, err)
	require.Greater(t, h2.Token(), h.Token())
	require.Equal(t, h.Key(), h2.Key())
	require.NoError(t, h2.Unlock(ctx))
	requireNoKeys(t, name)
}

func TestTryLock(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 10*time.Second)
	k1 := newKeeper(t, newClient(t), 2*time.Second)
	k2 := newKeeper(t, newClient(t), 2*time.Second)
	m1, m2 := lock.New(k1, name), lock.New(k2, name)

	h, err := m1.TryLock(ctx)
	require.NoError(t, err)
	_, err = m2.TryLock(ctx)
	require.ErrorIs(t, err, lock.ErrLocked)
	// Another goroutine on the same Mutex value is refused as well.
	_, err = m1.TryLock(ctx)
	require.ErrorIs(t, err, lock.ErrLocked)
	require.Equal(t, 1, queueLen(t, name), "a refused TryLock left a key")
	require.NoError(t, h.Unlock(ctx))
	h2, err := m2.TryLock(ctx)
	require.NoError(t, err)
	require.NoError(t, h2.Unlock(ctx))
	requireNoKeys(t, name)
}

// Two Mutex values on one keeper exclude each other, as two processes do
// (etcd's concurrency.Mutex derives its key from the lease, so both would
// "acquire").
func TestTwoMutexesOneKeeper(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 10*time.Second)
	k := newKeeper(t, cluster.Client(), 2*time.Second)
	m1, m2 := lock.New(k, name), lock.New(k, name)
	h1, err := m1.Lock(ctx)
	require.NoError(t, err)
	_, err = m2.TryLock(ctx)
	require.ErrorIs(t, err, lock.ErrLocked)

	ch := lockAsync(ctx, m2)
	waitQueue(t, name, 2)
	select {
	case r := <-ch:
		t.Fatalf("second Mutex acquired while the first held: %v", r.err)
	default:
	}
	require.NoError(t, h1.Unlock(ctx))
	r := recv(t, ch, 5*time.Second)
	require.NoError(t, r.err)
	require.Greater(t, r.h.Token(), h1.Token())
	require.NoError(t, r.h.Unlock(ctx))
}

// Mutual exclusion under contention: 3 keepers (each its own connection to
// a different member), 16 goroutines each, some sharing a Mutex value. An
// in-etcd counter is read and rewritten only under Guard, so any overlap
// loses an update; an in-process counter catches overlaps directly; tokens
// must strictly increase in grant order.
func TestMutualExclusion(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 90*time.Second)
	const keepers, goroutines, rounds = 3, 16, 3
	counter := name + "/counter"
	t.Cleanup(func() { _, _ = cluster.Admin().Delete(context.Background(), counter) })

	var (
		inside   atomic.Int32
		overlaps atomic.Int32
		mu       sync.Mutex // protects tokens
		tokens   []int64
		wg       sync.WaitGroup
		errs     = make(chan error, keepers*goroutines)
	)
	for ki := range keepers {
		k := newKeeper(t, newClient(t, testcluster.To(ki)), 2*time.Second)
		shared := lock.New(k, name)
		for g := range goroutines {
			m := shared
			if g%2 == 0 {
				m = lock.New(k, name) // half have their own value
			}
			wg.Go(func() {
				for range rounds {
					h, err := m.Lock(ctx)
					if err != nil {
						errs <- fmt.Errorf("lock: %w", err)
						return
					}
					if inside.Add(1) != 1 {
						overlaps.Add(1)
					}
					mu.Lock()
					tokens = append(tokens, h.Token())
					mu.Unlock()
					err = increment(h.Context(), k.Client(), counter, h.Guard())
					inside.Add(-1)
					if err != nil {
						errs <- fmt.Errorf("increment: %w", err)
					}
					if err := h.Unlock(ctx); err != nil {
						errs <- fmt.Errorf("unlock: %w", err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	require.Zero(t, overlaps.Load(), "holders overlapped")
	total := keepers * goroutines * rounds
	require.Len(t, tokens, total)
	for i := 1; i < len(tokens); i++ {
		require.Greater(t, tokens[i], tokens[i-1], "tokens must increase in grant order")
	}
	resp, err := cluster.Admin().Get(ctx, counter)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	assert.Equal(t, strconv.Itoa(total), string(resp.Kvs[0].Value), "guarded increments lost")
	_, err = cluster.Admin().Delete(ctx, counter)
	require.NoError(t, err)
}

// increment reads counter and writes it back plus one, guarded by the hold:
// if two holders overlapped, one of their updates would be lost.
func increment(ctx context.Context, cli *clientv3.Client, counter string, g []clientv3.Cmp) error {
	resp, err := cli.Get(ctx, counter)
	if err != nil {
		return err
	}
	n := 0
	if len(resp.Kvs) == 1 {
		if n, err = strconv.Atoi(string(resp.Kvs[0].Value)); err != nil {
			return err
		}
	}
	tresp, err := cli.Txn(ctx).If(g...).Then(clientv3.OpPut(counter, strconv.Itoa(n+1))).Commit()
	if err != nil {
		return err
	}
	if !tresp.Succeeded {
		return errors.New("guard failed while holding")
	}
	return nil
}

// Waiters are granted in the order they asked.
func TestFairOrder(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 20*time.Second)
	k := newKeeper(t, cluster.Client(), 2*time.Second)
	h, err := lock.New(k, name).Lock(ctx)
	require.NoError(t, err)
	const n = 5
	var order []int
	var mu sync.Mutex // protects order
	var chs []<-chan lockResult
	for i := range n {
		m := lock.New(k, name)
		ch := make(chan lockResult, 1)
		go func() {
			h, err := m.Lock(ctx)
			if err == nil {
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
			}
			ch <- lockResult{h, err}
		}()
		chs = append(chs, ch)
		waitQueue(t, name, i+2) // queued before the next one asks
	}
	require.NoError(t, h.Unlock(ctx))
	for _, ch := range chs {
		r := recv(t, ch, 5*time.Second)
		require.NoError(t, r.err)
		require.NoError(t, r.h.Unlock(ctx))
	}
	require.Equal(t, []int{0, 1, 2, 3, 4}, order)
}

// A Lock that is canceled while waiting withdraws its request, and the
// waiters behind it move up.
func TestCanceledLockLeavesNoKey(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 20*time.Second)
	k := newKeeper(t, cluster.Client(), 2*time.Second)
	h, err := lock.New(k, name).Lock(ctx)
	require.NoError(t, err)

	wctx, cancel := context.WithCancel(ctx)
	ch := lockAsync(wctx, lock.New(k, name))
	waitQueue(t, name, 2)
	behind := lockAsync(ctx, lock.New(k, name))
	waitQueue(t, name, 3)
	cancel()
	r := recv(t, ch, 5*time.Second)
	require.ErrorIs(t, r.err, context.Canceled)
	waitQueue(t, name, 2)

	tctx, tcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer tcancel()
	_, err = lock.New(k, name).Lock(tctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, 2, queueLen(t, name))

	require.NoError(t, h.Unlock(ctx))
	r = recv(t, behind, 5*time.Second)
	require.NoError(t, r.err)
	require.NoError(t, r.h.Unlock(ctx))
	requireNoKeys(t, name)
}

// A Lock whose acquire transaction is stalled on the way (the client cut
// off) and whose context ends meanwhile leaves no key behind once the
// traffic flows again, whether or not the put was applied.
func TestTimedOutLockReplyLost(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 20*time.Second)
	holderK := newKeeper(t, newClient(t), 2*time.Second)
	h, err := lock.New(holderK, name).Lock(ctx)
	require.NoError(t, err)

	cli := newClient(t)
	k := newKeeper(t, cli, 2*time.Second)
	m := lock.New(k, name)
	cluster.CutClient(cli)
	lctx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel()
	ch := lockAsync(lctx, m)
	<-lctx.Done()
	// Restore after the reply grace has run out, so the answer to the put is
	// lost; then the stalled put and the cleanup's delete flow, in order.
	time.AfterFunc(400*time.Millisecond, func() { cluster.RestoreClient(cli) })
	r := recv(t, ch, 5*time.Second)
	require.ErrorIs(t, r.err, context.DeadlineExceeded)
	require.Equal(t, 1, queueLen(t, name), "the timed-out request left its key")
	require.NoError(t, h.Unlock(ctx))
	requireNoKeys(t, name)
}

// A waiter whose lease is lost while it waits gets ErrLost, never a Hold.
func TestWaiterLeaseLost(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 20*time.Second)
	k1 := newKeeper(t, newClient(t), 2*time.Second)
	k2 := newKeeper(t, newClient(t), 2*time.Second)
	h, err := lock.New(k1, name).Lock(ctx)
	require.NoError(t, err)
	ch := lockAsync(ctx, lock.New(k2, name))
	waitQueue(t, name, 2)
	require.NoError(t, cluster.RevokeLease(ctx, k2.Current().ID()))
	r := recv(t, ch, 5*time.Second)
	require.ErrorIs(t, r.err, lock.ErrLost)
	require.Nil(t, r.h)
	require.NoError(t, h.Unlock(ctx))
}

// The holder's context is canceled before the next waiter's Lock returns
// when the holder is cut off from etcd (its lease expires on the server
// while the process lives). Repeated 20 times, in parallel.
func TestLossOrder(t *testing.T) {
	const reps = 20
	for i := range reps {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			name := lockName(t)
			ctx := ctxT(t, 30*time.Second)
			holderCli := newClient(t)
			holderK := newKeeper(t, holderCli, 2*time.Second)
			waiterK := newKeeper(t, newClient(t), 2*time.Second)

			h, err := lock.New(holderK, name).Lock(ctx)
			require.NoError(t, err)
			ch := lockAsync(ctx, lock.New(waiterK, name))
			waitQueue(t, name, 2)

			cluster.CutClient(holderCli)
			r := recv(t, ch, 10*time.Second)
			require.NoError(t, r.err)
			holderErr := h.Context().Err() // read first: the order is the test
			require.Error(t, holderErr, "the next waiter acquired while the cut-off holder still believed it held")
			require.ErrorIs(t, context.Cause(h.Context()), lock.ErrLost)
			require.ErrorIs(t, context.Cause(h.Context()), leasekeeper.ErrLeaseLost)
			require.Greater(t, r.h.Token(), h.Token())

			// A guarded write from the old holder fails once it is back.
			cluster.RestoreClient(holderCli)
			resp, err := holderCli.Txn(ctx).If(h.Guard()...).Then(clientv3.OpPut(name+"/data", "stale")).Commit()
			require.NoError(t, err)
			require.False(t, resp.Succeeded, "a guarded write from a lost holder succeeded")
			require.NoError(t, h.Unlock(ctx))
			require.NoError(t, r.h.Unlock(ctx))
		})
	}
}

// revokedSoon fails the test unless h.Revoked fires within 5 s.
func revokedSoon(t testing.TB, h *lock.Hold) {
	t.Helper()
	select {
	case <-h.Revoked():
	case <-time.After(5 * time.Second):
		t.Fatalf("Revoked did not fire for token %d", h.Token())
	}
}

// lostSoon fails the test unless h is canceled within 5 s by a forced
// release.
func lostSoon(t testing.TB, h *lock.Hold) {
	t.Helper()
	select {
	case <-h.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("the forced holder %d's context was not canceled", h.Token())
	}
	require.ErrorIs(t, context.Cause(h.Context()), lock.ErrRevoked)
	require.ErrorIs(t, context.Cause(h.Context()), lock.ErrLost)
}

// Revocation: RequestRelease fires Revoked; ForceRelease deletes the key,
// cancels the holder with ErrRevoked and grants the next waiter.
func TestRevocation(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 20*time.Second)
	cli := cluster.Client()
	_, err := lock.RequestRelease(ctx, cli, name)
	require.ErrorIs(t, err, lock.ErrNotHeld)

	k1 := newKeeper(t, newClient(t), 2*time.Second)
	k2 := newKeeper(t, newClient(t), 2*time.Second)
	h, err := lock.New(k1, name).Lock(ctx)
	require.NoError(t, err)
	tok, err := lock.RequestRelease(ctx, cli, name)
	require.NoError(t, err)
	require.Equal(t, h.Token(), tok)
	revokedSoon(t, h)
	require.NoError(t, h.Context().Err(), "a request alone does not end the hold")
	require.NoError(t, h.Unlock(ctx))
	requireNoKeys(t, name) // the request went with the unlock

	h, err = lock.New(k1, name).Lock(ctx)
	require.NoError(t, err)
	ch := lockAsync(ctx, lock.New(k2, name))
	waitQueue(t, name, 2)
	tok, err = lock.ForceRelease(ctx, cli, name)
	require.NoError(t, err)
	require.Equal(t, h.Token(), tok)
	r := recv(t, ch, 5*time.Second)
	require.NoError(t, r.err)
	lostSoon(t, h)
	select {
	case <-h.Revoked():
	default:
		t.Fatal("Revoked did not fire on a forced release")
	}
	resp, err := cli.Txn(ctx).If(h.Guard()...).Then(clientv3.OpPut(name+"/data", "x")).Commit()
	require.NoError(t, err)
	require.False(t, resp.Succeeded)
	require.NoError(t, h.Unlock(ctx)) // tidies the force marker
	require.NoError(t, r.h.Unlock(ctx))
	requireNoKeys(t, name)
}

// With a lock-delay, a waiter is granted only after the delay when the
// holder's lease was lost, and at once when the holder unlocked.
func TestLockDelay(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 20*time.Second)
	const delay = 400 * time.Millisecond
	k1 := newKeeper(t, newClient(t), 2*time.Second)
	k2 := newKeeper(t, newClient(t), 2*time.Second)
	waiter := lock.New(k2, name, lock.WithLockDelay(delay))

	h, err := lock.New(k1, name).Lock(ctx)
	require.NoError(t, err)
	ch := lockAsync(ctx, waiter)
	waitQueue(t, name, 2)
	start := time.Now()
	require.NoError(t, h.Unlock(ctx))
	r := recv(t, ch, 5*time.Second)
	require.NoError(t, r.err)
	require.Less(t, time.Since(start), delay, "delayed after a voluntary unlock")
	require.NoError(t, r.h.Unlock(ctx))

	h, err = lock.New(k1, name).Lock(ctx)
	require.NoError(t, err)
	ch = lockAsync(ctx, waiter)
	waitQueue(t, name, 2)
	start = time.Now()
	require.NoError(t, cluster.RevokeLease(ctx, k1.Current().ID()))
	r = recv(t, ch, 5*time.Second)
	require.NoError(t, r.err)
	require.GreaterOrEqual(t, time.Since(start), delay, "not delayed after an involuntary loss")
	require.NoError(t, r.h.Unlock(ctx))
	_ = h.Unlock(ctx)
}

// Inspect lists the holder and the waiters in order, and reports a value it
// did not write as an error.
func TestInspect(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 20*time.Second)
	k := newKeeper(t, cluster.Client(), 2*time.Second)
	info, err := lock.Inspect(ctx, cluster.Client(), name)
	require.NoError(t, err)
	require.Nil(t, info.Holder)

	h, err := lock.New(k, name, lock.WithValue("a")).Lock(ctx)
	require.NoError(t, err)
	chB := lockAsync(ctx, lock.New(k, name, lock.WithValue("b")))
	waitQueue(t, name, 2)
	chC := lockAsync(ctx, lock.New(k, name, lock.WithValue("c:with:colons")))
	waitQueue(t, name, 3)
	info, err = lock.Inspect(ctx, cluster.Client(), name)
	require.NoError(t, err)
	require.Equal(t, "a", info.Holder.Value)
	require.Len(t, info.Holders, 1)
	require.False(t, info.Holder.Reader)
	var vals []string
	var toks []int64
	for _, w := range info.Waiters {
		vals = append(vals, w.Value)
		toks = append(toks, w.Token)
	}
	require.Equal(t, []string{"b", "c:with:colons"}, vals)
	require.True(t, slices.IsSorted(toks))
	require.Less(t, info.Holder.Token, toks[0])

	require.NoError(t, h.Unlock(ctx))
	for _, ch := range []<-chan lockResult{chB, chC} {
		r := recv(t, ch, 5*time.Second)
		require.NoError(t, r.err)
		require.NoError(t, r.h.Unlock(ctx))
	}

	// A foreign value under the lock's keys is an error, not a panic.
	foreign := name + "/.lock/q/foreign"
	_, err = cluster.Admin().Put(ctx, foreign, "not a lock entry")
	require.NoError(t, err)
	_, err = lock.Inspect(ctx, cluster.Client(), name)
	require.ErrorIs(t, err, lock.ErrCorrupt)
	_, err = cluster.Admin().Delete(ctx, foreign)
	require.NoError(t, err)
}

// The package's functions that take a client report a nil one as an error.
func TestNilClient(t *testing.T) {
	ctx := ctxT(t, 5*time.Second)
	errs := []error{}
	_, err := lock.Inspect(ctx, nil, "n")
	errs = append(errs, err)
	_, err = lock.InspectRWMutex(ctx, nil, "n")
	errs = append(errs, err)
	_, err = lock.RequestRelease(ctx, nil, "n")
	errs = append(errs, err)
	_, err = lock.ForceRelease(ctx, nil, "n")
	errs = append(errs, err)
	_, err = lock.RequestReleaseRWMutex(ctx, nil, "n")
	errs = append(errs, err)
	_, err = lock.ForceReleaseRWMutex(ctx, nil, "n")
	errs = append(errs, err)
	for i, err := range errs {
		require.ErrorContains(t, err, "lock: nil client", "call %d", i)
	}
}
