package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/lock"
)

// requireNoKeysUnder fails unless nothing is left under prefix.
func requireNoKeysUnder(t *testing.T, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cluster.Admin().Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	assert.Zero(t, resp.Count, "keys left under %s", prefix)
}

// The child gets the holding's token, key and lease; its exit status is
// passed on, and the holding is released when it exits.
func TestRunPassesHoldingAndStatus(t *testing.T) {
	for _, c := range []struct {
		flags  []string
		prefix string
	}{
		{[]string{"--lock"}, "/.lock/"},
		{[]string{"--leader"}, "/.election/"},
		{[]string{"--permits", "2", "--semaphore"}, "/.semaphore/"},
	} {
		t.Run(c.flags[len(c.flags)-1], func(t *testing.T) {
			name := uniq("cli-run")
			args := append([]string{"run", "--ttl", "5s", "--kill-after", "1s"}, c.flags...)
			args = append(args, name, "--", "sh", "-c", `echo "token=$CONCORD_FENCING_TOKEN key=$CONCORD_KEY lease=$CONCORD_LEASE"; exit 3`)
			r := concord(t, args...)
			require.Equal(t, 3, r.code, r.stderr)
			assert.Regexp(t, `^token=[1-9][0-9]* key=`+name+c.prefix+`\S+ lease=[0-9a-f]+\n$`, r.stdout)
			assert.Contains(t, r.stderr, "concord: run: holding ")
			if c.prefix == "/.semaphore/" {
				// The limit record stays with a semaphore; its permits go.
				requireNoKeysUnder(t, name+"/.semaphore/q/")
			} else {
				requireNoKeysUnder(t, name+"/")
			}
		})
	}
	r := concord(t, "run", "--lock", uniq("cli-run"), "--", "true")
	require.Equal(t, 0, r.code, r.stderr)
	r = concord(t, "run", "--lock", uniq("cli-run"), "--", "sh", "-c", "kill -KILL $$")
	require.Equal(t, 128+int(syscall.SIGKILL), r.code, r.stderr)
}

// Bad command lines are refused before anything is written.
func TestRunBadInput(t *testing.T) {
	name := uniq("cli-run-bad")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"run", "--", "true"}, 2, "give one of --lock, --leader or --semaphore"},
		{[]string{"run", "--lock", name, "--leader", name, "--", "true"}, 2, "give one of"},
		{[]string{"run", "--semaphore", name, "--", "true"}, 2, "--permits 0: a semaphore needs at least 1"},
		{[]string{"run", "--lock", name, "--permits", "2", "--", "true"}, 2, "--permits goes with --semaphore"},
		{[]string{"run", "--lock", name, "--kill-after", "0s", "--", "true"}, 2, "--kill-after 0s: must be positive"},
		{[]string{"run", "--lock", name, "--ttl", "2s", "--kill-after", "1s", "--", "true"}, 2, "--kill-after 1s needs a --ttl over 3s (twice kill-after plus 500ms), got 2s"},
		{[]string{"run", "--lock", name}, 2, "takes at least 1 argument"},
		{[]string{"run", "--lock", name, "--", "no-such-command-here"}, 1, `run: exec: "no-such-command-here": executable file not found`},
		{[]string{"run", "--lock", "", "--leader", "", "--", "true"}, 2, "give one of"},
		{[]string{"run", "--lock", "a//b", "--", "true"}, 1, "lock: invalid name"},
	} {
		r := concord(t, c.args...)
		assert.Equal(t, c.code, r.code, "%q: %s", c.args, r.stderr)
		assert.Contains(t, r.stderr, c.want, "%q", c.args)
	}
	requireNoKeysUnder(t, name)
}

