package discovery_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/discovery"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster) }

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// serviceFor returns a name unique to the test and checks, when the test
// ends, that nothing is left under it.
func serviceFor(t *testing.T) string {
	t.Helper()
	name := "/discovery-test/" + strings.ReplaceAll(t.Name(), "/", "-")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := cluster.Admin().Get(ctx, name+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if assert.NoError(t, err) {
			assert.Zero(t, resp.Count, "keys left under %s/", name)
		}
	})
	return name
}

func newKeeper(t *testing.T, cli *clientv3.Client) *leasekeeper.Keeper {
	t.Helper()
	k, err := leasekeeper.New(ctxT(t, 10*time.Second), cli, leasekeeper.WithTTL(2*time.Second))
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close(context.Background()) })
	return k
}

func nextList[T any](t *testing.T, ch <-chan []T, d time.Duration) []T {
	t.Helper()
	select {
	case l, ok := <-ch:
		require.True(t, ok, "changes closed")
		return l
	case <-time.After(d):
		t.Fatalf("no change within %v", d)
		return nil
	}
}

// waitFor reads lists from ch until ok accepts one, with a deadline.
func waitFor[T any](t *testing.T, ch <-chan []T, d time.Duration, ok func([]T) bool) []T {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case l, open := <-ch:
			require.True(t, open, "changes closed")
			if ok(l) {
				return l
			}
		case <-deadline:
			t.Fatalf("condition not met within %v", d)
			return nil
		}
	}
}

func ids(list []discovery.Instance) []string {
	out := make([]string, len(list))
	for i, in := range list {
		out[i] = in.ID
	}
	return out
}

func TestRegisterResolveWatchDeregister(t *testing.T) {
	svc := serviceFor(t)
	ctx := ctxT(t, 20*time.Second)
	k := newKeeper(t, cluster.Client())

	w, err := discovery.Watch(ctx, cluster.Client(), svc)
	require.NoError(t, err)
	defer w.Close()
	list, _ := w.Instances()
	require.Empty(t, list)

	a, err := discovery.Register(ctx, k, svc, "a", "127.0.0.1:1", map[string]string{"zone": "x"})
	require.NoError(t, err)
	b, err := discovery.Register(ctx, k, svc, "b", "127.0.0.1:2", nil)
	require.NoError(t, err)
	assert.Equal(t, svc+"/.discovery/a", a.Key())

	got := waitFor(t, w.Changes(), 5*time.Second, func(l []discovery.Instance) bool { return len(l) == 2 })
	assert.Equal(t, []string{"a", "b"}, ids(got))
	assert.Equal(t, "x", got[0].Metadata["zone"])
	assert.Equal(t, k.Current().ID(), got[0].Lease)

	res, err := discovery.Resolve(ctx, cluster.Client(), svc)
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, ids(res))
	assert.Equal(t, "127.0.0.1:2", res[1].Addr)

	require.NoError(t, a.Update(ctx, map[string]string{"zone": "y"}))
	got = waitFor(t, w.Changes(), 5*time.Second, func(l []discovery.Instance) bool {
		return len(l) == 2 && l[0].Metadata["zone"] == "y"
	})
	assert.Equal(t, "y", got[0].Metadata["zone"])

	require.NoError(t, a.Deregister(ctx))
	require.NoError(t, a.Deregister(ctx)) // idempotent
	assert.ErrorIs(t, a.Update(ctx, nil), discovery.ErrClosed)
	got = waitFor(t, w.Changes(), 5*time.Second, func(l []discovery.Instance) bool { return len(l) == 1 })
	assert.Equal(t, []string{"b"}, ids(got))
	require.NoError(t, b.Deregister(ctx))
	nextList(t, w.Changes(), 5*time.Second)
}

