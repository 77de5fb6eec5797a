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
	"github.com/concordkit/concord/examples/internal/exampletest"
	"github.com/concordkit/concord/testcluster"
)

func TestTaskQueue(t *testing.T) {
	defer testcluster.VerifyNone(t)
	var out bytes.Buffer
	err := run(context.Background(), &out, exampleenv.Options{Trace: true})
	s := out.String()
	var story []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "{") { // spans are JSON lines
			story = append(story, l)
		}
	}
	t.Log("\n" + strings.Join(story, "\n"))
	require.NoError(t, err)
	checkStory(t, s)
	// -trace printed the queue's spans.
	assert.Contains(t, s, `"Name":"queue.dequeue"`)
}

// The same program against an etcd it did not start, reached with
// -endpoints and the TLS and user flags: etcd processes when CONCORD_ETCD is
// set. The kill cuts the worker's own connections there.
func TestTaskQueueEndpoints(t *testing.T) {
	for _, mode := range exampletest.Modes {
		t.Run(string(mode), func(t *testing.T) {
			o := exampletest.Cluster(t, mode)
			var out bytes.Buffer
			err := run(context.Background(), &out, o)
			s := out.String()
			t.Log("\n" + s)
			require.NoError(t, err)
			require.NotContains(t, s, "started a ")
			checkStory(t, s)
		})
	}
}

func checkStory(t *testing.T, s string) {
	t.Helper()
	killed := regexp.MustCompile(`KILLED (worker-\d) midway through transcode-video \(step (\d+) of 20\)`).FindStringSubmatch(s)
	require.NotNil(t, killed, "no kill in:\n%s", s)
	after := s[strings.Index(s, killed[0]):]
	resumed := regexp.MustCompile(`(worker-\d) resumes transcode-video from its checkpoint: step (\d+) of 20 done \(attempt \d+, token \d+\)`).FindStringSubmatch(after)
	require.NotNil(t, resumed, "no resume from the checkpoint after the kill in:\n%s", s)
	assert.NotEqual(t, killed[1], resumed[1], "another worker resumes the task")
	assert.Equal(t, killed[2], resumed[2], "from the killed worker's last checkpoint")
	// The kill comes at step 8 of the first attempt, unless heavy load made
	// an attempt lose its claim on its own before.
	step, _ := strconv.Atoi(killed[2])
	assert.GreaterOrEqual(t, step, 8)
	if !strings.Contains(s[:strings.Index(s, killed[0])], "resumes transcode-video") {
		assert.Equal(t, 8, step, "killed at step 8 of its first attempt")
	}

	// The poison task fails on each attempt a worker holds to the end (a
	// claim the killed worker's queue had taken ahead, claims being
	// batched, is an attempt all the same, but never printed) and ends in
	// the dead letters after its third.
	assert.Regexp(t, `corrupt-archive +attempt \d of 3 failed \(cannot open archive: checksum mismatch\)`, s)
	assert.Regexp(t, `dead letter \w+ after 3 attempts: `, s)
	assert.Contains(t, s, "producer-1 enqueued 5 tasks")
	assert.Contains(t, s, "producer-2 enqueued 5 tasks")
	// The hung task times out on its first attempt, at its second step, and
	// is resumed from its checkpoint on its second.
	hung := regexp.MustCompile(`(worker-\d)  export-ledger +hung at step 2: TIMED OUT after 1s; its claim is released for another worker`).FindStringSubmatch(s)
	require.NotNil(t, hung, "no timeout in:\n%s", s)
	again := regexp.MustCompile(`worker-\d resumes export-ledger from its checkpoint: step 1 of 4 done \(attempt 2, token \d+\)`).FindStringSubmatch(s[strings.Index(s, hung[0]):])
	require.NotNil(t, again, "no second attempt after the timeout in:\n%s", s)
	// The operator's cancel reaches the worker that runs the rebuild, which
	// stops; the task ends canceled, not done.
	cancel := regexp.MustCompile(`CANCEL rebuild-index, which (worker-\d) runs`).FindStringSubmatch(s)
	require.NotNil(t, cancel, "no cancel in:\n%s", s)
	assert.Regexp(t, cancel[1]+`  rebuild-index +CANCELED by an operator: stops, acks nothing`, s[strings.Index(s, cancel[0]):])
	assert.Regexp(t, `1 canceled \(rebuild-index: canceled at \d+%\)`, s)
	m := regexp.MustCompile(`12 tasks done \(export-ledger on its second attempt\), 1 dead letter; transcode-video ran steps (.*): no step lost, none done twice`).FindStringSubmatch(s)
	require.NotNil(t, m)
	assert.Contains(t, m[1], "-"+killed[2]+" on "+killed[1]+", ", "the killed worker's steps end at its kill")
	assert.Contains(t, m[1], ", "+strconv.Itoa(step+1)+"-", "the next steps are done after it")
	// Plain progress lines, not bars, when the output is not a terminal.
	assert.Regexp(t, `transcode-video +\[#####\.{15}\]  25%  \(step 5 of 20\)`, s)
}
