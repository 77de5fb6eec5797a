package main

import (
	"bytes"
	"context"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/testcluster"
)

func TestDemo(t *testing.T) {
	defer testcluster.VerifyNone(t)
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out))
	s := out.String()
	t.Log("\n" + s)
	// The states come in this order, and the keeper's loss precedes the
	// server's deletion.
	order := []string{"Connected", "cut the keeper", "Suspended", "Lost", "server deleted demo/holding", "restored", "Reconnected"}
	last := -1
	for _, w := range order {
		i := bytes.Index(out.Bytes(), []byte(w))
		require.Greater(t, i, last, "%q out of order in:\n%s", w, s)
		last = i
	}
	require.Regexp(t, regexp.MustCompile(`deleted demo/holding .* — \d+(\.\d+)?m?s after the keeper declared it lost`), s)
}
