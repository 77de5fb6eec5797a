// Command locks shows why a distributed lock needs fencing tokens. Four
// workers update one shared account under a fair lock: they are granted it
// in the order they asked. The first holder is then cut off from etcd while
// it is in the middle of an update, as a long GC pause or a network
// partition would do. Its lease expires, the next worker is granted the
// lock, and when the cut-off worker tries to finish its write, the account
// refuses it: its token is older than one the account has already seen
// (the account checks tokens with package fence).
// The same write fenced inside etcd by the lock's Guard is refused too.
//
//	go run ./examples/locks             # on an embedded 3-member cluster
//	go run ./examples/locks -trace      # and print the spans
//	go run ./examples/locks -endpoints https://etcd:2379 -cacert ca.pem -cert me.pem -key me-key.pem -user me
//
// On a cluster given with -endpoints the cut is made in the worker's own
// connections (see exampleenv), so the story is the same on any etcd.
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
	"github.com/concordkit/concord/fence"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/watch"
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
)

// account is the protected resource: a service outside etcd. Its fence
// remembers the largest fencing token it admitted and refuses writes that
// carry a smaller one (fence.ErrStale).
type account struct {
	fence   fence.Register
	mu      sync.Mutex // protects balance for read
	balance int
}

var errGuardFailed = errors.New("guard failed: lock lost")

func (a *account) read() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.balance
}

// write sets the balance if token is not older than any token admitted.
func (a *account) write(token int64, balance int) error {
	return a.fence.Do("account", token, func() error {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.balance = balance
		return nil
	})
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
	if s := e.Started(); s != "" {
		say("%s", s)
	}
	// Each worker's lease outlives an etcd leader failover (see
	// exampleenv.LeaseTTL): only the cut below ends one.
	leaseTTL := e.LeaseTTL()
	if err := e.Retry(ctx, func(ctx context.Context) error {
		_, err := e.Admin.Put(ctx, balanceKey, "0")
		return err
	}); err != nil {
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
		onDeposit = func() { once.Do(func() { close(deposited) }) }
	)

	// worker-1 takes the lock first and reads the balance; the others queue
	// behind it, one after the other, so the grant order is known.
	first := ps[0]
	h1, err := first.lock(ctx, say)
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
		wg.Go(func() { errs <- p.work(ctx, acct, rounds, say, granted, onDeposit) })
		// Wait until it is in the queue before starting the next.
		if err := waitQueued(ctx, e, i+1); err != nil {
			return err
		}
		say("%s asks for the lock and waits (place %d in the queue)", p.name, i+1)
	}

	// Cut worker-1 off in the middle of its update, before it writes. Its
	// lease expires on the server about a TTL later; its keeper gives the
	// lease up, and cancels the hold, a little before.
	e.CutOff(first.cli)
	say("%s is cut off from etcd before it writes (a long pause, a partition)", first.name)
	select {
	case <-h1.Context().Done():
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s to learn it lost the lock: %w", first.name, context.Cause(ctx))
	}
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
	var resp *clientv3.TxnResponse
	err = e.Retry(ctx, func(ctx context.Context) error {
		var err error
		resp, err = first.cli.Txn(ctx).If(h1.Guard()...).Then(clientv3.OpPut(balanceKey, strconv.Itoa(staleBalance))).Commit()
		return err
	})
	switch {
	case err != nil:
		return err
	case resp.Succeeded:
		return errors.New("etcd accepted a write guarded by a lost lock")
	default:
		say("%s's guarded write into etcd is REJECTED too: its lock key is gone", first.name)
	}
	_ = h1.Unlock(ctx) // nothing to release; returns nil for a lost hold

	// Back on the network, worker-1 queues again like anyone else, on the
	// new lease its keeper grants.
	wg.Go(func() { errs <- first.work(ctx, acct, rounds, say, granted, onDeposit) })
	for range workers {
		if err := <-errs; err != nil {
			return err
		}
	}
	mu.Lock()
	say("holders in order (token): %s", strings.Join(order, " → "))
	mu.Unlock()
	var got *clientv3.GetResponse
	if err := e.Retry(ctx, func(ctx context.Context) error {
		got, err = e.Admin.Get(ctx, balanceKey)
		return err
	}); err != nil {
		return err
	}
	want := workers * rounds * deposit
	say("final balance %d at the account and %s in etcd (%d deposits of %d); the stale write was never applied",
		acct.read(), got.Kvs[0].Value, workers*rounds, deposit)
	if acct.read() != want || string(got.Kvs[0].Value) != strconv.Itoa(want) {
		return fmt.Errorf("balance %d / %s, want %d", acct.read(), got.Kvs[0].Value, want)
	}
	return e.Retry(ctx, func(ctx context.Context) error {
		_, err := e.Admin.Delete(ctx, balanceKey)
		return err
	})
}

