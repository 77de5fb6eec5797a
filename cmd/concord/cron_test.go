package main

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/cron"
)

func TestCron(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	name := uniq("cli-cron")

	r := concord(t, "cron", "status", name)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "scheduler "+name+": leader none\nno job has run or been scheduled yet\n", r.stdout)

	s := cron.New(newKeeper(t), name, cron.WithValue("replica-a"))
	runs := make(chan cron.Run, 100)
	require.NoError(t, s.Add("tick", "* * * * * *", func(ctx context.Context, r cron.Run) error {
		runs <- r
		return nil
	}))
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(sctx) }()
	defer func() {
		stop()
		select {
		case err := <-done:
			assert.True(t, errors.Is(err, context.Canceled), "%v", err)
		case <-time.After(20 * time.Second):
			t.Error("the scheduler did not stop")
		}
	}()
	next := func(what string) cron.Run {
		t.Helper()
		select {
		case r := <-runs:
			return r
		case <-ctx.Done():
			t.Fatalf("no run: %s", what)
			return cron.Run{}
		}
	}
	first := next("the first scheduled run")

	// The status is written after the run returns: wait for the next run,
	// so the first one's record is there.
	next("the second scheduled run")
	r = concord(t, "cron", "status", name)
	require.Equal(t, 0, r.code, r.stderr)
	t.Log("\n" + r.stdout)
	assert.Regexp(t, `^scheduler `+name+`: leader replica-a \(token `+itoa(first.Token)+`\)\n`, r.stdout)
	assert.Regexp(t, `(?m)^JOB +SPEC +STATE +LAST RUN +OUTCOME +TOKEN +NEXT$`, r.stdout)
	assert.Regexp(t, `(?m)^tick +\* \* \* \* \* \* +active +\S+ \(.*\) +(ok|running) +`+itoa(first.Token)+` +\S+`, r.stdout)

	r = concord(t, "--json", "cron", "status", name)
	require.Equal(t, 0, r.code, r.stderr)
	var j struct {
		Leader leaderJSON
		Jobs   []cron.JobStatus
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &j))
	assert.Equal(t, "replica-a", j.Leader.Value)
	require.Len(t, j.Jobs, 1)
	assert.Equal(t, "tick", j.Jobs[0].Job)

	r = concord(t, "cron", "pause", name, "tick")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "scheduler "+name+": job tick paused: its scheduled times pass without running until resumed\n", r.stdout)
	r = concord(t, "cron", "status", name)
	assert.Regexp(t, `(?m)^tick +\* \* \* \* \* \* +paused .* - \(paused\)$`, r.stdout)

	// While paused, a trigger still runs the job once.
	r = concord(t, "cron", "trigger", name, "tick")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "scheduler "+name+": job tick triggered: the leader runs it once now\n", r.stdout)
	for {
		r := next("the triggered run")
		if r.Trigger {
			break
		}
		// A scheduled run the leader started before it saw the pause.
	}

	r = concord(t, "cron", "resume", name, "tick")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "scheduler "+name+": job tick resumed: it runs again from its next scheduled time\n", r.stdout)
	for {
		if r := next("a scheduled run after resume"); !r.Trigger {
			break
		}
	}
	r = concord(t, "cron", "status", name)
	assert.Regexp(t, `(?m)^tick +\* \* \* \* \* \* +active `, r.stdout)

	r = concord(t, "cron", "pause", name, "bad/job/.name")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "concord: cron: ")
}
