package health_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/health"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster) }

func newKeeper(t *testing.T) *leasekeeper.Keeper {
	t.Helper()
	cli, err := cluster.NewClient()
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	k, err := leasekeeper.New(context.Background(), cli, leasekeeper.WithTTL(cluster.LeaseTTL(2*time.Second)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close(context.Background()) })
	return k
}

// get asks the probe over HTTP and decodes its answer.
func get(t *testing.T, h http.Handler) (int, health.Status) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	var s health.Status
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &s))
	return rec.Code, s
}

// waitState waits, on the keeper's events, until it reaches s.
func waitState(t *testing.T, k *leasekeeper.Keeper, s leasekeeper.State) {
	t.Helper()
	ch, cancel := k.Subscribe()
	defer cancel()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if ok && ev.State == s {
				return
			}
			if !ok {
				require.Equal(t, s, k.State())
				return
			}
		case <-timeout:
			t.Fatalf("keeper never reached %v (now %v)", s, k.State())
		}
	}
}

// The HTTP probe follows the keeper: healthy while Connected, 503 while the
// lease is Lost, healthy again once Reconnected, 503 once Closed.
func TestHTTPFollowsKeeper(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k := newKeeper(t)
	p := health.New(k)

	code, s := get(t, p)
	require.Equal(t, http.StatusOK, code)
	require.True(t, s.Healthy)
	require.Equal(t, "Connected", s.State)
	require.Nil(t, s.Leader)

	// A cut-off client first suspends, then loses its lease.
	cut := k.Client()
	cluster.CutClient(cut)
	waitState(t, k, leasekeeper.Suspended)
	code, s = get(t, p)
	require.Equal(t, http.StatusOK, code, "a suspended keeper's holdings are still valid")
	require.Equal(t, "Suspended", s.State)
	waitState(t, k, leasekeeper.Lost)
	code, s = get(t, p)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.False(t, s.Healthy)
	require.Contains(t, s.Reason, "lease Lost")

	cluster.RestoreClient(cut)
	waitState(t, k, leasekeeper.Reconnected)
	code, s = get(t, p)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, uint64(2), s.Generation)

	require.NoError(t, k.Close(ctx))
	code, s = get(t, p)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "Closed", s.State)

	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/healthz", nil))
	require.Equal(t, http.StatusMethodNotAllowed, rec.Code)
	code, s = get(t, health.New(newKeeper(t), health.RequireLeader()))
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "health: RequireLeader without WithLeadership", s.Reason)
	code, s = get(t, health.New(nil))
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "health: nil keeper", s.Reason)
}

// A keeper that is closing has ended its holdings before it revokes its
// lease, which a cut-off client cannot: the probe is unhealthy from the
// moment the holdings ended, though the state still reads Connected.
func TestUnhealthyWhileClosing(t *testing.T) {
	k := newKeeper(t)
	p := health.New(k)
	cluster.CutClient(k.Client())
	defer cluster.RestoreClient(k.Client())
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		closed <- k.Close(ctx)
	}()
	select {
	case <-k.Current().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the lease's context")
	}
	code, s := get(t, p)
	require.Equal(t, http.StatusServiceUnavailable, code, "healthy while closing: %+v", s)
	<-closed
}

// With RequireLeader, the probe is healthy only while the Leadership holds
// a live term: it follows a resignation, and a term lost to a revoked lease,
// without another Set. The gRPC health service follows the same changes.
func TestLeadershipAndGRPC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k := newKeeper(t)
	var lead health.Leadership
	p := health.New(k, health.WithLeadership(&lead), health.RequireLeader())
	srv := grpchealth.NewServer()
	sctx, stop := context.WithCancel(ctx)
	served := make(chan struct{})
	go func() { p.Serve(sctx, srv, "svc"); close(served) }()
	// waitGRPC follows the service's status on a Watch of the health
	// server (it sends the current status first, then each change).
	waitGRPC := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		w := &watchStream{ctx: wctx, ch: make(chan *healthpb.HealthCheckResponse, 8)}
		go func() { _ = srv.Watch(&healthpb.HealthCheckRequest{Service: "svc"}, w) }()
		for {
			select {
			case r := <-w.ch:
				if r.Status == want {
					return
				}
			case <-ctx.Done():
				t.Fatalf("gRPC status never became %v", want)
			}
		}
	}

	code, s := get(t, p)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "not leader", s.Reason)
	require.False(t, *s.Leader)
	waitGRPC(healthpb.HealthCheckResponse_NOT_SERVING)

	e := election.New(k, "/test/health/"+t.Name())
	term, err := e.Campaign(ctx, "me")
	require.NoError(t, err)
	lead.Set(term)
	code, s = get(t, p)
	require.Equal(t, http.StatusOK, code)
	require.True(t, *s.Leader)
	require.Equal(t, term.Token(), s.Token)
	waitGRPC(healthpb.HealthCheckResponse_SERVING)

	require.NoError(t, term.Resign(ctx))
	code, _ = get(t, p)
	require.Equal(t, http.StatusServiceUnavailable, code)
	waitGRPC(healthpb.HealthCheckResponse_NOT_SERVING)

	term, err = e.Campaign(ctx, "me")
	require.NoError(t, err)
	lead.Set(term)
	waitGRPC(healthpb.HealthCheckResponse_SERVING)
	require.NoError(t, cluster.RevokeLease(ctx, term.Lease()))
	waitGRPC(healthpb.HealthCheckResponse_NOT_SERVING)
	code, s = get(t, p)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.False(t, *s.Leader)

	term, err = e.Campaign(ctx, "me")
	require.NoError(t, err)
	lead.Set(term)
	waitGRPC(healthpb.HealthCheckResponse_SERVING)
	stop()
	<-served
	resp, err := srv.Check(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, resp.Status, "Serve left the service serving")
	require.NoError(t, term.Resign(ctx))
}

// watchStream is the server side of a Watch call, in process.
type watchStream struct {
	healthpb.Health_WatchServer
	ctx context.Context
	ch  chan *healthpb.HealthCheckResponse
}

func (w *watchStream) Context() context.Context { return w.ctx }
func (w *watchStream) Send(r *healthpb.HealthCheckResponse) error {
	select {
	case w.ch <- r:
		return nil
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
}
