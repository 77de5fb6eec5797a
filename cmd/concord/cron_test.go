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
	defer runScheduler(t, ctx, s)()
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
	assert.Regexp(t, `(?m)^JOB +SPEC +HANDLER +STATE +LAST RUN +OUTCOME +TOKEN +NEXT$`, r.stdout)
	assert.Regexp(t, `(?m)^tick +\* \* \* \* \* \* +- \(in code\) +active +\S+ \(.*\) +(ok|running) +`+itoa(first.Token)+` +\S+`, r.stdout)

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
	assert.Regexp(t, `(?m)^tick +\* \* \* \* \* \* +- \(in code\) +paused .* - \(paused\)$`, r.stdout)

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
	assert.Regexp(t, `(?m)^tick +\* \* \* \* \* \* +- \(in code\) +active `, r.stdout)

	r = concord(t, "cron", "pause", name, "bad/job/.name")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "concord: cron: ")
}

// TestCronDefine: jobs defined, updated and removed from the command line
// are run by the handler they name, on a scheduler that registered it.
func TestCronDefine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	name := uniq("cli-cron-define")

	s := cron.New(newKeeper(t), name, cron.WithValue("replica-a"))
	runs := make(chan string, 100)
	for _, h := range []string{"h1", "h2"} {
		require.NoError(t, s.Handle(h, func(ctx context.Context, r cron.Run) error {
			runs <- r.Job + " by " + h
			return nil
		}))
	}
	stop := runScheduler(t, ctx, s)
	defer func() {
		stop()
		concord(t, "cron", "remove", name, "j")
	}()
	waitRun := func(want string) {
		t.Helper()
		for {
			select {
			case r := <-runs:
				if r == want {
					return
				}
			case <-ctx.Done():
				t.Fatalf("no run %s", want)
			}
		}
	}

	r := concord(t, "cron", "define", name, "j", "* * * * * *", "h1")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "scheduler "+name+": job j defined: * * * * * *, handler h1; the leader follows it on its watch\n", r.stdout)
	waitRun("j by h1")
	r = concord(t, "cron", "status", name)
	assert.Regexp(t, `(?m)^j +\* \* \* \* \* \* +h1 +active `, r.stdout)

	r = concord(t, "cron", "define", name, "j", "* * * * * *", "h1")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "concord: cron: job already defined")

	r = concord(t, "cron", "update", name, "j", "@every 1s", "h2", "--overlap", "allow", "--retries", "2", "--backoff", "1s")
	require.Equal(t, 0, r.code, r.stderr)
	waitRun("j by h2")

	r = concord(t, "cron", "update", name, "j", "@every 1s", "nope")
	require.Equal(t, 0, r.code, r.stderr)
	require.Eventually(t, func() bool {
		r = concord(t, "cron", "status", name)
		return strings.Contains(r.stdout, `job j: no handler "nope" registered in the leader's binary`)
	}, 15*time.Second, 100*time.Millisecond, r.stdout)

	for _, bad := range [][]string{
		{"cron", "update", name, "j", "@every 1s", "h1", "--overlap", "sometimes"},
		{"cron", "define", name, "k", "@every 1s", "h1", "--catch-up", "some"},
		{"cron", "define", name, "k", "@every 1s"},
	} {
		r = concord(t, bad...)
		assert.Equal(t, 2, r.code, "%v: %s", bad, r.stderr)
	}
	r = concord(t, "cron", "define", name, "k", "61 * * * *", "h1")
	assert.Equal(t, 1, r.code)
	assert.Equal(t, "concord: cron: bad schedule spec \"61 * * * *\": end of range (61) above maximum (59): 61\n", r.stderr)
	r = concord(t, "cron", "define", name, "k", "@every 1s", "h1", "--retries", "-1")
	assert.Equal(t, 1, r.code)

	r = concord(t, "cron", "remove", name, "j")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "scheduler "+name+": job j removed, with all its records\n", r.stdout)
	r = concord(t, "cron", "remove", name, "j")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "concord: cron: job not defined")
	r = concord(t, "cron", "status", name)
	assert.NotRegexp(t, `(?m)^j `, r.stdout)
}

// runScheduler runs s until the returned stop is called, which checks that
// Run returned for its context's end.
func runScheduler(t *testing.T, ctx context.Context, s *cron.Scheduler) (stop func()) {
	t.Helper()
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(sctx) }()
	return func() {
		cancel()
		select {
		case err := <-done:
			assert.True(t, errors.Is(err, context.Canceled), "%v", err)
		case <-time.After(20 * time.Second):
			t.Error("the scheduler did not stop")
		}
	}
}
