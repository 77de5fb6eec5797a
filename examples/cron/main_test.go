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

func TestCron(t *testing.T) {
	defer testcluster.VerifyNone(t)
	var out bytes.Buffer
	err := run(context.Background(), &out, exampleenv.Options{})
	s := out.String()
	t.Log("\n" + s)
	require.NoError(t, err)

	lead := regexp.MustCompile(`(replica-\d) is the leader \(term token (\d+)\)`).FindStringSubmatch(s)
	require.NotNil(t, lead)
	cut := regexp.MustCompile(`CUT (replica-\d) \(the leader, token (\d+)\) off from etcd`).FindStringSubmatch(s)
	require.NotNil(t, cut)
	assert.Equal(t, lead[1:], cut[1:], "the first leader is cut off")
	over := regexp.MustCompile(`failover: (replica-\d) took over \S+ after (replica-\d) was cut off`).FindStringSubmatch(s)
	require.NotNil(t, over)
	assert.NotEqual(t, over[1], cut[1])
	assert.Equal(t, cut[1], over[2])
	assert.Less(t, strings.Index(s, cut[0]), strings.Index(s, over[0]))

	// Runs before the cut carry the first token, runs after the next one's.
	assert.Regexp(t, `run by `+cut[1]+` \(token `+cut[2]+`\): ledger write accepted`, s)
	assert.Regexp(t, `run by `+over[1]+` \(token \d+\): ledger write accepted`, s)
	assert.Regexp(t, `run by `+over[1]+` \(token \d+, catching up \S+ late\): ledger write accepted`, s,
		"the times missed during the failover are run by the next leader")
	assert.Regexp(t, `scheduled times \S+ to \S+: (\d+) times, (\d+) runs, each time run once; \d+ ledger entries`, s)
	m := regexp.MustCompile(`: (\d+) times, (\d+) runs, each time run once`).FindStringSubmatch(s)
	assert.Equal(t, m[1], m[2])
	tok := regexp.MustCompile(`fencing tokens: (replica-\d) ran with (\d+), (replica-\d) with (\d+)`).FindStringSubmatch(s)
	require.NotNil(t, tok)
	before, _ := strconv.Atoi(tok[2])
	after, _ := strconv.Atoi(tok[4])
	assert.Less(t, before, after, "the next leader's token is larger")
}
