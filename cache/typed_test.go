package cache_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cache"
)

type config struct {
	Port int    `json:"port"`
	Name string `json:"name,omitempty"`
}

func validPort(c config) error {
	if c.Port < 1 || c.Port > 65535 {
		return fmt.Errorf("port %d out of range", c.Port)
	}
	return nil
}

func put(t *testing.T, key, val string) int64 {
	t.Helper()
	resp, err := cluster.Admin().Put(ctxT(t, 5*time.Second), key, val)
	require.NoError(t, err)
	return resp.Header.Revision
}

func del(t *testing.T, key string) int64 {
	t.Helper()
	resp, err := cluster.Admin().Delete(ctxT(t, 5*time.Second), key)
	require.NoError(t, err)
	return resp.Header.Revision
}

func TestValueKeepsLastGood(t *testing.T) {
	p := prefixFor(t, cluster)
	defer cleanup(t, cluster, p)
	ctx := ctxT(t, 20*time.Second)
	key := p + "config"
	reported := make(chan error, 10)
	v, err := cache.NewValue(ctx, cluster.Client(), key,
		cache.WithValidator(validPort),
		cache.WithDefault(config{Port: 80}),
		cache.WithErrorHandler[config](func(k string, err error) { reported <- err }))
	require.NoError(t, err)
	defer v.Close()

	s := v.Load()
	assert.False(t, s.Exists)
	assert.Equal(t, config{Port: 80}, s.Value)
	assert.NoError(t, s.Err)

	changes := v.Changes(ctx)
	<-changes // the current state

	rev := put(t, key, `{"port": 8080, "name": "a"}`)
	s, err = v.WaitRevision(ctx, rev)
	require.NoError(t, err)
	assert.Equal(t, config{Port: 8080, Name: "a"}, s.Value)
	assert.Equal(t, rev, s.Revision)
	assert.True(t, s.Exists)

	// Invalid values keep the last good one and say why.
	for _, bad := range []string{`{"port": 8080`, `{"port": 0}`, `{"port": 1, "prot": 2}`, `{"port":1} {}`} {
		r := put(t, key, bad)
		s, err = v.WaitRevision(ctx, r)
		require.NoError(t, err)
		assert.Equal(t, config{Port: 8080, Name: "a"}, s.Value, bad)
		assert.Equal(t, rev, s.Revision, bad)
		assert.ErrorIs(t, s.Err, cache.ErrInvalid, bad)
		select {
		case err := <-reported:
			assert.ErrorIs(t, err, cache.ErrInvalid)
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: not reported", bad)
		}
	}
	rev = put(t, key, `{"port": 9090}`)
	s, err = v.WaitRevision(ctx, rev)
	require.NoError(t, err)
	assert.Equal(t, config{Port: 9090}, s.Value)
	assert.NoError(t, s.Err)

	// Changes delivers the newest state, whatever was missed.
	deadline := time.After(5 * time.Second)
	for got := false; !got; {
		select {
		case st := <-changes:
			got = st.Revision == rev
		case <-deadline:
			t.Fatal("Changes never showed the newest state")
		}
	}

	rev = del(t, key)
	s, err = v.WaitRevision(ctx, rev)
	require.NoError(t, err)
	assert.False(t, s.Exists)
	assert.Equal(t, config{Port: 80}, s.Value)

	// A revision that did not touch the key is reached too.
	other := put(t, p+"other", "x")
	defer del(t, p+"other")
	_, err = v.WaitRevision(ctxT(t, 5*time.Second), other)
	require.NoError(t, err)

	require.NoError(t, v.Close())
	for range changes { // a state may still be queued; then it is closed
	}
}

