package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/lock"
)

func TestLock(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := uniq("cli-lock")

	r := concord(t, "lock", name)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `^lock `+name+`: free \(revision \d+\)\n$`, r.stdout)

	holder := lock.New(newKeeper(t), name, lock.WithValue("host-a pid 41"))
	h, err := holder.Lock(ctx)
	require.NoError(t, err)

	// Two waiters, queued one after the other.
	type result struct {
		h   *lock.Hold
		err error
	}
	waiters := make([]chan result, 2)
	for i, v := range []string{"host-b", "host-c"} {
		waiters[i] = make(chan result, 1)
		m := lock.New(newKeeper(t), name, lock.WithValue(v))
		go func() {
			h, err := m.Lock(ctx)
			waiters[i] <- result{h, err}
		}()
		waitKeys(t, name+"/.lock/q/", int64(i+2))
	}

	r = concord(t, "lock", name)
	require.Equal(t, 0, r.code, r.stderr)
	t.Log("\n" + r.stdout)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 5)
	assert.Regexp(t, `^lock `+name+`: held, 2 waiting \(revision \d+\)$`, lines[0])
	assert.Regexp(t, `^ROLE +VALUE +TOKEN +SINCE +LEASE$`, lines[1])
	assert.Regexp(t, `^holder +host-a pid 41 +`+itoa(h.Token())+` +\S+ \((\S+ ago|now)\) +[0-9a-f]+$`, lines[2])
	assert.Regexp(t, `^waiter 1 +host-b `, lines[3])
	assert.Regexp(t, `^waiter 2 +host-c `, lines[4])

	r = concord(t, "--json", "lock", name)
	require.Equal(t, 0, r.code, r.stderr)
	var j struct {
		Holder  lockEntryJSON
		Waiters []lockEntryJSON
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &j))
	assert.Equal(t, h.Token(), j.Holder.Token)
	assert.Equal(t, "host-a pid 41", j.Holder.Value)
	assert.WithinDuration(t, time.Now(), j.Holder.Since, time.Minute)
	require.Len(t, j.Waiters, 2)
	assert.Greater(t, j.Waiters[1].Token, j.Waiters[0].Token)

	// Force: the holder loses the lock, host-b gets it.
	r = concord(t, "lock", "release", name)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "lock "+name+": released the holder with token "+itoa(h.Token())+"; the next waiter is granted\n", r.stdout)
	select {
	case <-h.Context().Done():
		assert.True(t, errors.Is(context.Cause(h.Context()), lock.ErrRevoked))
	case <-ctx.Done():
		t.Fatal("the holder was not told")
	}
	var next result
	select {
	case next = <-waiters[0]:
		require.NoError(t, next.err)
	case <-ctx.Done():
		t.Fatal("host-b was not granted")
	}
	r = concord(t, "lock", name)
	assert.Regexp(t, `holder +host-b +`+itoa(next.h.Token()), r.stdout)

	require.NoError(t, next.h.Unlock(ctx))
	third := <-waiters[1]
	require.NoError(t, third.err)
	require.NoError(t, third.h.Unlock(ctx))
	r = concord(t, "lock", "release", name)
	assert.Equal(t, 1, r.code)
	assert.Equal(t, "concord: lock "+name+": nobody holds it\n", r.stderr)
}

// With --rw, lock shows an RWMutex's sharing readers as holders, and lock
// release forces them all; the writer waiting behind them is granted.
func TestLockRW(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := uniq("cli-rwlock")
	rw := lock.NewRWMutex(newKeeper(t), name, lock.WithValue("reader"))
	r1, err := rw.RLock(ctx)
	require.NoError(t, err)
	r2, err := rw.RLock(ctx)
	require.NoError(t, err)
	type result struct {
		h   *lock.Hold
		err error
	}
	wch := make(chan result, 1)
	go func() {
		h, err := lock.NewRWMutex(newKeeper(t), name, lock.WithValue("writer")).Lock(ctx)
		wch <- result{h, err}
	}()
	waitKeys(t, name+"/.rwlock/q/", 3)

	r := concord(t, "lock", "--rw", name)
	require.Equal(t, 0, r.code, r.stderr)
	t.Log("\n" + r.stdout)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 5)
	assert.Regexp(t, `^lock `+name+`: held by 2 readers, 1 waiting \(revision \d+\)$`, lines[0])
	assert.Regexp(t, `^holder \(reader\) +reader +`+itoa(r1.Token())+` `, lines[2])
	assert.Regexp(t, `^holder \(reader\) +reader +`+itoa(r2.Token())+` `, lines[3])
	assert.Regexp(t, `^waiter 1 +writer `, lines[4])

	r = concord(t, "--json", "lock", "--rw", name)
	require.Equal(t, 0, r.code, r.stderr)
	var j struct {
		Holders []lockEntryJSON
		Waiters []lockEntryJSON
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &j))
	require.Len(t, j.Holders, 2)
	assert.True(t, j.Holders[1].Reader)
	require.Len(t, j.Waiters, 1)

	r = concord(t, "lock", "release", "--rw", name)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "lock "+name+": released 2 holders with tokens ["+itoa(r1.Token())+" "+itoa(r2.Token())+"]; the next waiter is granted\n", r.stdout)
	var w result
	select {
	case w = <-wch:
		require.NoError(t, w.err)
	case <-ctx.Done():
		t.Fatal("the writer was not granted")
	}
	for _, h := range []*lock.Hold{r1, r2} {
		select {
		case <-h.Context().Done():
			assert.ErrorIs(t, context.Cause(h.Context()), lock.ErrRevoked)
		case <-ctx.Done():
			t.Fatal("a reader was not told")
		}
		require.NoError(t, h.Unlock(ctx))
	}
	r = concord(t, "lock", "release", "--rw", name)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "lock "+name+": released the holder with token "+itoa(w.h.Token())+"; the next waiter is granted\n", r.stdout)
	r = concord(t, "lock", "--rw", name)
	assert.Regexp(t, `^lock `+name+`: free`, r.stdout)
	require.NoError(t, w.h.Unlock(ctx))
}
