package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/examples/internal/exampleenv"
	"github.com/concordkit/concord/examples/internal/exampletest"
	"github.com/concordkit/concord/testcluster"
)

func TestConfigWatch(t *testing.T) {
	defer testcluster.VerifyNone(t)
	var out bytes.Buffer
	err := run(context.Background(), &out, exampleenv.Options{})
	s := out.String()
	t.Log("\n" + s)
	require.NoError(t, err)
	checkStory(t, s)
}

// The same program against an etcd it did not start, reached with
// -endpoints and the TLS and user flags: etcd processes when CONCORD_ETCD is
// set.
func TestConfigWatchEndpoints(t *testing.T) {
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
	order := []string{
		`running on the defaults: greeting "hello", max_connections 10, timeout 1s`,
		`operator writes the first config`,
		`service: hot-reloaded config revision`, `: greeting "hello, world", max_connections 100, timeout 500ms`,
		`operator raises max_connections`,
		`max_connections 250, timeout 500ms`,
		`operator writes max_connections -5 by mistake`,
		`service: REJECTED the new config: cache: invalid value: examples/configwatch/service.json at revision`,
		`max_connections must be within 1..10000, got -5`,
		`service: keeps serving with the last good config (revision`, `max_connections 250`,
		`operator misspells a field`,
		`service: REJECTED the new config:`, `unknown field "max_conections"`,
		`service: keeps serving with the last good config (revision`, `max_connections 250`,
		`operator fixes it`,
		`service: hot-reloaded config revision`, `greeting "hello again", max_connections 300, timeout 750ms`,
		`service ends with config revision`,
	}
	last := -1
	for _, w := range order {
		i := strings.Index(s[last+1:], w)
		require.GreaterOrEqual(t, i, 0, "%q missing or out of order after offset %d", w, last)
		last += 1 + i
	}
	require.Equal(t, 2, strings.Count(s, "REJECTED"))
	require.Equal(t, 3, strings.Count(s, "hot-reloaded"))
}

// The same program on a 1-member cluster with TLS and authentication at
// once, as root, with the password from CONCORD_PASSWORD.
func TestConfigWatchRealCluster(t *testing.T) {
	defer testcluster.VerifyNone(t)
	c, err := testcluster.Start(context.Background(), testcluster.WithSize(1), testcluster.WithTLS(), testcluster.WithAuth())
	require.NoError(t, err)
	defer c.Close()
	ca, cert, key := c.CertFiles()
	t.Setenv("CONCORD_PASSWORD", c.Root().Password)
	var out bytes.Buffer
	o := exampleenv.Options{Endpoints: strings.Join(c.Endpoints(), ","), CACert: ca, Cert: cert, Key: key, User: c.Root().Name}
	require.NoError(t, run(context.Background(), &out, o))
	s := out.String()
	t.Log("\n" + s)
	require.NotContains(t, s, "started an embedded")
	require.Contains(t, s, `service: hot-reloaded config revision`)
	require.Contains(t, s, `service ends with config revision`)
}
