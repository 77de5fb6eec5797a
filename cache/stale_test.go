package cache_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/cache"
	"github.com/concordkit/concord/testcluster"
)

// A reader whose watch could not resume after a compaction says so when it
// cannot know the newest good value: the writes it missed included one it
// never judged, and the current one is invalid. The minimal case: v1 valid,
// member down, v2 valid, v3 invalid, compaction, member back. v2 no longer
// exists in etcd; the reader holds v1 and must not present it as the
// newest good value.
func TestReaderReportsMissedValues(t *testing.T) {
	tc := testcluster.New(t)
	p := prefixFor(t, tc)
	ctx := ctxT(t, 60*time.Second)
	admin := tc.Admin()
	missed, single, recreated := p+"missed", p+"single", p+"recreated"
	for _, k := range []string{missed, single, recreated} {
		_, err := admin.Put(ctx, k, `{"port": 1}`)
		require.NoError(t, err)
	}
	cli, err := tc.NewClient(testcluster.To(0))
	require.NoError(t, err)
	value := func(key string) *cache.Value[config] {
		v, err := cache.NewValue(ctx, cli, key, cache.WithValidator(validPort), cache.WithDefault(config{Port: 80}))
		require.NoError(t, err)
		t.Cleanup(func() { _ = v.Close() })
		return v
	}
	vm, vs, vr := value(missed), value(single), value(recreated)
	m, err := cache.NewMap(ctx, cli, p, cache.WithValidator(validPort))
	require.NoError(t, err)
	defer m.Close()

	require.NoError(t, tc.Stop(0))
	tc.CutClient(cli) // hold the client off until member 0 has caught up
	for _, w := range []struct{ key, val string }{
		{missed, `{"port": 2}`}, {missed, `{"port": 0}`}, // v2 valid, v3 invalid
		{single, `{"port": 0}`}, // nothing valid missed: v1 is the newest good value
	} {
		_, err := admin.Put(ctx, w.key, w.val)
		require.NoError(t, err)
	}
	_, err = admin.Delete(ctx, recreated)
	require.NoError(t, err)
	_, err = admin.Put(ctx, recreated, `{"port": 0}`)
	require.NoError(t, err)
	rev, err := tc.Compact(ctx)
	require.NoError(t, err)
	require.NoError(t, tc.Restart(ctx, 0))
	waitCompacted(t, tc, 0, rev)
	tc.RestoreClient(cli)

	sm, ss, sr := caughtUp(t, ctx, vm, rev), caughtUp(t, ctx, vs, rev), caughtUp(t, ctx, vr, rev)
	assert.True(t, sm.Stale, "a valid value was missed")
	assert.Equal(t, config{Port: 1}, sm.Value)
	assert.ErrorIs(t, sm.Err, cache.ErrInvalid)

	assert.False(t, ss.Stale, "only the invalid value was missed")
	assert.Equal(t, config{Port: 1}, ss.Value)
	assert.ErrorIs(t, ss.Err, cache.ErrInvalid)

	assert.False(t, sr.Stale)
	assert.Equal(t, config{Port: 80}, sr.Value, "the unseen deletion took the last good value")
	assert.ErrorIs(t, sr.Err, cache.ErrInvalid)

	waitMap(t, ctx, m, rev)
	ms := m.Load()
	assert.Equal(t, map[string]bool{missed: true}, ms.Stale)
	assert.Equal(t, config{Port: 1}, ms.Values[single])
	_, has := ms.Values[recreated]
	assert.False(t, has)

	// The next good value ends the doubt.
	resp, err := admin.Put(ctx, missed, `{"port": 3}`)
	require.NoError(t, err)
	r := resp.Header.Revision
	s, err := vm.WaitRevision(ctx, r)
	require.NoError(t, err)
	assert.False(t, s.Stale)
	assert.Equal(t, config{Port: 3}, s.Value)
	waitMap(t, ctx, m, r)
	assert.Empty(t, m.Load().Stale)
	cleanup(t, tc, p)
}

// caughtUp waits until v reflects revision rev.
func caughtUp(t *testing.T, ctx context.Context, v *cache.Value[config], rev int64) cache.State[config] {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for s := range v.Changes(cctx) {
		if s.CacheRevision >= rev {
			return s
		}
	}
	t.Fatalf("value not caught up with revision %d", rev)
	return cache.State[config]{}
}

func waitMap(t *testing.T, ctx context.Context, m *cache.Map[config], rev int64) {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for s := range m.Changes(cctx) {
		if s.Revision >= rev {
			return
		}
	}
	t.Fatalf("map not caught up with revision %d", rev)
}
