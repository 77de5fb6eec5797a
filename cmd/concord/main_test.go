package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) {
	// The test binary is the CLI when a test runs it as a program of its
	// own (under a terminal, TestRunOnATerminal).
	if os.Getenv("CONCORD_TEST_AS_CLI") != "" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	testcluster.Main(m, &cluster)
}

// result is what one run of the CLI left behind.
type result struct {
	code           int
	stdout, stderr string
}

// concordOn runs the CLI against the given endpoints with the given
// arguments and a deadline.
func concordOn(t *testing.T, endpoints []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	all := append([]string{"--endpoints", strings.Join(endpoints, ","), "--dial-timeout", "5s"}, args...)
	code := run(ctx, all, &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

func concord(t *testing.T, args ...string) result {
	t.Helper()
	return concordOn(t, cluster.Endpoints(), args...)
}

// lineWriter hands each complete line written to it to a channel, for
// tests that must react to what a running command printed.
type lineWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	all   bytes.Buffer
	lines chan string
}

func newLineWriter() *lineWriter { return &lineWriter{lines: make(chan string, 1024)} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all.Write(p)
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.Reset()
			w.buf.WriteString(line)
			return len(p), nil
		}
		w.lines <- strings.TrimSuffix(line, "\n")
	}
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

// waitLine waits for a line containing want, failing the test after d.
func waitLine(t *testing.T, w *lineWriter, want string, d time.Duration) string {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case l := <-w.lines:
			if strings.Contains(l, want) {
				return l
			}
		case <-timeout:
			t.Fatalf("no line containing %q within %v; got:\n%s", want, d, w.String())
		}
	}
}

func TestUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	require.Equal(t, 0, run(context.Background(), nil, &out, &errOut))
	assert.Contains(t, out.String(), "usage: concord")
	assert.Contains(t, out.String(), "queue status <name> <id>")
	assert.Contains(t, out.String(), "--dial-timeout")

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"lock"}, "takes 1 argument(s), got 0"},
		{[]string{"queue", "status", "q"}, "concord queue status <name> <id>: takes 2 argument(s), got 1"},
		{[]string{"watch", "a", "b"}, "takes 1 argument(s), got 2"},
		{[]string{"--no-such-flag", "lock", "x"}, "flag provided but not defined: -no-such-flag"},
		{[]string{"--endpoints", "", "watch", "x"}, "--endpoints: no endpoint given"},
		{[]string{"--cert", "c.pem", "watch", "x"}, "--cert needs --key"},
		{[]string{"--user", "alice", "watch", "x"}, "no password: give --user alice:PASSWORD or set CONCORD_PASSWORD"},
		{[]string{"--dial-timeout", "0s", "watch", "x"}, "--dial-timeout must be positive"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Setenv("CONCORD_PASSWORD", "")
			var out, errOut bytes.Buffer
			code := run(context.Background(), tc.args, &out, &errOut)
			assert.Equal(t, 2, code, errOut.String())
			assert.Contains(t, errOut.String(), tc.want)
			assert.Contains(t, errOut.String(), "usage: concord", "the usage follows a command-line error")
		})
	}
}

func TestParseArgs(t *testing.T) {
	var o options
	words, err := parseArgs(newFlagSet(&o), []string{"--json", "lock", "--dial-timeout=2s", "release", "x", "--", "--odd-name"})
	require.NoError(t, err)
	assert.Equal(t, []string{"lock", "release", "x", "--odd-name"}, words)
	assert.True(t, o.json)
	assert.Equal(t, 2*time.Second, o.dialTimeout)

	cmd, rest, err := findCommand([]string{"lock", "release", "x"})
	require.NoError(t, err)
	assert.Equal(t, "lock release", cmd.path)
	assert.Equal(t, []string{"x"}, rest)
	// A lock named "release" can still be shown.
	cmd, rest, err = findCommand([]string{"lock", "release"})
	require.NoError(t, err)
	assert.Equal(t, "lock", cmd.path)
	assert.Equal(t, []string{"release"}, rest)
}

