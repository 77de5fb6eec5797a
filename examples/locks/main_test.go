package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/examples/internal/exampleenv"
	"github.com/concordkit/concord/examples/internal/exampletest"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/lock"
	"github.com/concordkit/concord/testcluster"
)

func TestLocks(t *testing.T) {
	defer testcluster.VerifyNone(t)
	var out bytes.Buffer
	err := run(context.Background(), &out, exampleenv.Options{})
	s := out.String()
	t.Log("\n" + s)
	require.NoError(t, err)
	checkStory(t, s)
}

// The same program against an etcd it did not start, reached with
// -endpoints and the TLS and user flags: etcd processes when CONCORD_ETCD is
// set. The cut-off is made in the worker's own connections there.
func TestLocksEndpoints(t *testing.T) {
	for _, mode := range exampletest.Modes {
		t.Run(string(mode), func(t *testing.T) {
			o := exampletest.Cluster(t, mode)
			var out bytes.Buffer
			err := run(context.Background(), &out, o)
			s := out.String()
			t.Log("\n" + s)
			require.NoError(t, err)
			require.NotContains(t, s, "started a")
			checkStory(t, s)
		})
	}
}

func checkStory(t *testing.T, s string) {
	t.Helper()
	first := regexp.MustCompile(`worker-1 holds the lock, token (\d+); it reads the balance \(0\)`).FindStringSubmatch(s)
	require.NotNil(t, first)
	for i := 2; i <= 4; i++ {
		assert.Contains(t, s, "worker-"+strconv.Itoa(i)+" asks for the lock and waits (place "+strconv.Itoa(i-1)+" in the queue)")
	}
	order := []string{
		"worker-1 is cut off from etcd",
		"worker-1: its lock context is canceled: lock: lost",
		"worker-2 holds the lock, token",
		"worker-1 writes balance 10 with its old token " + first[1] + ": REJECTED by the account (fence: stale token: token " + first[1] + ` for "account", `,
		"worker-1's guarded write into etcd is REJECTED too",
		"holders in order",
		"final balance 80 at the account and 80 in etcd",
	}
	last := -1
	for _, w := range order {
		i := strings.Index(s, w)
		require.Greater(t, i, last, "%q missing or out of order", w)
		last = i
	}

	// Fair: the first grants follow the order of the requests, and every
	// accepted token is larger than the one before.
	m := regexp.MustCompile(`holders in order \(token\): (.*)`).FindStringSubmatch(s)
	require.NotNil(t, m)
	holders := strings.Split(m[1], " → ")
	// One grant per deposit and worker-1's lost one, and one more for each
	// deposit or copy a worker had to make again after losing a hold (none
	// unless etcd revoked a lease on its own).
	again := strings.Count(s, "tries again under a new hold")
	require.Len(t, holders, 9+again)
	var prev int64
	for i, h := range holders {
		name, tok, ok := strings.Cut(strings.TrimSuffix(h, ")"), "(")
		require.True(t, ok, h)
		if i < 4 && !strings.Contains(s, "lost its place in the queue") && !strings.Contains(s, "it asks again") {
			// A waiter that lost its lease, or whose Lock failed, queued
			// again behind the others.
			assert.Equal(t, "worker-"+strconv.Itoa(i+1), name)
		}
		n, err := strconv.ParseInt(tok, 10, 64)
		require.NoError(t, err)
		assert.Greater(t, n, prev, "tokens increase with each holder")
		prev = n
	}
	assert.Equal(t, 1, strings.Count(s, "REJECTED by the account"))
}

// A worker whose lease the server no longer knows (revoked, or expired
// while it was cut off) before its keeper noticed gets ErrLost from Lock;
// it waits for the keeper's next lease and queues again instead of giving
// up.
func TestWorkerQueuesAgainAfterLostLease(t *testing.T) {
	t.Cleanup(func() { testcluster.VerifyNone(t) }) // after the cluster is closed
	c := testcluster.New(t)
	ctx := context.Background()
	cli, err := c.NewClient()
	require.NoError(t, err)
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(c.FailoverTTL()))
	require.NoError(t, err)
	defer k.Close(ctx)
	p := &participant{name: "worker", cli: cli, k: k, m: lock.New(k, lockName, lock.WithValue("worker"))}
	_, err = c.Admin().Put(ctx, balanceKey, "0")
	require.NoError(t, err)
	require.NoError(t, c.RevokeLease(ctx, k.Current().ID()))

	var out bytes.Buffer
	say := func(format string, args ...any) { fmt.Fprintf(&out, format+"\n", args...) }
	acct := &account{}
	err = p.work(ctx, acct, 2, say, func(*participant, *lock.Hold) {}, func() {})
	t.Log("\n" + out.String())
	require.NoError(t, err)
	assert.Contains(t, out.String(), "worker lost its place in the queue (lock: lost")
	assert.Equal(t, 20, acct.read())
	got, err := c.Admin().Get(ctx, balanceKey)
	require.NoError(t, err)
	assert.Equal(t, "20", string(got.Kvs[0].Value))
}
