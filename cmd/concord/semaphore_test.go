package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/semaphore"
)

func TestSemaphore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := uniq("cli-semaphore")

	r := concord(t, "semaphore", name)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `^semaphore `+name+`: 0 of none stored permits in use, 0 holder\(s\), 0 waiting \(revision \d+\)\n$`, r.stdout)

	a, err := semaphore.New(newKeeper(t), name, 3, semaphore.WithValue("job-a")).Acquire(ctx, 2)
	require.NoError(t, err)
	b, err := semaphore.New(newKeeper(t), name, 3, semaphore.WithValue("job-b")).Acquire(ctx, 1)
	require.NoError(t, err)
	// A request for two more waits: only zero are free.
	waiting := make(chan error, 1)
	wctx, stopWaiting := context.WithCancel(ctx)
	defer stopWaiting()
	go func() {
		p, err := semaphore.New(newKeeper(t), name, 3, semaphore.WithValue("job-c")).Acquire(wctx, 2)
		if err == nil {
			err = p.Release(ctx)
		}
		waiting <- err
	}()
	waitKeys(t, name+"/.semaphore/q/", 3)

	r = concord(t, "semaphore", name)
	require.Equal(t, 0, r.code, r.stderr)
	t.Log("\n" + r.stdout)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 5)
	assert.Regexp(t, `^semaphore `+name+`: 3 of 3 permits in use, 2 holder\(s\), 1 waiting`, lines[0])
	assert.Regexp(t, `^ROLE +VALUE +PERMITS +TOKEN +SINCE +LEASE$`, lines[1])
	assert.Regexp(t, `^holder +job-a +2 +`+itoa(a.Token())+` `, lines[2])
	assert.Regexp(t, `^holder +job-b +1 +`+itoa(b.Token())+` `, lines[3])
	assert.Regexp(t, `^waiter 1 +job-c +2 +\d+ `, lines[4])

	r = concord(t, "--json", "semaphore", name)
	require.Equal(t, 0, r.code, r.stderr)
	var j struct {
		Limit   int
		InUse   int `json:"in_use"`
		Holders []semEntryJSON
		Waiters []semEntryJSON
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &j))
	assert.Equal(t, 3, j.Limit)
	assert.Equal(t, 3, j.InUse)
	require.Len(t, j.Holders, 2)
	require.Len(t, j.Waiters, 1)
	assert.Equal(t, "job-c", j.Waiters[0].Value)

	require.NoError(t, a.Release(ctx))
	require.NoError(t, <-waiting, "job-c is granted once job-a releases")
	require.NoError(t, b.Release(ctx))
}
