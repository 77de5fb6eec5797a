package barrier_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/barrier"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster) }

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

type process struct {
	cli *clientv3.Client
	k   *leasekeeper.Keeper
}

func newProcess(t *testing.T, ttl time.Duration) *process {
	t.Helper()
	cli, err := cluster.NewClient()
	require.NoError(t, err)
	k, err := leasekeeper.New(ctxT(t, 10*time.Second), cli, leasekeeper.WithTTL(cluster.LeaseTTL(ttl)))
	require.NoError(t, err)
	t.Cleanup(func() {
		cluster.RestoreClient(cli)
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = k.Close(cctx)
		_ = cli.Close()
	})
	return &process{cli: cli, k: k}
}

func assertNoKeys(t *testing.T, name string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := cluster.Admin().Get(ctx, name, clientv3.WithPrefix())
		if err != nil {
			t.Errorf("read keys left under %q: %v", name, err)
			return
		}
		for _, kv := range resp.Kvs {
			t.Errorf("key left behind: %s (lease %x)", kv.Key, kv.Lease)
		}
	})
}

func async(fn func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- fn() }()
	return ch
}

func recvErr(t *testing.T, ch <-chan error, d time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
		return nil
	}
}

func blocked(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s returned early: %v", what, err)
	default:
	}
}

// waitCount waits, on a watch, until exactly n keys exist under prefix.
func waitCount(t *testing.T, prefix string, n int64, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	wch := cluster.Admin().Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch
	for {
		resp, err := cluster.Admin().Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		require.NoError(t, err)
		if resp.Count == n {
			return
		}
		select {
		case _, ok := <-wch:
			if !ok {
				t.Fatalf("%d keys under %q not reached within %v (have %d)", n, prefix, d, resp.Count)
			}
		case <-ctx.Done():
			t.Fatalf("%d keys under %q not reached within %v (have %d)", n, prefix, d, resp.Count)
		}
	}
}

func TestBadInput(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, name)
	ctx := ctxT(t, 10*time.Second)
	p := newProcess(t, 2*time.Second)
	for _, bad := range []string{"", "a/.b", "x/"} {
		assert.ErrorContains(t, barrier.New(p.cli, bad).Hold(ctx), "barrier: invalid name")
		assert.ErrorContains(t, barrier.NewLeased(p.k, bad).Wait(ctx), "barrier: invalid name")
		_, err := barrier.NewDouble(p.k, bad, 2).Enter(ctx)
		assert.ErrorContains(t, err, "barrier: invalid name")
		assert.ErrorContains(t, barrier.NewLatch(p.cli, bad, 1).CountDown(ctx), "barrier: invalid name")
	}
	for _, n := range []int{0, -1} {
		_, err := barrier.NewDouble(p.k, name, n).Enter(ctx)
		assert.ErrorContains(t, err, "barrier: double barrier")
		assert.ErrorContains(t, barrier.NewLatch(p.cli, name, n).CountDown(ctx), "barrier: latch")
	}
	assert.Error(t, barrier.New(nil, name).Hold(ctx))
	assert.Error(t, barrier.NewLeased(nil, name).Hold(ctx))
	_, err := barrier.NewDouble(nil, name, 1).Enter(ctx)
	assert.Error(t, err)
	_, err = barrier.NewLatch(nil, name, 1).Count(ctx)
	assert.Error(t, err)
}

func TestBarrier(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, name)
	ctx := ctxT(t, 20*time.Second)
	b := barrier.New(cluster.Client(), name)
	require.NoError(t, b.Wait(ctx), "an unheld barrier does not block")
	require.NoError(t, b.Hold(ctx))
	require.NoError(t, b.Hold(ctx), "hold is idempotent")
	w1 := async(func() error { return barrier.New(cluster.Client(), name).Wait(ctx) })
	w2 := async(func() error { return b.Wait(ctx) })
	shortCtx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, b.Wait(shortCtx), context.DeadlineExceeded)
	blocked(t, w1, "wait")
	require.NoError(t, b.Release(ctx))
	require.NoError(t, recvErr(t, w1, 5*time.Second, "wait"))
	require.NoError(t, recvErr(t, w2, 5*time.Second, "wait"))
	require.NoError(t, b.Release(ctx), "release is idempotent")
}

func TestLeasedBarrierFallsWithHolder(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, name)
	ctx := ctxT(t, 20*time.Second)
	holder := newProcess(t, time.Second)
	require.NoError(t, barrier.NewLeased(holder.k, name).Hold(ctx))
	w := async(func() error { return barrier.New(cluster.Client(), name).Wait(ctx) })
	waitCount(t, names.Prefix(name, "barrier"), 1, 5*time.Second)
	blocked(t, w, "wait")
	cluster.CutClient(holder.cli) // the holder's lease expires while it lives
	require.NoError(t, recvErr(t, w, 5*time.Second, "wait on a dead holder's barrier"))
}

