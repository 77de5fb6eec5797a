package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/examples/internal/exampleenv"
	"github.com/concordkit/concord/testcluster"
)

func TestTaskQueue(t *testing.T) {
	defer testcluster.VerifyNone(t)
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out, exampleenv.Options{Trace: true}))
	s := out.String()
	var story []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "{") { // spans are JSON lines
			story = append(story, l)
		}
	}
	t.Log("\n" + strings.Join(story, "\n"))

	killed := regexp.MustCompile(`KILLED (worker-\d) midway through transcode-video \(step 8 of 20\)`).FindStringSubmatch(s)
	require.NotNil(t, killed, "no kill in:\n%s", s)
	resumed := regexp.MustCompile(`(worker-\d) resumes transcode-video from its checkpoint: step 8 of 20 done \(attempt 2, token \d+\)`).FindStringSubmatch(s)
	require.NotNil(t, resumed, "no resume from the checkpoint in:\n%s", s)
	assert.NotEqual(t, killed[1], resumed[1], "another worker resumes the task")
	assert.Less(t, strings.Index(s, killed[0]), strings.Index(s, resumed[0]))

	// Attempt 2 always fails on a live worker. Attempt 1 may have been a
	// claim the killed worker's queue had taken ahead (claims are batched)
	// and lost with its lease: an attempt all the same, but never printed.
	assert.Regexp(t, `corrupt-archive +attempt 2 of 3 failed \(cannot open archive: checksum mismatch\): retried later`, s)
	assert.Regexp(t, `corrupt-archive +attempt 3 of 3 failed .*: sent to the dead letters`, s)
	assert.Regexp(t, `dead letter \w+ after 3 attempts: `, s)
	assert.Contains(t, s, "producer-1 enqueued 5 tasks")
	assert.Contains(t, s, "producer-2 enqueued 5 tasks")
	assert.Regexp(t, `11 tasks done, 1 dead letter; transcode-video ran steps 1-8 on `+killed[1]+` and 9-20 on `+resumed[1]+`: no step lost, none done twice`, s)
	// Plain progress lines, not bars, when the output is not a terminal.
	assert.Regexp(t, `transcode-video +\[#####\.{15}\]  25%  \(step 5 of 20\)`, s)
	// -trace printed the queue's spans.
	assert.Contains(t, s, `"Name":"queue.dequeue"`)
}
