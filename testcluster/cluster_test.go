package testcluster_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/testcluster"
)

var shared *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &shared) }

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestClients(t *testing.T) {
	ctx := ctxT(t, 10*time.Second)
	key := t.Name()
	_, err := shared.Client().Put(ctx, key, "v")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = shared.Admin().Delete(context.Background(), key) })
	for i := range shared.Size() {
		// A serializable read on a pinned client proves it talks to member i
		// only after that member applied the put; a linearizable one is enough
		// to prove it works.
		resp, err := shared.ClientTo(i).Get(ctx, key)
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 1)
	}
	assert.Same(t, shared.Client(), shared.Client())
	assert.Same(t, shared.ClientTo(1), shared.ClientTo(1))
}

func TestCutClient(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	cut, err := shared.NewClient()
	require.NoError(t, err)
	other, err := shared.NewClient()
	require.NoError(t, err)

	// A lease kept by the cut client's process expires on the server.
	lease, err := cut.Grant(ctx, 1)
	require.NoError(t, err)
	_, err = cut.Put(ctx, t.Name(), "x", clientv3.WithLease(lease.ID))
	require.NoError(t, err)

	shared.CutClient(cut)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = cut.Get(short, "k")
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "a cut client's request must stall")
	_, err = other.Get(ctx, "k")
	require.NoError(t, err, "other clients are not cut")

	// The lease is not renewed while cut: the key goes.
	w := other.Watch(ctx, t.Name())
	for ev := range w {
		require.NoError(t, ev.Err())
		if len(ev.Events) > 0 && ev.Events[0].Type == clientv3.EventTypeDelete {
			break
		}
	}
	shared.RestoreClient(cut)
	_, err = cut.Get(ctx, "k")
	require.NoError(t, err, "the client works again once restored")
}

func TestStopRestartKill(t *testing.T) {
	c := testcluster.New(t)
	ctx := ctxT(t, 30*time.Second)
	lead, err := c.WaitLeader(ctx)
	require.NoError(t, err)

	require.NoError(t, c.Stop(lead))
	newLead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	require.NotEqual(t, lead, newLead)
	_, err = c.Client().Put(ctx, "during-stop", "1")
	require.NoError(t, err, "two of three members keep serving")

	require.NoError(t, c.Restart(ctx, lead))
	resp, err := c.ClientTo(lead).Get(ctx, "during-stop", clientv3.WithSerializable())
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "a restarted member catches up")

	follower := (newLead + 1) % c.Size()
	require.NoError(t, c.Kill(follower))
	require.Error(t, c.Kill(follower), "killing a stopped member is an error")
	// A put in flight to the killed member fails (clientv3 does not resend
	// a write that may have been applied); the next one goes elsewhere.
	require.Eventually(t, func() bool {
		_, err := c.Client().Put(ctx, "during-kill", "1")
		return err == nil
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, c.Restart(ctx, follower))
}

func TestPartition(t *testing.T) {
	c := testcluster.New(t)
	ctx := ctxT(t, 30*time.Second)
	lead, err := c.WaitLeader(ctx)
	require.NoError(t, err)

	watchCtx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	w := c.ClientTo(lead).Watch(watchCtx, "anything")

	c.Partition(lead)
	newLead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	require.NotEqual(t, lead, newLead, "the majority elects a new leader")

	// The isolated member loses its leadership; a watch that requires a
	// leader fails instead of hanging.
	resp := <-w
	require.ErrorIs(t, resp.Err(), rpctypes.ErrNoLeader)

	c.Heal()
	_, err = c.ClientTo(lead).Put(ctx, "after-heal", "1")
	require.NoError(t, err, "the healed member serves again")
}

func TestRevokeLeaseAndCompact(t *testing.T) {
	ctx := ctxT(t, 10*time.Second)
	cli := shared.Client()
	key := t.Name()
	l, err := cli.Grant(ctx, 60)
	require.NoError(t, err)
	put, err := cli.Put(ctx, key, "x", clientv3.WithLease(l.ID))
	require.NoError(t, err)

	require.NoError(t, shared.RevokeLease(ctx, l.ID))
	resp, err := cli.Get(ctx, key)
	require.NoError(t, err)
	require.Empty(t, resp.Kvs, "revoking the lease deleted its key")

	rev, err := shared.Compact(ctx)
	require.NoError(t, err)
	require.Greater(t, rev, put.Header.Revision)
	w := cli.Watch(ctx, key, clientv3.WithRev(put.Header.Revision))
	wr := <-w
	require.ErrorIs(t, wr.Err(), rpctypes.ErrCompacted)
}