func TestDoubleBarrier(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, name)
	ctx := ctxT(t, 30*time.Second)
	const n = 3
	seats := make([]*barrier.Seat, n)
	var entered []<-chan error
	for i := range n {
		d := barrier.NewDouble(newProcess(t, 2*time.Second).k, name, n)
		entered = append(entered, async(func() error {
			s, err := d.Enter(ctx)
			seats[i] = s
			return err
		}))
		if i < n-1 {
			waitCount(t, names.Prefix(name, "double")+"seats/", int64(i+1), 5*time.Second)
			for _, ch := range entered {
				blocked(t, ch, "enter before n participants")
			}
		}
	}
	for _, ch := range entered {
		require.NoError(t, recvErr(t, ch, 5*time.Second, "enter"))
	}
	tokens := map[int64]bool{}
	for _, s := range seats {
		assert.NoError(t, s.Context().Err())
		tokens[s.Token()] = true
	}
	assert.Len(t, tokens, n, "tokens are distinct")

	var left []<-chan error
	for i, s := range seats {
		left = append(left, async(func() error { return s.Leave(ctx) }))
		if i < n-1 {
			waitCount(t, names.Prefix(name, "double")+"seats/", int64(n-1-i), 5*time.Second)
			for _, ch := range left {
				blocked(t, ch, "leave before everyone left")
			}
		}
	}
	for _, ch := range left {
		require.NoError(t, recvErr(t, ch, 5*time.Second, "leave"))
	}
	for _, s := range seats {
		assert.ErrorIs(t, context.Cause(s.Context()), barrier.ErrLeft)
		assert.NoError(t, s.Leave(ctx), "leave is idempotent")
	}
}

// TestDoubleBarrierParticipantDies: one of three participants is cut off
// after entering. The other two must not hang in Leave: the dead one's seat
// expires with its lease and counts as left. Its seat's context says ErrLost.
func TestDoubleBarrierParticipantDies(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, name)
	ctx := ctxT(t, 30*time.Second)
	const n = 3
	procs := make([]*process, n)
	seats := make([]*barrier.Seat, n)
	var wg sync.WaitGroup
	for i := range n {
		procs[i] = newProcess(t, time.Second)
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := barrier.NewDouble(procs[i].k, name, n).Enter(ctx)
			assert.NoError(t, err)
			seats[i] = s
		}()
	}
	wg.Wait()
	require.NotContains(t, seats, (*barrier.Seat)(nil))

	cluster.CutClient(procs[2].cli)
	l0 := async(func() error { return seats[0].Leave(ctx) })
	l1 := async(func() error { return seats[1].Leave(ctx) })
	require.NoError(t, recvErr(t, l0, 5*time.Second, "leave with a dead participant"))
	require.NoError(t, recvErr(t, l1, 5*time.Second, "leave with a dead participant"))
	select {
	case <-seats[2].Context().Done():
		assert.ErrorIs(t, context.Cause(seats[2].Context()), barrier.ErrLost)
	case <-time.After(5 * time.Second):
		t.Fatal("the dead participant's seat context is still live")
	}
	cluster.RestoreClient(procs[2].cli)
	require.NoError(t, seats[2].Leave(ctx))
}

func TestDoubleEnterLostOrCanceledLeavesNoKey(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, name)
	ctx := ctxT(t, 30*time.Second)
	p := newProcess(t, 2*time.Second)
	d := barrier.NewDouble(p.k, name, 2)

	cctx, cancel := context.WithCancel(ctx)
	ch := async(func() error { _, err := d.Enter(cctx); return err })
	waitCount(t, names.Prefix(name, "double"), 1, 5*time.Second)
	cancel()
	require.ErrorIs(t, recvErr(t, ch, 5*time.Second, "enter"), context.Canceled)
	waitCount(t, names.Prefix(name, "double"), 0, 5*time.Second)

	ch = async(func() error { _, err := d.Enter(ctx); return err })
	waitCount(t, names.Prefix(name, "double"), 1, 5*time.Second)
	require.NoError(t, cluster.RevokeLease(ctx, p.k.Current().ID()))
	require.ErrorIs(t, recvErr(t, ch, 5*time.Second, "enter"), barrier.ErrLost)
}