func TestValueInvalidFromStart(t *testing.T) {
	p := prefixFor(t, cluster)
	defer cleanup(t, cluster, p)
	ctx := ctxT(t, 10*time.Second)
	put(t, p+"c", "port: 0")
	v, err := cache.NewValue(ctx, cluster.Client(), p+"c",
		cache.WithDecoder(cache.YAML[config]()), cache.WithValidator(validPort))
	require.NoError(t, err)
	defer v.Close()
	s := v.Load()
	assert.True(t, s.Exists)
	assert.ErrorIs(t, s.Err, cache.ErrInvalid)
	assert.Zero(t, s.Revision)

	rev := put(t, p+"c", "port: 443\nname: tls\n")
	s, err = v.WaitRevision(ctx, rev)
	require.NoError(t, err)
	assert.Equal(t, config{Port: 443, Name: "tls"}, s.Value)

	_, err = cache.NewValue(ctx, cluster.Client(), p+"c", cache.WithValidator(validPort), cache.WithDefault(config{}))
	assert.ErrorIs(t, err, cache.ErrInvalid, "an invalid default is refused")
	_, err = cache.NewValue[config](ctx, cluster.Client(), "")
	assert.ErrorContains(t, err, "cache: empty key")
}

func TestMap(t *testing.T) {
	p := prefixFor(t, cluster)
	defer cleanup(t, cluster, p)
	ctx := ctxT(t, 20*time.Second)
	put(t, p+"a", `{"port": 1}`)
	put(t, p+"b", `{"port": -1}`)
	m, err := cache.NewMap(ctx, cluster.Client(), p, cache.WithValidator(validPort))
	require.NoError(t, err)
	defer m.Close()
	s := m.Load()
	assert.Equal(t, map[string]config{p + "a": {Port: 1}}, s.Values)
	assert.ErrorIs(t, s.Errs[p+"b"], cache.ErrInvalid)

	changes := m.Changes(ctx)
	waitMap := func(ok func(cache.MapState[config]) bool) cache.MapState[config] {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case s := <-changes:
				if ok(s) {
					return s
				}
			case <-deadline:
				t.Fatal("map never reached the expected state")
			}
		}
	}
	rev := put(t, p+"a", `{"port": "x"}`) // a turns invalid: keeps 1
	s = waitMap(func(s cache.MapState[config]) bool { return s.Revision >= rev })
	assert.Equal(t, config{Port: 1}, s.Values[p+"a"])
	assert.ErrorIs(t, s.Errs[p+"a"], cache.ErrInvalid)
	rev = put(t, p+"b", `{"port": 2}`) // b turns valid
	s = waitMap(func(s cache.MapState[config]) bool { return s.Revision >= rev })
	assert.Equal(t, config{Port: 2}, s.Values[p+"b"])
	assert.NotContains(t, s.Errs, p+"b")
	rev = del(t, p+"a")
	s = waitMap(func(s cache.MapState[config]) bool { return s.Revision >= rev })
	assert.NotContains(t, s.Values, p+"a")
	assert.NotContains(t, s.Errs, p+"a")
	v, ok := m.Get(p + "b")
	assert.True(t, ok)
	assert.Equal(t, 2, v.Port)
	_, err = cluster.Admin().Delete(ctx, p, clientv3.WithPrefix())
	require.NoError(t, err)
}

func FuzzJSONDecoder(f *testing.F) {
	for _, seed := range []string{`{"port":1}`, `{"port":1,"name":"x"}`, `{`, `null`, `[]`, `{"port":1e400}`, `{"port":1} x`, "\xff", ""} {
		f.Add([]byte(seed))
	}
	dec := cache.JSON[config]()
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := dec(b)
		if err == nil {
			_ = validPort(v)
		}
	})
}

func FuzzYAMLDecoder(f *testing.F) {
	for _, seed := range []string{"port: 1\n", "port: 1\nname: x\n", "{port: 1}", "port: [", "- 1\n", "&a [*a]", "port: 1\nport: 2\n", "\t", ""} {
		f.Add([]byte(seed))
	}
	dec := cache.YAML[config]()
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := dec(b)
		if err == nil {
			_ = validPort(v)
		}
	})
}
