package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/examples/internal/exampleenv"
	"github.com/concordkit/concord/testcluster"
)

func TestLocks(t *testing.T) {
	defer testcluster.VerifyNone(t)
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out, exampleenv.Options{}))
	s := out.String()
	t.Log("\n" + s)

	first := regexp.MustCompile(`worker-1 holds the lock, token (\d+); it reads the balance \(0\)`).FindStringSubmatch(s)
	require.NotNil(t, first)
	for i := 2; i <= 4; i++ {
		assert.Contains(t, s, "worker-"+strconv.Itoa(i)+" asks for the lock and waits (place "+strconv.Itoa(i-1)+" in the queue)")
	}
	order := []string{
		"worker-1 is cut off from etcd",
		"worker-1: its lock context is canceled: lock: lost",
		"worker-2 holds the lock, token",
		"worker-1 writes balance 10 with its old token " + first[1] + ": REJECTED by the account (stale fencing token: " + first[1] + " < ",
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
	require.Len(t, holders, 9, "one grant per deposit, and worker-1's lost one")
	var prev int64
	for i, h := range holders {
		name, tok, ok := strings.Cut(strings.TrimSuffix(h, ")"), "(")
		require.True(t, ok, h)
		if i < 4 {
			assert.Equal(t, "worker-"+strconv.Itoa(i+1), name)
		}
		n, err := strconv.ParseInt(tok, 10, 64)
		require.NoError(t, err)
		assert.Greater(t, n, prev, "tokens increase with each holder")
		prev = n
	}
	assert.Equal(t, 1, strings.Count(s, "REJECTED by the account"))
}
