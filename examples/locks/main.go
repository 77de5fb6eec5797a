// Command locks shows why a distributed lock needs fencing tokens. Four
// workers update one shared account under a fair lock: they are granted it
// in the order they asked. The first holder is then cut off from etcd while
// it is in the middle of an update, as a long GC pause or a network
// partition would do. Its lease expires, the next worker is granted the
// lock, and when the cut-off worker tries to finish its write, the account
// refuses it: its token is older than one the account has already seen.
// The same write fenced inside etcd by the lock's Guard is refused too.
//
//	go run ./examples/locks             # on an embedded 3-member cluster
//	go run ./examples/locks -trace      # and print the spans
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/examples/internal/exampleenv"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/lock"
)

func main() {
	var o exampleenv.Options
	fs := flag.NewFlagSet("locks", flag.ExitOnError)
	o.Register(fs)
	_ = fs.Parse(os.Args[1:])
	if err := run(context.Background(), os.Stdout, o); err != nil {
		fmt.Fprintln(os.Stderr, "locks:", err)
		os.Exit(1)
	}
}

const (
	lockName   = "examples/locks/account"
	balanceKey = "examples/locks/balance" // the same account, kept in etcd
	workers    = 4
	rounds     = 2 // deposits per worker
	deposit    = 10
	leaseTTL   = 2 * time.Second
)

// account is the protected resource: a service outside etcd that remembers
// the largest fencing token it has seen and refuses writes that carry a
// smaller one.
type account struct {
	mu       sync.Mutex // protects the fields below
	balance  int
	maxToken int64
}

var errStaleToken = errors.New("stale fencing token")

func (a *account) read() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.balance
}

// write sets the balance if token is not older than any token seen.
func (a *account) write(token int64, balance int) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if token < a.maxToken {
		return fmt.Errorf("%w: %d < %d", errStaleToken, token, a.maxToken)
	}
	a.maxToken, a.balance = token, balance
	return nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// participant is one worker process: its own client, lease and lock value.
type participant struct {
	name string
	cli  *clientv3.Client
	k    *leasekeeper.Keeper
	m    *lock.Mutex
}