// A cluster that does not answer is reported within the dial timeout, both
// when nothing listens (connection refused) and when something accepts the
// connection but never speaks (a black hole: the case that hangs clients).
func TestUnreachable(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedAddr := closed.Addr().String()
	require.NoError(t, closed.Close())

	silent, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer silent.Close()
	// The kernel completes the handshakes; nobody reads or writes.

	for name, ep := range map[string]string{"closed port": closedAddr, "silent listener": silent.Addr().String()} {
		t.Run(name, func(t *testing.T) {
			for _, args := range [][]string{
				{"watch", "x"},
				{"--user", "root:pw", "watch", "x"}, // authenticates inside clientv3.New
			} {
				start := time.Now()
				var out, errOut bytes.Buffer
				code := run(context.Background(), append([]string{"--endpoints", ep, "--dial-timeout", "700ms"}, args...), &out, &errOut)
				elapsed := time.Since(start)
				assert.Equal(t, 1, code)
				assert.Contains(t, errOut.String(), "concord: connect to "+ep+": ")
				assert.Less(t, elapsed, 5*time.Second, "must give up about the dial timeout")
				assert.Empty(t, out.String())
				assert.NotContains(t, errOut.String(), "pw", "never print a password")
				t.Logf("%v after %v: %s", args, elapsed.Round(time.Millisecond), strings.TrimSpace(errOut.String()))
			}
		})
	}
	// Closed port and no --user: the message names the dial timeout.
	r := concordOn(t, []string{closedAddr}, "--dial-timeout", "300ms", "watch", "x")
	assert.Contains(t, r.stderr, "no member answered within 300ms (--dial-timeout)")
	assert.Contains(t, r.stderr, "connection refused", "the direct dial says why")
}

func TestWatchFromRevision(t *testing.T) {
	ctx := context.Background()
	cli := cluster.Admin()
	p := uniq("cli-watch-rev") + "/"
	first, err := cli.Put(ctx, p+"a", "1")
	require.NoError(t, err)
	_, err = cli.Put(ctx, p+"b", "hello world")
	require.NoError(t, err)
	_, err = cli.Delete(ctx, p+"a")
	require.NoError(t, err)
	_, err = cli.Put(ctx, strings.TrimSuffix(p, "/")+"-other", "not under the prefix")
	require.NoError(t, err)
	_, err = cli.Put(ctx, p+"c", "\x00\x01binary")
	require.NoError(t, err)

	rev := first.Header.Revision
	r := concord(t, "watch", p, "--rev", itoa(rev), "--count", "4")
	require.Equal(t, 0, r.code, r.stderr)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 4, r.stdout)
	assert.Regexp(t, `^`+itoa(rev)+` +PUT +`+p+`a = 1$`, lines[0])
	assert.Regexp(t, `^\d+ +PUT +`+p+`b = hello world$`, lines[1])
	assert.Regexp(t, `^\d+ +DELETE `+p+`a$`, lines[2])
	assert.Regexp(t, `^\d+ +PUT +`+p+`c = "\\x00\\x01binary"$`, lines[3])
	assert.Contains(t, r.stderr, "from revision "+itoa(rev))

	r = concord(t, "--json", "watch", p, "--rev", itoa(rev), "--count", "3")
	require.Equal(t, 0, r.code, r.stderr)
	var evs []watchEvent
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	for {
		var e watchEvent
		if err := dec.Decode(&e); err == io.EOF {
			break
		} else {
			require.NoError(t, err)
		}
		evs = append(evs, e)
	}
	require.Len(t, evs, 3)
	assert.Equal(t, watchEvent{Type: "PUT", Key: p + "a", Value: "1", Revision: rev, CreateRevision: rev, Version: 1}, evs[0])
	assert.Equal(t, "DELETE", evs[2].Type)
	assert.Equal(t, p+"a", evs[2].Key)
}

// The watch sees what is written after it says it is watching, and ends
// cleanly when its context ends.
func TestWatchLive(t *testing.T) {
	p := uniq("cli-watch-live") + "/"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, errOut := newLineWriter(), newLineWriter()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--endpoints", strings.Join(cluster.Endpoints(), ","), "watch", p}, out, errOut)
	}()
	waitLine(t, errOut, "watching prefix", 10*time.Second)
	_, err := cluster.Admin().Put(ctx, p+"k", "v1")
	require.NoError(t, err)
	waitLine(t, out, "PUT    "+p+"k = v1", 10*time.Second)
	_, err = cluster.Admin().Put(ctx, p+"k", "v2")
	require.NoError(t, err)
	waitLine(t, out, "PUT    "+p+"k = v2", 10*time.Second)

	cancel()
	select {
	case code := <-done:
		assert.Equal(t, 0, code, errOut.String())
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not end after its context was canceled")
	}
}

