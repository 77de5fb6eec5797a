// Package exampletest starts clusters for the examples' tests to reach as a
// user would, with -endpoints and the TLS and user flags: etcd processes
// when CONCORD_ETCD names an etcd binary (testcluster's process mode),
// embedded members otherwise.
package exampletest

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/examples/internal/exampleenv"
	"github.com/concordkit/concord/testcluster"
)

// Mode is how a test cluster is secured.
type Mode string

const (
	// Plain serves clients over plain HTTP, without auth.
	Plain Mode = "plain"
	// MTLS serves clients over mutual TLS.
	MTLS Mode = "mtls"
	// Auth turns etcd authentication on and reaches the cluster as a user
	// whose role grants read and write on Prefix only, as an operator
	// would give an application: every key an example writes must be under
	// it.
	Auth Mode = "auth"
)

// Modes are all the modes, for tests that run an example in each.
var Modes = []Mode{Plain, MTLS, Auth}

// Prefix is the one key prefix the Auth mode's user may read and write.
const Prefix = "examples/"

// Cluster starts a 3-member cluster in mode for t and returns the options
// (flags) that reach it. When t ends the cluster is closed, and then t
// fails if goroutines are left behind.
func Cluster(t *testing.T, mode Mode) exampleenv.Options {
	t.Helper()
	t.Cleanup(func() { testcluster.VerifyNone(t) }) // runs last: cleanups run in reverse
	var opts []testcluster.Option
	switch mode {
	case Plain:
	case MTLS:
		opts = append(opts, testcluster.WithTLS())
	case Auth:
		opts = append(opts, testcluster.WithAuth())
	default:
		t.Fatalf("unknown mode %q", mode)
	}
	ctx := context.Background()
	c, err := testcluster.Start(ctx, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	if b := c.Binary(); b != "" {
		t.Logf("etcd %s processes (%s), %s", c.Version(), b, mode)
	}
	o := exampleenv.Options{Endpoints: strings.Join(c.Endpoints(), ",")}
	if c.Binary() == "" {
		// Embedded members elect a leader within 100 ms, so a shorter TTL
		// than the default for etcd's own timings keeps the tests quick,
		// as -ttl would for a user. Processes keep the default.
		o.TTL = c.FailoverTTL()
	}
	switch mode {
	case MTLS:
		o.CACert, o.Cert, o.Key = c.CertFiles()
	case Auth:
		u, err := c.AddUser(ctx, "example", Prefix)
		require.NoError(t, err)
		o.User = u.Name + ":" + u.Password
	}
	return o
}
