package main

import (
	"bytes"
	"context"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/examples/internal/exampleenv"
	"github.com/concordkit/concord/examples/internal/exampletest"
	"github.com/concordkit/concord/testcluster"
)

// checkStory checks that the states come in order and that the keeper's
// loss precedes the server's deletion.
func checkStory(t *testing.T, s string) {
	t.Helper()
	order := []string{"Connected", "cut the keeper", "Suspended", "Lost", "server deleted examples/leasekeeper/holding", "restored", "Reconnected"}
	last := -1
	for _, w := range order {
		i := bytes.Index([]byte(s), []byte(w))
		require.Greater(t, i, last, "%q out of order", w)
		last = i
	}
	require.Regexp(t, regexp.MustCompile(`deleted examples/leasekeeper/holding .* — \d+(\.\d+)?m?s after the keeper declared it lost`), s)
}

func TestDemo(t *testing.T) {
	defer testcluster.VerifyNone(t)
	var out bytes.Buffer
	err := run(context.Background(), &out, exampleenv.Options{})
	s := out.String()
	t.Log("\n" + s)
	require.NoError(t, err)
	checkStory(t, s)
}

// The same program against an etcd it did not start, reached with
// -endpoints: etcd processes when CONCORD_ETCD is set.
func TestDemoEndpoints(t *testing.T) {
	o := exampletest.Cluster(t, exampletest.Plain)
	var out bytes.Buffer
	err := run(context.Background(), &out, o)
	s := out.String()
	t.Log("\n" + s)
	require.NoError(t, err)
	require.NotContains(t, s, "started a")
	checkStory(t, s)
}