func TestLatch(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, name)
	ctx := ctxT(t, 30*time.Second)
	l := barrier.NewLatch(cluster.Client(), name, 3)
	n, err := l.Count(ctx)
	require.NoError(t, err)
	assert.Equal(t, 3, n)
	w := async(func() error { return l.Wait(ctx) })

	var wg sync.WaitGroup
	for range 2 {
		cli, err := cluster.NewClient()
		require.NoError(t, err)
		defer cli.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			assert.NoError(t, barrier.NewLatch(cli, name, 3).CountDown(ctx))
		}()
	}
	wg.Wait()
	n, err = l.Count(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	blocked(t, w, "wait on a closed latch")
	_, err = barrier.NewLatch(cluster.Client(), name, 5).Count(ctx)
	assert.ErrorIs(t, err, barrier.ErrCountMismatch)
	assert.ErrorIs(t, barrier.NewLatch(cluster.Client(), name, 5).CountDown(ctx), barrier.ErrCountMismatch)

	require.NoError(t, l.CountDown(ctx))
	require.NoError(t, recvErr(t, w, 5*time.Second, "latch wait"))
	require.NoError(t, l.Wait(ctx))
	require.NoError(t, l.CountDown(ctx), "counting down an open latch does nothing")
	n, err = l.Count(ctx)
	require.NoError(t, err)
	assert.Zero(t, n)

	// Delete wakes waiters of a new round with ErrDeleted.
	require.NoError(t, l.Delete(ctx))
	require.NoError(t, l.CountDown(ctx))
	w = async(func() error { return l.Wait(ctx) })
	blocked(t, w, "wait")
	// A waiter that read only after the delete waits for the next latch of
	// that name; create and delete again until it has seen one.
	var werr error
	for attempt := 0; ; attempt++ {
		require.NoError(t, l.Delete(ctx))
		select {
		case werr = <-w:
		case <-time.After(time.Second):
			require.Less(t, attempt, 3, "wait on a deleted latch did not return")
			require.NoError(t, l.CountDown(ctx))
			continue
		}
		break
	}
	assert.ErrorIs(t, werr, barrier.ErrDeleted)

	// A foreign value is an error, never a panic.
	_, err = cluster.Admin().Put(ctx, names.Prefix(name, "latch")+"count", "lots")
	require.NoError(t, err)
	_, err = l.Count(ctx)
	assert.ErrorIs(t, err, barrier.ErrCorrupt)
	assert.ErrorIs(t, l.CountDown(ctx), barrier.ErrCorrupt)
	assert.ErrorIs(t, l.Wait(ctx), barrier.ErrCorrupt)
	assert.True(t, strings.HasPrefix(l.Wait(ctx).Error(), "barrier: "))
	require.NoError(t, l.Delete(ctx))
}

// TestDoubleBarrierDeathBeforeOpening: of three participants, one dies while
// the barrier is still closed. It is as if it never came: its Enter fails
// with ErrLost, the one still waiting keeps waiting, and the barrier opens
// when two more arrive.
func TestDoubleBarrierDeathBeforeOpening(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, name)
	ctx := ctxT(t, 30*time.Second)
	seatsPrefix := names.Prefix(name, "double") + "seats/"
	enter := func(p *process, out **barrier.Seat) <-chan error {
		return async(func() error {
			s, err := barrier.NewDouble(p.k, name, 3).Enter(ctx)
			*out = s
			return err
		})
	}
	pa, pb := newProcess(t, 2*time.Second), newProcess(t, 2*time.Second)
	var sa, sb, sc, sd *barrier.Seat
	ea := enter(pa, &sa)
	waitCount(t, seatsPrefix, 1, 5*time.Second)
	eb := enter(pb, &sb)
	waitCount(t, seatsPrefix, 2, 5*time.Second)

	require.NoError(t, cluster.RevokeLease(ctx, pb.k.Current().ID()))
	require.ErrorIs(t, recvErr(t, eb, 5*time.Second, "enter of the dead participant"), barrier.ErrLost)
	waitCount(t, seatsPrefix, 1, 5*time.Second)
	blocked(t, ea, "enter with a participant gone")

	ec := enter(newProcess(t, 2*time.Second), &sc)
	waitCount(t, seatsPrefix, 2, 5*time.Second)
	blocked(t, ea, "enter with two of three")
	ed := enter(newProcess(t, 2*time.Second), &sd)
	for _, ch := range []<-chan error{ea, ec, ed} {
		require.NoError(t, recvErr(t, ch, 5*time.Second, "enter"))
	}
	var left []<-chan error
	for _, s := range []*barrier.Seat{sa, sc, sd} {
		left = append(left, async(func() error { return s.Leave(ctx) }))
	}
	for _, ch := range left {
		require.NoError(t, recvErr(t, ch, 5*time.Second, "leave"))
	}
}

