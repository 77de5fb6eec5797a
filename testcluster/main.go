package testcluster

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Main runs a test package against one cluster shared by all its tests:
//
//	var cluster *testcluster.Cluster
//
//	func TestMain(m *testing.M) { testcluster.Main(m, &cluster) }
//
// It starts the cluster, stores it in *c, runs the tests, closes the cluster
// and then fails the run if any goroutine is left (see LeakOptions). It does
// not return.
func Main(m *testing.M, c **Cluster, opts ...Option) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	cl, err := Start(ctx, opts...)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testcluster: %v\n", err)
		os.Exit(1)
	}
	*c = cl
	code := m.Run()
	if err := cl.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "testcluster: close: %v\n", err)
		code = 1
	}
	if code == 0 {
		if err := findLeaks(20 * time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "testcluster: goroutines left after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// LeakOptions are the goleak options for a package whose tests ran against
// embedded members. After members stop, etcd's peer transport leaves idle
// HTTP keep-alive connections whose read and write loops end by themselves
// 2–4 s later; they belong to etcd's transport, not to any code under test,
// so they are ignored by their exact functions.
//
// A peer's HTTP /version request served while a member shuts down can read
// the storage version from the closed backend (etcd issue 22189, open in
// v3.7.3); the handler's goroutine is then left blocked in etcd's own code
// for good. It is ignored by that handler's function and nothing wider.
//
// Anything else is reported, after ending goroutines were given a few
// seconds to finish.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		// The closure is named after the function it is inlined into.
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/server/v3/etcdserver/api/etcdhttp.newPeerHandler.versionHandler.func1"),
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/server/v3/etcdserver/api/etcdhttp.versionHandler.func1"),
	}
}

// VerifyNone fails t if goroutines other than t's own are left, after
// giving ending ones up to 20 s (see LeakOptions). Use it in a test that
// starts and closes its own clusters without Main.
func VerifyNone(t testing.TB) {
	t.Helper()
	if err := findLeaks(20 * time.Second); err != nil {
		t.Errorf("goroutines left: %v", err)
	}
}

// findLeaks gives goroutines that are already ending (closed gRPC
// connections, stopped servers) up to wait to finish before reporting.
func findLeaks(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := goleak.Find(LeakOptions()...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}
