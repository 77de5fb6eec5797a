package compat_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/internal/compat"
	"github.com/concordkit/concord/testcluster"
)

func TestSupported(t *testing.T) {
	for v, want := range map[string]bool{
		"3.4.23": false, "3.4.0": false, "3.3.27": false, "2.3.8": false,
		"3.5.0": true, "3.5.36": true, "3.6.17": true, "3.7.3": true, "4.0.0": true,
		"": true, "weird": true,
	} {
		assert.Equal(t, want, compat.Supported(v), v)
	}
}

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster, testcluster.WithSize(1)) }

func TestCheck(t *testing.T) {
	c := cluster
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, compat.Check(ctx, c.Client()), "etcd %s", c.Version())
}

// CONCORD_ETCD_34 names an etcd 3.4 binary (Debian's etcd-server package
// installs one as /usr/bin/etcd); the check must refuse it.
func TestCheckRefuses34(t *testing.T) {
	bin := os.Getenv("CONCORD_ETCD_34")
	if bin == "" {
		t.Skip("CONCORD_ETCD_34 is not set")
	}
	c := testcluster.New(t, testcluster.WithBinary(bin))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := compat.Check(ctx, c.Client())
	require.ErrorIs(t, err, compat.ErrUnsupported)
	require.ErrorContains(t, err, "etcd 3.4.")
}