// lock takes the lock. A Lock that fails with ErrLost is not the end of the
// worker: the lease its request was bound to is gone (expired while the
// worker was cut off, revoked, or revoked by an etcd leader that resumed
// after a pause with a stale view), and the keeper grants the next one. The
// worker waits for it and queues again. A transient etcd error (a leader
// failover) is worth asking again too: a failed Lock has withdrawn its
// request either way.
func (p *participant) lock(ctx context.Context, say func(string, ...any)) (*lock.Hold, error) {
	bo := retry.RequestPolicy.New()
	for {
		h, err := p.m.Lock(ctx)
		switch {
		case err == nil:
			return h, nil
		case errors.Is(err, lock.ErrLost):
			l, lerr := p.k.Lease(ctx)
			if lerr != nil {
				return nil, fmt.Errorf("%s: waiting for a new lease after %w: %w", p.name, err, lerr)
			}
			say("%s lost its place in the queue (%v); it queues again on lease %x", p.name, err, int64(l.ID()))
		case ctx.Err() == nil && retry.Retriable(err):
			say("%s: lock: %v; it asks again", p.name, err)
			if werr := bo.Wait(ctx); werr != nil {
				return nil, werr
			}
		default:
			return nil, fmt.Errorf("%s: lock: %w", p.name, err)
		}
	}
}

// work makes n deposits, each under the lock: read, add, write with the
// token to the account and copy the balance, fenced by the Guard, into etcd.
// A hold lost midway does not lose a deposit: a deposit the account refused
// is made again, and a copy into etcd that was refused is made again under
// the next hold, from the account's balance then.
func (p *participant) work(ctx context.Context, acct *account, n int,
	say func(string, ...any), granted func(*participant, *lock.Hold), onDeposit func()) error {
	ttl := p.k.TTL()
	copied := true // the account's balance is in etcd too
	for made := 0; made < n || !copied; {
		h, err := p.lock(ctx, say)
		if err != nil {
			return err
		}
		granted(p, h)
		if copied {
			balance := acct.read() + deposit
			if err := acct.write(h.Token(), balance); err != nil {
				// A later holder wrote: this hold was lost before the
				// write, and nothing was deposited.
				say("%s holds the lock, token %d: the account refused its deposit (%v); it tries again under a new hold", p.name, h.Token(), err)
				_ = h.Unlock(ctx)
				continue
			}
			made, copied = made+1, false
			say("%s holds the lock, token %d: balance → %d, accepted", p.name, h.Token(), balance)
			onDeposit()
		}
		// The copy is sent again after a transient error while the hold
		// stands: the same balance written twice is harmless, and the
		// guard keeps a copy from landing after the hold is lost.
		balance := acct.read()
		err = exampleenv.Retry(h.Context(), ttl, func(ctx context.Context) error {
			resp, err := p.cli.Txn(ctx).If(h.Guard()...).Then(clientv3.OpPut(balanceKey, strconv.Itoa(balance))).Commit()
			if err == nil && !resp.Succeeded {
				return errGuardFailed
			}
			return err
		})
		switch {
		case err == nil:
			copied = true
		case errors.Is(err, errGuardFailed) || h.Context().Err() != nil:
			say("%s lost the lock (%v) before it copied balance %d into etcd; it tries again under a new hold", p.name, context.Cause(h.Context()), balance)
		default:
			_ = h.Unlock(ctx)
			return fmt.Errorf("%s: fenced write: %w", p.name, err)
		}
		// Unlock is idempotent: sent again after a transient error, it
		// deletes the key if the first one did not.
		if err := exampleenv.Retry(ctx, ttl, h.Unlock); err != nil {
			return fmt.Errorf("%s: unlock: %w", p.name, err)
		}
	}
	return nil
}

// waitQueued waits until the lock has n waiters behind its holder.
func waitQueued(ctx context.Context, e *exampleenv.Env, n int) error {
	// A synced watch, opened before the first read: every change after the
	// read is an event on it, and a watch that had to be opened again
	// (after an auth race, a lost etcd leader) announces its creation
	// revision, so a change made while it was down is not missed either.
	w := watch.Open(ctx, e.Admin, lockName+"/", watch.Config{Options: []clientv3.OpOption{clientv3.WithPrefix()}})
	defer w.Stop()
	for {
		var info *lock.Info
		if err := e.Retry(ctx, func(ctx context.Context) error {
			var err error
			info, err = lock.Inspect(ctx, e.Admin, lockName)
			return err
		}); err != nil {
			return err
		}
		if len(info.Waiters) >= n {
			return nil
		}
		for w.Rev() <= info.Revision {
			if _, err := w.Next(ctx); err != nil {
				return fmt.Errorf("waiting for %d waiters: %w", n, err)
			}
		}
	}
}
