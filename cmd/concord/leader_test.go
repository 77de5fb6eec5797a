package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/leasekeeper"
)

func newKeeper(t *testing.T) *leasekeeper.Keeper {
	t.Helper()
	k, err := leasekeeper.New(context.Background(), cluster.Client(), leasekeeper.WithTTL(5*time.Second))
	require.NoError(t, err)
	t.Cleanup(func() { k.Close(context.Background()) })
	return k
}

func TestLeader(t *testing.T) {
	ctx := context.Background()
	name := uniq("cli-leader")

	r := concord(t, "leader", name)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "election "+name+": no leader\n", r.stdout)

	a := election.New(newKeeper(t), name)
	ta, err := a.Campaign(ctx, "node-a")
	require.NoError(t, err)

	r = concord(t, "leader", name)
	require.Equal(t, 0, r.code, r.stderr)
	t.Log("\n" + r.stdout)
	assert.Regexp(t, `(?m)^leader: +node-a$`, r.stdout)
	assert.Regexp(t, `(?m)^token: +`+itoa(ta.Token())+`$`, r.stdout)
	assert.Regexp(t, `(?m)^key: +`+ta.Key()+`$`, r.stdout)

	r = concord(t, "--json", "leader", name)
	require.Equal(t, 0, r.code, r.stderr)
	var j leaderJSON
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &j))
	assert.True(t, j.Leader)
	assert.Equal(t, "node-a", j.Value)
	assert.Equal(t, ta.Token(), j.Token)

	// --watch: the current leader, then a handoff to node-b, then nobody.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, errOut := newLineWriter(), newLineWriter()
	done := make(chan int, 1)
	go func() {
		done <- run(wctx, []string{"--endpoints", strings.Join(cluster.Endpoints(), ","), "leader", name, "--watch", "--count", "3"}, out, errOut)
	}()
	waitLine(t, out, "leader node-a (token "+itoa(ta.Token())+")", 10*time.Second)

	b := election.New(newKeeper(t), name)
	won := make(chan *election.Term, 1)
	go func() {
		tb, err := b.Campaign(wctx, "node-b")
		assert.NoError(t, err)
		won <- tb
	}()
	// node-b waits in line before node-a resigns, so the handoff is direct.
	waitKeys(t, name+"/.election/", 2)
	require.NoError(t, ta.Resign(ctx))
	var tb *election.Term
	select {
	case tb = <-won:
	case <-wctx.Done():
		t.Fatal("node-b was not elected")
	}
	require.NotNil(t, tb)
	waitLine(t, out, "leader node-b (token "+itoa(tb.Token())+")", 10*time.Second)
	require.NoError(t, tb.Resign(ctx))
	waitLine(t, out, "no leader", 10*time.Second)
	select {
	case code := <-done:
		assert.Equal(t, 0, code, errOut.String())
	case <-time.After(10 * time.Second):
		t.Fatal("leader --watch --count 3 did not end after three lines")
	}
	t.Log("\n" + out.String())
}
