package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/term"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/lock"
	"github.com/concordkit/concord/semaphore"
)

// The environment a child of concord run gets, besides its parent's.
const (
	envToken = "CONCORD_FENCING_TOKEN" // the holding's fencing token
	envKey   = "CONCORD_KEY"           // its etcd key
	envLease = "CONCORD_LEASE"         // its lease ID, in hex
)

// killSlack is the time the margin keeps, beyond --kill-after, for the
// SIGKILL to land and the child to be reaped before the server can expire
// the lease.
const killSlack = 500 * time.Millisecond

// exitError ends the CLI with a status of its own, the child's.
type exitError struct {
	code int
	msg  string // printed after "concord: ", if not empty
}

func (e exitError) Error() string { return e.msg }

// held is what run needs of a holding, whichever recipe made it.
type held struct {
	what    string // "lock NAME", for messages
	token   int64
	key     string
	lease   clientv3.LeaseID
	ctx     context.Context // ends when the holding ends
	release func(context.Context) error
}

// runChild is concord run: it takes a lock, an election's leadership or a
// semaphore's permit, runs the command with the holding's token, key and
// lease in its environment, and stops it when the holding ends.
//
// The keeper's margin is --kill-after plus killSlack, so the holding's
// context ends that long before the server can expire the lease and hand
// the holding to anyone else: the child gets SIGTERM then, SIGKILL after
// --kill-after, and is reaped before the next holder can start. Both go to
// the child's process group, so what it started goes too.
func runChild(ctx context.Context, s *session, argv []string) error {
	o := s.opts
	kind, name, err := runTarget(o)
	if err != nil {
		return err
	}
	margin := o.killAfter + killSlack
	if o.killAfter <= 0 {
		return usageError("--kill-after %v: must be positive", o.killAfter)
	}
	if margin >= o.ttl/2 {
		return usageError("--kill-after %v needs a --ttl over %v (twice kill-after plus %v), got %v", o.killAfter, 2*margin, killSlack, o.ttl)
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(o.ttl), leasekeeper.WithMargin(margin))
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	// Closing revokes the lease: whatever release left undone goes with it.
	// Bounded by the TTL: with etcd out of reach the lease expires by then.
	defer func() {
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.ttl)
		defer cancel()
		_ = k.Close(kctx)
	}()

	h, err := acquireFor(ctx, k, kind, name, o.permits)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	fmt.Fprintf(s.stderr, "concord: run: holding %s, token %d; starting %s\n", h.what, h.token, argv[0])

	cmd := exec.Command(path, argv[1:]...)
	cmd.Args[0] = argv[0]
	cmd.Env = append(os.Environ(),
		envToken+"="+strconv.FormatInt(h.token, 10),
		envKey+"="+h.key,
		envLease+"="+strconv.FormatInt(int64(h.lease), 16))
	cmd.Stdin = os.Stdin
	cmd.Stdout, cmd.Stderr = s.stdout, s.stderr
	// Its own process group, so that the signals reach what it started,
	// unless stdin is a terminal: a background group that reads the
	// terminal is stopped (SIGTTIN), and would hold the lock for ever.
	// SIGKILL if this process dies first.
	ownGroup := !term.IsTerminal(int(os.Stdin.Fd()))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: ownGroup, Pdeathsig: syscall.SIGKILL}
	// Output copied from a grandchild that outlives the group is not
	// waited for past the kill.
	cmd.WaitDelay = o.killAfter
	if err := cmd.Start(); err != nil {
		relErr := h.release(context.WithoutCancel(ctx))
		return errors.Join(fmt.Errorf("run: %w", err), relErr)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	g := group{pid: cmd.Process.Pid, own: ownGroup}
	var why string
	select {
	case err = <-done:
		// What the command left running in its group must not outlive
		// the holding either.
		g.clear(o.killAfter)
	case <-h.ctx.Done():
		why = fmt.Sprintf("%s ended (%v): stopping %s", h.what, context.Cause(h.ctx), argv[0])
		err = g.stop(done, o.killAfter)
	case <-ctx.Done():
		why = fmt.Sprintf("interrupted: stopping %s", argv[0])
		err = g.stop(done, o.killAfter)
	}
	if why != "" {
		fmt.Fprintf(s.stderr, "concord: run: %s\n", why)
	}
	relErr := h.release(context.WithoutCancel(ctx))
	code := exitCode(cmd, err)
	if why != "" && code == 0 {
		code = 1 // stopped early: the work is not done, whatever the child said
	}
	if relErr != nil {
		fmt.Fprintf(s.stderr, "concord: run: release %s: %v\n", h.what, relErr)
		code = max(code, 1)
	}
	if code != 0 {
		return exitError{code: code}
	}
	return nil
}

