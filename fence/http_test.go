package fence_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/fence"
)

func TestHandler(t *testing.T) {
	var reg fence.Register
	writes := map[string][]int64{}
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, err := fence.TokenFrom(r.Header)
		require.NoError(t, err)
		writes[r.URL.Path] = append(writes[r.URL.Path], tok)
		w.WriteHeader(http.StatusNoContent)
	})
	srv := httptest.NewServer(fence.Handler(&reg, func(r *http.Request) string { return r.URL.Path }, next))
	t.Cleanup(srv.Close)

	do := func(path string, header ...string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodPut, srv.URL+path, nil)
		require.NoError(t, err)
		for _, h := range header {
			req.Header.Add(fence.Header, h)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		t.Cleanup(func() { _ = resp.Body.Close() })
		return resp
	}
	put := func(path string, tok int64) *http.Response {
		t.Helper()
		return do(path, strconv.FormatInt(tok, 10))
	}

	require.Equal(t, http.StatusNoContent, put("/a", 10).StatusCode)
	require.Equal(t, http.StatusNoContent, put("/a", 10).StatusCode)
	require.Equal(t, http.StatusNoContent, put("/b", 3).StatusCode, "another resource has its own fence")

	resp := put("/a", 9)
	require.Equal(t, http.StatusConflict, resp.StatusCode)
	require.Equal(t, "10", resp.Header.Get(fence.HighestHeader))
	require.ErrorIs(t, fence.ResponseErr(resp), fence.ErrStale)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, "fence: stale token: token 9 for \"/a\", 10 already admitted\n", string(body))

	for _, bad := range [][]string{nil, {"x"}, {"0"}, {"-1"}, {"1", "2"}, {"99999999999999999999"}} {
		resp := do("/a", bad...)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, "token %q", bad)
		require.ErrorIs(t, fence.ResponseErr(resp), fence.ErrNoToken)
	}
	require.NoError(t, fence.ResponseErr(put("/a", 11)))
	require.Equal(t, map[string][]int64{"/a": {10, 10, 11}, "/b": {3}}, writes, "a refused request reached the handler")

	// A 409 of the service itself is not a fence refusal.
	own := httptest.NewRecorder()
	own.WriteHeader(http.StatusConflict)
	require.NoError(t, fence.ResponseErr(own.Result()))

	h := http.Header{}
	fence.SetToken(h, 42)
	tok, err := fence.TokenFrom(h)
	require.NoError(t, err)
	require.Equal(t, int64(42), tok)
}