func TestWatchCompacted(t *testing.T) {
	ctx := context.Background()
	p := uniq("cli-watch-compacted") + "/"
	put, err := cluster.Admin().Put(ctx, p+"a", "1")
	require.NoError(t, err)
	_, err = cluster.Admin().Put(ctx, p+"a", "2")
	require.NoError(t, err)
	_, err = cluster.Compact(ctx)
	require.NoError(t, err)
	r := concord(t, "watch", p, "--rev", itoa(put.Header.Revision))
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "was compacted")
}

// A TLS cluster with authentication, reached with the cluster's certificate
// files and a user restricted to a prefix whose password comes from
// CONCORD_PASSWORD.
func TestTLSAndAuth(t *testing.T) {
	ctx := context.Background()
	c := testcluster.New(t, testcluster.WithSize(1), testcluster.WithTLS(), testcluster.WithAuth())
	ca, cert, key := c.CertFiles()
	require.NotEmpty(t, ca)
	user, err := c.AddUser(ctx, "cli-tenant", "tenant/")
	require.NoError(t, err)
	_, err = c.Admin().Put(ctx, "tenant/x", "secret-free value")
	require.NoError(t, err)
	rev := mustRev(t, c, "tenant/x")
	tlsArgs := []string{"--cacert", ca, "--cert", cert, "--key", key}

	t.Setenv("CONCORD_PASSWORD", user.Password)
	r := concordOn(t, c.Endpoints(), append(tlsArgs, "--user", user.Name, "watch", "tenant/", "--rev", itoa(rev), "--count", "1")...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "PUT    tenant/x = secret-free value")

	// The same user may not read outside its prefix.
	r = concordOn(t, c.Endpoints(), append(tlsArgs, "--user", user.Name, "watch", "other/", "--count", "1")...)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "permission denied")

	// A wrong password is refused, and never printed.
	const wrong = "Wr0ng-Pa55word"
	r = concordOn(t, c.Endpoints(), append(tlsArgs, "--user", user.Name+":"+wrong, "watch", "tenant/", "--count", "1")...)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "authentication failed")
	assert.NotContains(t, r.stderr+r.stdout, wrong)
	assert.NotContains(t, r.stderr+r.stdout, user.Password)

	// Without the CA the server's certificate is not trusted: a clear error
	// within the dial timeout, not a hang.
	start := time.Now()
	r = concordOn(t, c.Endpoints(), "--dial-timeout", "1s", "--user", user.Name, "watch", "tenant/", "--count", "1")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "concord: connect to ")
	assert.Contains(t, r.stderr, "certificate signed by unknown authority")
	assert.Less(t, time.Since(start), 6*time.Second)
	t.Log(r.stderr)

	// A key file that is not a key is named in the error; its content is not shown.
	r = concordOn(t, c.Endpoints(), "--cacert", ca, "--cert", cert, "--key", ca, "watch", "tenant/")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "--key "+ca)
	assert.NotContains(t, r.stderr, "BEGIN")
}

func mustRev(t *testing.T, c *testcluster.Cluster, key string) int64 {
	t.Helper()
	resp, err := c.Admin().Get(context.Background(), key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	return resp.Kvs[0].ModRevision
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

var seq atomic.Int64

// uniq returns a name no other test (or run of a test, with -count) uses on
// the shared cluster.
func uniq(base string) string { return fmt.Sprintf("%s-%d", base, seq.Add(1)) }

// waitKeys waits, by watching, until at least n keys exist under prefix.
func waitKeys(t *testing.T, prefix string, n int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cli := cluster.Admin()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	w := cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for resp.Count < n {
		select {
		case _, ok := <-w:
			require.True(t, ok, "watch on %s ended before %d keys: %v", prefix, n, ctx.Err())
		case <-ctx.Done():
			t.Fatalf("fewer than %d keys under %s after 15s", n, prefix)
		}
		resp, err = cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		require.NoError(t, err)
	}
}