// A Leave behind another Leave of the same seat, which waits for the other
// participants, returns when its own ctx ends; the first returns once the
// others left.
func TestDoubleLeaveBehindLeaveReturnsOnTime(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, name)
	ctx := ctxT(t, 30*time.Second)
	var entered []<-chan error
	seats := make([]*barrier.Seat, 2)
	for i := range seats {
		d := barrier.NewDouble(newProcess(t, 2*time.Second).k, name, 2)
		entered = append(entered, async(func() error {
			s, err := d.Enter(ctx)
			seats[i] = s
			return err
		}))
	}
	for _, ch := range entered {
		require.NoError(t, recvErr(t, ch, 5*time.Second, "enter"))
	}
	first := async(func() error { return seats[0].Leave(ctx) })
	// The first Leave has deleted its seat and waits for the other.
	waitCount(t, names.Prefix(name, "double")+"seats/", 1, 5*time.Second)
	second := async(func() error {
		lctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		return seats[0].Leave(lctx)
	})
	require.ErrorIs(t, recvErr(t, second, 3*time.Second, "a Leave behind a Leave"), context.DeadlineExceeded)
	blocked(t, first, "leave before everyone left")
	require.NoError(t, seats[1].Leave(ctx))
	require.NoError(t, recvErr(t, first, 5*time.Second, "the first Leave"))
}

// A key under the double barrier's seats that no participant wrote, or a
// ready key no opener wrote, is ErrCorrupt for Enter, instead of counting as
// a participant or opening the barrier; Enter leaves no seat behind.
func TestDoubleBarrierForeignKeys(t *testing.T) {
	for _, tc := range []struct{ name, key, value string }{
		{"foreign seat", "seats/zz", ""},
		{"seat not hex", "seats/0123456789abcdeg", ""},
		{"ready on no lease", "ready", ""},
		{"ready with a value", "ready", "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(t.Name(), " ", "_")
			assertNoKeys(t, name)
			ctx := ctxT(t, 20*time.Second)
			p := newProcess(t, 5*time.Second)
			planted := names.Prefix(name, "double") + tc.key
			_, err := cluster.Admin().Put(ctx, planted, tc.value)
			require.NoError(t, err)
			defer func() { _, _ = cluster.Admin().Delete(context.Background(), planted) }()

			ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, err = barrier.NewDouble(p.k, name, 2).Enter(ectx)
			require.ErrorIs(t, err, barrier.ErrCorrupt)
			resp, err := cluster.Admin().Get(ctx, name+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
			require.NoError(t, err)
			require.Len(t, resp.Kvs, 1, "Enter left its seat")
		})
	}
}

// waiting starts wait and returns once it has made its first read, so that
// what the test does next happens while it waits.
func waiting(t *testing.T, wait func() error) <-chan error {
	t.Helper()
	read := make(chan struct{}, 1)
	barrier.SetTestHookRead(func() {
		select {
		case read <- struct{}{}:
		default:
		}
	})
	t.Cleanup(func() { barrier.SetTestHookRead(nil) })
	ch := async(wait)
	select {
	case <-read:
	case err := <-ch:
		t.Fatalf("wait returned before waiting: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("wait made no read")
	}
	barrier.SetTestHookRead(nil)
	return ch
}

// A waiter judges each change as it was: a latch that opens and is deleted
// at once, or a barrier released and raised again at once, still releases
// it. The waiter's client is slow, so a read made after the first change
// would see the second (the cause of TestLatch's flake).
func TestChangesJudgedAsTheyWere(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := t.Name()
	assertNoKeys(t, name)
	slow, err := cluster.NewClient(testcluster.WithLatency(100*time.Millisecond, 0))
	require.NoError(t, err)
	defer slow.Close()
	fast := cluster.Client()

	l := barrier.NewLatch(fast, name+"/latch", 1)
	w := waiting(t, func() error { return barrier.NewLatch(slow, name+"/latch", 1).Wait(ctx) })
	require.NoError(t, l.CountDown(ctx)) // creates it open
	require.NoError(t, l.Delete(ctx))
	require.NoError(t, recvErr(t, w, 10*time.Second, "wait on a latch that opened"))

	b := barrier.New(fast, name+"/barrier")
	require.NoError(t, b.Hold(ctx))
	w = waiting(t, func() error { return barrier.New(slow, name+"/barrier").Wait(ctx) })
	require.NoError(t, b.Release(ctx))
	require.NoError(t, b.Hold(ctx))
	require.NoError(t, recvErr(t, w, 10*time.Second, "wait on a barrier that was released"))
	require.NoError(t, b.Release(ctx))
}