// runTarget reads which holding --lock, --leader or --semaphore asks for.
func runTarget(o *options) (kind, name string, err error) {
	n := 0
	for _, f := range []struct{ kind, name string }{{"lock", o.runLock}, {"leader", o.runLeader}, {"semaphore", o.runSemaphore}} {
		if f.name != "" {
			kind, name = f.kind, f.name
			n++
		}
	}
	switch {
	case n != 1:
		return "", "", usageError("run: give one of --lock, --leader or --semaphore")
	case kind == "semaphore" && o.permits < 1:
		return "", "", usageError("run: --permits %d: a semaphore needs at least 1", o.permits)
	case kind != "semaphore" && o.permits != 0:
		return "", "", usageError("run: --permits goes with --semaphore")
	}
	return kind, name, nil
}

// acquireFor waits for the holding and describes it.
func acquireFor(ctx context.Context, k *leasekeeper.Keeper, kind, name string, permits int) (held, error) {
	host, _ := os.Hostname()
	value := fmt.Sprintf("concord run on %s, pid %d", host, os.Getpid())
	switch kind {
	case "lock":
		h, err := lock.New(k, name, lock.WithValue(value)).Lock(ctx)
		if err != nil {
			return held{}, err
		}
		return held{"lock " + name, h.Token(), h.Key(), h.Lease(), h.Context(), h.Unlock}, nil
	case "leader":
		t, err := election.New(k, name).Campaign(ctx, value)
		if err != nil {
			return held{}, err
		}
		return held{"leadership of " + name, t.Token(), t.Key(), t.Lease(), t.Context(), t.Resign}, nil
	default:
		p, err := semaphore.New(k, name, permits, semaphore.WithValue(value)).Acquire(ctx, 1)
		if err != nil {
			return held{}, err
		}
		return held{fmt.Sprintf("a permit of %s", name), p.Token(), p.Key(), p.Lease(), p.Context(), p.Release}, nil
	}
}

// group is the command's process group (own), or the command alone when
// it shares this process's group (stdin a terminal).
type group struct {
	pid int
	own bool
}

func (g group) signal(sig syscall.Signal) {
	if g.own {
		_ = syscall.Kill(-g.pid, sig)
	} else {
		_ = syscall.Kill(g.pid, sig)
	}
}

// stop sends SIGTERM, SIGKILL after killAfter, and returns the command's
// end, with nothing of its group left.
func (g group) stop(done <-chan error, killAfter time.Duration) error {
	deadline := time.Now().Add(killAfter)
	g.signal(syscall.SIGTERM)
	t := time.NewTimer(killAfter)
	defer t.Stop()
	select {
	case err := <-done:
		// The command is gone; what it started has the rest of the time.
		g.clearBy(deadline)
		return err
	case <-t.C:
	}
	g.signal(syscall.SIGKILL)
	return <-done
}

// clear ends what is left in the command's group after the command exited
// by itself: SIGTERM, then SIGKILL after killAfter if anything is left.
func (g group) clear(killAfter time.Duration) {
	if !g.own || syscall.Kill(-g.pid, 0) != nil {
		return
	}
	g.signal(syscall.SIGTERM)
	g.clearBy(time.Now().Add(killAfter))
}

// clearBy waits until the command's group is empty or the deadline passed,
// and then sends SIGKILL to what is left. The members are not this
// process's children, so their end is polled.
func (g group) clearBy(deadline time.Time) {
	if !g.own {
		return
	}
	for time.Now().Before(deadline) {
		if syscall.Kill(-g.pid, 0) != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	g.signal(syscall.SIGKILL)
}

// exitCode is the status to pass on: the child's, or 128 + the signal that
// ended it, as shells report it.
func exitCode(cmd *exec.Cmd, err error) int {
	if cmd.ProcessState == nil {
		return 1
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if c := cmd.ProcessState.ExitCode(); c >= 0 {
		return c
	}
	if err != nil {
		return 1
	}
	return 0
}