func TestBadInputWritesNothing(t *testing.T) {
	svc := serviceFor(t)
	ctx := ctxT(t, 10*time.Second)
	k := newKeeper(t, cluster.Client())
	cases := []struct {
		name, service, id, addr string
		md                      map[string]string
		want                    string
	}{
		{"empty service", "", "a", "x:1", nil, "discovery: invalid name"},
		{"reserved segment", svc + "/.x", "a", "x:1", nil, "reserved"},
		{"empty id", svc, "", "x:1", nil, "discovery: invalid instance ID: empty"},
		{"slash in id", svc, "a/b", "x:1", nil, "contains '/'"},
		{"dot id", svc, ".a", "x:1", nil, "starts with '.'"},
		{"control in id", svc, "a\n", "x:1", nil, "control character"},
		{"bad utf8 id", svc, "a\xff", "x:1", nil, "UTF-8"},
		{"empty addr", svc, "a", "", nil, "empty address"},
		{"huge metadata", svc, "a", "x:1", map[string]string{"blob": strings.Repeat("x", 2<<20)}, "over the"},
	}
	for _, c := range cases {
		_, err := discovery.Register(ctx, k, c.service, c.id, c.addr, c.md)
		require.ErrorContains(t, err, c.want, c.name)
		assert.True(t, strings.HasPrefix(err.Error(), "discovery: "), c.name)
	}
	_, err := discovery.Join(ctx, k, svc, "m", make([]byte, 2<<20))
	require.ErrorContains(t, err, "discovery: member payload")
	_, err = discovery.Join(ctx, k, "", "m", nil)
	require.ErrorContains(t, err, "discovery: invalid name")
	_, err = discovery.Watch(ctx, cluster.Client(), "bad//name")
	require.ErrorContains(t, err, "discovery: invalid name")
	_, err = discovery.Resolve(ctx, cluster.Client(), "")
	require.Error(t, err)
}

// Another lease cannot take an instance ID that is registered; the owner's
// record is untouched.
func TestDuplicateID(t *testing.T) {
	svc := serviceFor(t)
	ctx := ctxT(t, 10*time.Second)
	k1 := newKeeper(t, cluster.Client())
	k2 := newKeeper(t, cluster.Client())
	r, err := discovery.Register(ctx, k1, svc, "a", "127.0.0.1:1", nil)
	require.NoError(t, err)
	defer r.Deregister(ctx)
	_, err = discovery.Register(ctx, k2, svc, "a", "127.0.0.1:2", nil)
	require.ErrorIs(t, err, discovery.ErrExists)
	res, err := discovery.Resolve(ctx, cluster.Client(), svc)
	require.NoError(t, err)
	require.Len(t, res, 1)
	assert.Equal(t, "127.0.0.1:1", res[0].Addr)
}

// Foreign or damaged values under the service's keys are skipped and
// reported, never a panic.
func TestCorruptRecordsSkipped(t *testing.T) {
	svc := serviceFor(t)
	ctx := ctxT(t, 10*time.Second)
	admin := cluster.Admin()
	prefix := svc + "/.discovery/"
	defer admin.Delete(context.Background(), prefix, clientv3.WithPrefix())
	for key, val := range map[string]string{
		"garbage":   "not json",
		"wrongid":   `{"id":"other","addr":"x:1"}`,
		"noaddr":    `{"id":"noaddr"}`,
		"extra":     `{"id":"extra","addr":"x:1","evil":true}`,
		"nested/id": `{"id":"nested/id","addr":"x:1"}`,
		"good":      `{"id":"good","addr":"x:1"}`,
	} {
		_, err := admin.Put(ctx, prefix+key, val)
		require.NoError(t, err)
	}
	res, err := discovery.Resolve(ctx, cluster.Client(), svc)
	require.ErrorIs(t, err, discovery.ErrCorrupt)
	assert.Equal(t, []string{"good"}, ids(res))

	reported := make(chan string, 10)
	w, err := discovery.Watch(ctx, cluster.Client(), svc, discovery.WithErrorHandler(func(key string, err error) {
		reported <- strings.TrimPrefix(key, prefix)
	}))
	require.NoError(t, err)
	defer w.Close()
	list, _ := w.Instances()
	assert.Equal(t, []string{"good"}, ids(list))
	assert.Len(t, w.Errors(), 5)
	assert.Len(t, reported, 5)
	// A corrupt record that becomes valid is picked up; a valid one that
	// becomes corrupt is dropped.
	_, err = admin.Put(ctx, prefix+"garbage", `{"id":"garbage","addr":"x:2"}`)
	require.NoError(t, err)
	_, err = admin.Put(ctx, prefix+"good", `{`)
	require.NoError(t, err)
	got := waitFor(t, w.Changes(), 5*time.Second, func(l []discovery.Instance) bool {
		return len(l) == 1 && l[0].ID == "garbage"
	})
	assert.Equal(t, "x:2", got[0].Addr)
}