func run(ctx context.Context, out io.Writer, o exampleenv.Options) error {
	ctx, cancel := context.WithTimeout(ctx, 55*time.Second)
	defer cancel()
	out = &lockedWriter{w: out}
	start := time.Now()
	say := func(format string, args ...any) {
		fmt.Fprintf(out, "%6.2fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	e, err := exampleenv.Setup(ctx, out, o)
	if err != nil {
		return err
	}
	defer e.Close()
	if e.Embedded() {
		say("started an embedded 3-member etcd cluster")
	}
	if _, err := e.Admin.Put(ctx, balanceKey, "0"); err != nil {
		return err
	}

	ps := make([]*participant, workers)
	defer func() {
		for _, p := range ps {
			if p != nil {
				e.Restore(p.cli)
				kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), leaseTTL)
				p.k.Close(kctx)
				kcancel()
			}
		}
	}()
	for i := range ps {
		p := &participant{name: fmt.Sprintf("worker-%d", i+1)}
		if p.cli, err = e.NewClient(); err != nil {
			return err
		}
		if p.k, err = leasekeeper.New(ctx, p.cli, leasekeeper.WithTTL(leaseTTL)); err != nil {
			return err
		}
		p.m = lock.New(p.k, lockName, lock.WithValue(p.name))
		ps[i] = p
	}
	acct := &account{}

	var (
		mu        sync.Mutex // protects order
		order     []string
		deposited = make(chan struct{}) // closed after the first deposit is told
		once      sync.Once
		granted   = func(p *participant, h *lock.Hold) {
			mu.Lock()
			order = append(order, fmt.Sprintf("%s(%d)", p.name, h.Token()))
			mu.Unlock()
		}
		told = func(format string, args ...any) {
			say(format, args...)
			once.Do(func() { close(deposited) })
		}
	)

	// worker-1 takes the lock first and reads the balance; the others queue
	// behind it, one after the other, so the grant order is known.
	first := ps[0]
	h1, err := first.m.Lock(ctx)
	if err != nil {
		return err
	}
	granted(first, h1)
	say("%s holds the lock, token %d; it reads the balance (%d) to add %d", first.name, h1.Token(), acct.read(), deposit)
	staleBalance := acct.read() + deposit

	errs := make(chan error, workers)
	var wg sync.WaitGroup
	defer func() {
		cancel() // a worker still waiting for the lock gives up
		wg.Wait()
	}()
	for i, p := range ps[1:] {
		wg.Go(func() { errs <- p.work(ctx, acct, rounds, told, granted) })
		// Wait until it is in the queue before starting the next.
		if err := waitQueued(ctx, e.Admin, i+1); err != nil {
			return err
		}
		say("%s asks for the lock and waits (place %d in the queue)", p.name, i+1)
	}

	// Cut worker-1 off in the middle of its update, before it writes.
	if err := e.CutOff(ctx, first.cli, h1.Lease()); err != nil {
		return err
	}
	if e.Embedded() {
		say("%s is cut off from etcd before it writes (a long pause, a partition)", first.name)
	} else {
		say("%s's lease is revoked before it writes (on a real cluster; the embedded one cuts the client off)", first.name)
	}
	<-h1.Context().Done()
	say("%s: its lock context is canceled: %v — a careful worker stops here", first.name, context.Cause(h1.Context()))

	// The next holder's first write shows up at the account; then the
	// cut-off worker, unaware or careless, tries to finish its own.
	select {
	case <-deposited:
	case <-ctx.Done():
		return fmt.Errorf("waiting for the next holder's deposit: %w", context.Cause(ctx))
	}
	if err := acct.write(h1.Token(), staleBalance); err != nil {
		say("%s writes balance %d with its old token %d: REJECTED by the account (%v)", first.name, staleBalance, h1.Token(), err)
	} else {
		return fmt.Errorf("the account accepted a write with the stale token %d", h1.Token())
	}
	e.Restore(first.cli)
	resp, err := first.cli.Txn(ctx).If(h1.Guard()...).Then(clientv3.OpPut(balanceKey, strconv.Itoa(staleBalance))).Commit()
	switch {
	case err != nil:
		return err
	case resp.Succeeded:
		return errors.New("etcd accepted a write guarded by a lost lock")
	default:
		say("%s's guarded write into etcd is REJECTED too: its lock key is gone", first.name)
	}
	_ = h1.Unlock(ctx) // nothing to release; returns nil for a lost hold

	// Back on the network, worker-1 queues again like anyone else.
	wg.Go(func() { errs <- first.work(ctx, acct, rounds, say, granted) })
	for range workers {
		if err := <-errs; err != nil {
			return err
		}
	}
	mu.Lock()
	say("holders in order (token): %s", strings.Join(order, " → "))
	mu.Unlock()
	got, err := e.Admin.Get(ctx, balanceKey)
	if err != nil {
		return err
	}
	want := workers * rounds * deposit
	say("final balance %d at the account and %s in etcd (%d deposits of %d); the stale write was never applied",
		acct.read(), got.Kvs[0].Value, workers*rounds, deposit)
	if acct.read() != want || string(got.Kvs[0].Value) != strconv.Itoa(want) {
		return fmt.Errorf("balance %d / %s, want %d", acct.read(), got.Kvs[0].Value, want)
	}
	_, err = e.Admin.Delete(ctx, balanceKey)
	return err
}

// work makes n deposits, each under the lock: read, add, write with the
// token to the account and, fenced by the Guard, into etcd.
func (p *participant) work(ctx context.Context, acct *account, n int,
	say func(string, ...any), granted func(*participant, *lock.Hold)) error {
	for range n {
		h, err := p.m.Lock(ctx)
		if err != nil {
			return fmt.Errorf("%s: lock: %w", p.name, err)
		}
		granted(p, h)
		balance := acct.read() + deposit
		if err := acct.write(h.Token(), balance); err != nil {
			_ = h.Unlock(ctx)
			return fmt.Errorf("%s: the account refused token %d: %w", p.name, h.Token(), err)
		}
		resp, err := p.cli.Txn(h.Context()).If(h.Guard()...).Then(clientv3.OpPut(balanceKey, strconv.Itoa(balance))).Commit()
		if err == nil && !resp.Succeeded {
			err = errors.New("guard failed: lock lost")
		}
		if err != nil {
			_ = h.Unlock(ctx)
			return fmt.Errorf("%s: fenced write: %w", p.name, err)
		}
		say("%s holds the lock, token %d: balance → %d, accepted", p.name, h.Token(), balance)
		if err := h.Unlock(ctx); err != nil {
			return fmt.Errorf("%s: unlock: %w", p.name, err)
		}
	}
	return nil
}

// waitQueued waits until the lock has n waiters behind its holder.
func waitQueued(ctx context.Context, cli *clientv3.Client, n int) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	info, err := lock.Inspect(ctx, cli, lockName)
	if err != nil {
		return err
	}
	w := cli.Watch(wctx, lockName+"/", clientv3.WithPrefix(), clientv3.WithRev(info.Revision+1))
	for len(info.Waiters) < n {
		select {
		case _, ok := <-w:
			if !ok {
				return fmt.Errorf("waiting for %d waiters: %w", n, context.Cause(ctx))
			}
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		if info, err = lock.Inspect(ctx, cli, lockName); err != nil {
			return err
		}
	}
	return nil
}