func TestLimits(t *testing.T) {
	c := testcluster.New(t, testcluster.WithSize(1), testcluster.WithMaxTxnOps(4), testcluster.WithMaxRequestBytes(4096))
	ctx := ctxT(t, 10*time.Second)
	var ops []clientv3.Op
	for i := range 5 {
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("k%d", i), "v"))
	}
	_, err := c.Client().Txn(ctx).Then(ops...).Commit()
	require.ErrorIs(t, err, rpctypes.ErrTooManyOps)
	_, err = c.Client().Put(ctx, "big", string(make([]byte, 8192)))
	require.ErrorIs(t, err, rpctypes.ErrRequestTooLarge)
}

func TestTLSAndAuth(t *testing.T) {
	c := testcluster.New(t, testcluster.WithTLS(), testcluster.WithAuth())
	ctx := ctxT(t, 20*time.Second)
	for _, ep := range c.Endpoints() {
		require.Contains(t, ep, "https://")
	}
	u, err := c.AddUser(ctx, "alice", "a/")
	require.NoError(t, err)
	alice, err := c.NewClient(testcluster.AsUser(u))
	require.NoError(t, err)

	_, err = alice.Put(ctx, "a/x", "1")
	require.NoError(t, err)
	_, err = alice.Put(ctx, "b/x", "1")
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied)
	_, err = alice.Get(ctx, "b/x")
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied)

	// Root (the default) may write anywhere; a client without TLS cannot
	// connect at all.
	_, err = c.Client().Put(ctx, "b/x", "1")
	require.NoError(t, err)
	cfg := c.ClientConfig()
	cfg.TLS = nil
	cfg.DialTimeout = 500 * time.Millisecond
	plain, err := clientv3.New(cfg)
	if err == nil {
		short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err = plain.Get(short, "a/x")
		cancel()
		_ = plain.Close()
	}
	require.Error(t, err)

	_, err = testcluster.New(t, testcluster.WithSize(1)).AddUser(ctx, "bob", "b/")
	require.Error(t, err, "AddUser needs WithAuth")
}

func TestBadSize(t *testing.T) {
	_, err := testcluster.Start(context.Background(), testcluster.WithSize(0))
	require.Error(t, err)
	require.False(t, errors.Is(err, context.Canceled))
}

// A paused member neither answers nor ticks: a paused leader is replaced,
// and a client reaching only that member stalls until Resume.
func TestPauseResume(t *testing.T) {
	c := testcluster.New(t)
	ctx := ctxT(t, 60*time.Second)
	lead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	if c.Binary() == "" {
		require.Error(t, c.Pause(lead), "embedded members cannot be paused")
		t.Skip("Pause needs process mode (CONCORD_ETCD)")
	}
	pinned := c.ClientTo(lead)
	require.NoError(t, c.Pause(lead))
	newLead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	require.NotEqual(t, lead, newLead, "the others elect a new leader")
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = pinned.Get(short, "k", clientv3.WithSerializable())
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "a paused member does not answer")
	require.NoError(t, c.Resume(lead))
	_, err = pinned.Get(ctx, "k")
	require.NoError(t, err, "the resumed member serves again")
}

// Latency delays each direction of a client's traffic.
func TestClientLatency(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	const delay = 20 * time.Millisecond
	slow, err := shared.NewClient(testcluster.WithLatency(delay, 0))
	require.NoError(t, err)
	_, err = slow.Get(ctx, "k") // connect
	require.NoError(t, err)
	start := time.Now()
	for range 5 {
		_, err = slow.Get(ctx, "k", clientv3.WithSerializable())
		require.NoError(t, err)
	}
	assert.GreaterOrEqual(t, time.Since(start), 5*2*delay, "each round trip takes at least twice the delay")
}

// Member processes die with the test binary that started them, even when it
// is killed: a child test binary starts a process cluster, prints its
// members' PIDs and is killed.
func TestNoOrphanProcesses(t *testing.T) {
	if os.Getenv("CONCORD_TEST_ORPHAN_CHILD") != "" {
		c, err := testcluster.Start(context.Background())
		require.NoError(t, err)
		fmt.Printf("pids %v\n", c.PIDs())
		select {} // wait to be killed
	}
	if shared.Binary() == "" {
		t.Skip("process mode only (CONCORD_ETCD)")
	}
	ctx := ctxT(t, 60*time.Second)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestNoOrphanProcesses$")
	cmd.Env = append(os.Environ(), "CONCORD_TEST_ORPHAN_CHILD=1")
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var pids []int
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "pids "); ok {
			for _, f := range strings.Fields(strings.Trim(rest, "[]")) {
				pid, err := strconv.Atoi(f)
				require.NoError(t, err)
				pids = append(pids, pid)
			}
			break
		}
	}
	require.Len(t, pids, 3)
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	for _, pid := range pids {
		for running(pid) {
			select {
			case <-ctx.Done():
				t.Fatalf("member process %d outlived its killed test binary", pid)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
}

// running reports whether pid is a process that has not exited (a zombie
// waiting to be reaped has).
func running(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	_, rest, _ := strings.Cut(string(stat), ") ")
	return !strings.HasPrefix(rest, "Z")
}