// A registration comes back on the keeper's next lease generation after its
// lease was revoked on the server.
func TestReRegisteredOnNewLease(t *testing.T) {
	svc := serviceFor(t)
	ctx := ctxT(t, 20*time.Second)
	k := newKeeper(t, cluster.Client())
	w, err := discovery.Watch(ctx, cluster.Client(), svc)
	require.NoError(t, err)
	defer w.Close()
	r, err := discovery.Register(ctx, k, svc, "a", "127.0.0.1:1", map[string]string{"v": "1"})
	require.NoError(t, err)
	defer r.Deregister(ctx)
	first := waitFor(t, w.Changes(), 5*time.Second, func(l []discovery.Instance) bool { return len(l) == 1 })
	l1 := k.Current()

	events, unsub := k.Subscribe()
	defer unsub()
	require.NoError(t, cluster.RevokeLease(ctx, l1.ID()))
	waitFor(t, w.Changes(), 5*time.Second, func(l []discovery.Instance) bool { return len(l) == 0 })
	// Between generations, Update keeps the metadata for the next one.
	deadline := time.After(10 * time.Second)
	for lost := false; !lost; {
		select {
		case ev := <-events:
			lost = ev.State == leasekeeper.Lost
		case <-deadline:
			t.Fatal("keeper never reported the loss")
		}
	}
	_ = r.Update(ctx, map[string]string{"v": "2"})
	got := waitFor(t, w.Changes(), 10*time.Second, func(l []discovery.Instance) bool {
		return len(l) == 1 && l[0].Metadata["v"] == "2"
	})
	assert.NotEqual(t, l1.ID(), got[0].Lease)
	assert.Greater(t, got[0].Revision, first[0].Revision)
	assert.Equal(t, k.Current().ID(), got[0].Lease)
}

func TestGroupMembership(t *testing.T) {
	group := serviceFor(t)
	ctx := ctxT(t, 20*time.Second)
	k1 := newKeeper(t, cluster.Client())
	cli2, err := cluster.NewClient()
	require.NoError(t, err)
	k2 := newKeeper(t, cli2)

	gw, err := discovery.WatchGroup(ctx, cluster.Client(), group)
	require.NoError(t, err)
	defer gw.Close()

	m1, err := discovery.Join(ctx, k1, group, "n1", []byte("payload-1"))
	require.NoError(t, err)
	defer m1.Leave(ctx)
	m2, err := discovery.Join(ctx, k2, group, "n2", []byte("payload-2"))
	require.NoError(t, err)
	_, err = discovery.Join(ctx, k1, group, "n2", nil)
	require.ErrorIs(t, err, discovery.ErrExists)

	got := waitFor(t, gw.Changes(), 5*time.Second, func(l []discovery.Member) bool { return len(l) == 2 })
	assert.Equal(t, "n1", got[0].ID)
	assert.Equal(t, "payload-2", string(got[1].Payload))
	members, err := discovery.Members(ctx, cluster.Client(), group)
	require.NoError(t, err)
	require.Len(t, members, 2)
	require.NoError(t, m1.Update(ctx, []byte("new")))
	waitFor(t, gw.Changes(), 5*time.Second, func(l []discovery.Member) bool {
		return len(l) == 2 && string(l[0].Payload) == "new"
	})

	// n2's process is cut off: it leaves the group when its lease expires.
	cluster.CutClient(cli2)
	got = waitFor(t, gw.Changes(), 10*time.Second, func(l []discovery.Member) bool { return len(l) == 1 })
	assert.Equal(t, "n1", got[0].ID)
	// The dead process stays dead: stop it before it is let back.
	cctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := m2.Leave(cctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Logf("leave while cut off: %v", err)
	}
	_ = k2.Close(cctx)
	cluster.RestoreClient(cli2)
	_ = cli2.Close()
}

// A nil client or keeper is reported as an error, not a panic.
func TestNilClientOrKeeper(t *testing.T) {
	ctx := ctxT(t, 5*time.Second)
	_, err := discovery.Resolve(ctx, nil, "s")
	require.ErrorContains(t, err, "discovery: nil client")
	_, err = discovery.Members(ctx, nil, "g")
	require.ErrorContains(t, err, "discovery: nil client")
	_, err = discovery.Register(ctx, nil, "s", "i1", "127.0.0.1:1", nil)
	require.ErrorContains(t, err, "discovery: nil keeper")
	_, err = discovery.Join(ctx, nil, "g", "m1", nil)
	require.ErrorContains(t, err, "discovery: nil keeper")
}