// concord run, cut off from etcd while its child runs, kills the child (which
// ignores SIGTERM) before the next holder of the lock is granted: the child's
// process is gone, reaped, when the waiter's Lock returns. 20 repetitions,
// in parallel.
func TestRunKillsChildBeforeNextHolder(t *testing.T) {
	// A kill-after long enough that a child killed only after it would
	// outlive the lease (the check is shown to fail with the margin left
	// at the keeper's default).
	ttl := cluster.LeaseTTL(4 * time.Second)
	for i := range 20 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			name := uniq("cli-run-cut")
			// The CLI dials the proxies of a client of the test's, so
			// that cutting that client cuts the CLI's connections too.
			cut, err := cluster.NewClient()
			require.NoError(t, err)
			t.Cleanup(func() { _ = cut.Close() })

			out, errOut := newLineWriter(), newLineWriter()
			code := make(chan int, 1)
			go func() {
				code <- run(ctx, []string{"--endpoints", strings.Join(cut.Endpoints(), ","),
					"run", "--lock", name, "--ttl", ttl.String(), "--kill-after", "1s", "--",
					"sh", "-c", `trap "" TERM; echo "pid $$"; while :; do sleep 0.05; done`}, out, errOut)
			}()
			line := waitLine(t, out, "pid ", 20*time.Second)
			pid, err := strconv.Atoi(strings.TrimPrefix(line, "pid "))
			require.NoError(t, err)

			wcli, err := cluster.NewClient()
			require.NoError(t, err)
			t.Cleanup(func() { _ = wcli.Close() })
			k, err := leasekeeper.New(ctx, wcli, leasekeeper.WithTTL(ttl))
			require.NoError(t, err)
			t.Cleanup(func() { _ = k.Close(context.Background()) })
			granted := make(chan error, 1)
			var h *lock.Hold
			go func() {
				var err error
				h, err = lock.New(k, name).Lock(ctx)
				granted <- err
			}()
			waitKeys(t, name+"/.lock/q/", 2)

			cluster.CutClient(cut)
			select {
			case err := <-granted:
				require.NoError(t, err)
			case <-ctx.Done():
				t.Fatal("the waiter was never granted the lock")
			}
			alive := syscall.Kill(pid, 0) // read first: the order is the test
			require.True(t, errors.Is(alive, syscall.ESRCH), "the child (pid %d) still existed when the next holder was granted: %v", pid, alive)

			cluster.RestoreClient(cut)
			select {
			case c := <-code:
				assert.Equal(t, 128+int(syscall.SIGKILL), c, errOut.String())
			case <-ctx.Done():
				t.Fatal("concord run did not return")
			}
			assert.Contains(t, errOut.String(), fmt.Sprintf("lock %s ended (", name))
			require.NoError(t, h.Unlock(ctx))
			requireNoKeysUnder(t, name+"/")
		})
	}
}

// An interrupted concord run (SIGINT or SIGTERM end its context) stops the
// child with SIGTERM, releases the holding, and exits 1 though the child
// exited 0: the work was cut short.
func TestRunInterrupted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := uniq("cli-run-int")
	rctx, interrupt := context.WithCancel(ctx)
	out, errOut := newLineWriter(), newLineWriter()
	code := make(chan int, 1)
	go func() {
		code <- run(rctx, []string{"--endpoints", strings.Join(cluster.Endpoints(), ","),
			"run", "--leader", name, "--ttl", "5s", "--kill-after", "1s", "--",
			"sh", "-c", `trap "echo stopping; exit 0" TERM; echo started; while :; do sleep 0.05; done`}, out, errOut)
	}()
	waitLine(t, out, "started", 20*time.Second)
	interrupt()
	waitLine(t, out, "stopping", 10*time.Second)
	select {
	case c := <-code:
		assert.Equal(t, 1, c, errOut.String())
	case <-ctx.Done():
		t.Fatal("concord run did not return")
	}
	assert.Contains(t, errOut.String(), "concord: run: interrupted: stopping sh")
	requireNoKeysUnder(t, name+"/")
}

// gone reports whether pid has ended: no such process, or a zombie left
// for its new parent to reap.
func gone(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}

// What the command left running in its group when it exited is ended
// before the holding is released.
func TestRunEndsWhatTheCommandLeft(t *testing.T) {
	name := uniq("cli-run-left")
	r := concord(t, "run", "--lock", name, "--kill-after", "1s", "--",
		"sh", "-c", `sleep 30 </dev/null >/dev/null 2>&1 & echo "left $!"; exit 0`)
	require.Equal(t, 0, r.code, r.stderr)
	pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(r.stdout, "left ")))
	require.NoError(t, err, r.stdout)
	assert.True(t, gone(pid), "pid %d, started by the command, outlived concord run", pid)
	requireNoKeysUnder(t, name+"/")
}

// On a terminal the command can read it: it is not put in a background
// process group, where its first read would stop it (SIGTTIN) with the
// lock held. script(1) gives the CLI, run as a program, a terminal.
func TestRunOnATerminal(t *testing.T) {
	if _, err := exec.LookPath("script"); err != nil {
		t.Skip("script(1), from util-linux, is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := uniq("cli-run-tty")
	self, err := os.Executable()
	require.NoError(t, err)
	line := fmt.Sprintf(`%s --endpoints %s run --lock %s -- sh -c 'echo asking; read x; echo got=$x'`,
		self, strings.Join(cluster.Endpoints(), ","), name)
	c := exec.CommandContext(ctx, "script", "-qec", line, "/dev/null")
	c.Env = append(os.Environ(), "CONCORD_TEST_AS_CLI=1")
	in, err := c.StdinPipe()
	require.NoError(t, err)
	out := newLineWriter()
	c.Stdout, c.Stderr = out, out
	require.NoError(t, c.Start())
	waitLine(t, out, "asking", 20*time.Second)
	_, err = io.WriteString(in, "hello\n")
	require.NoError(t, err)
	waitLine(t, out, "got=hello", 10*time.Second)
	require.NoError(t, c.Wait(), out.String())
	requireNoKeysUnder(t, name+"/")
}
