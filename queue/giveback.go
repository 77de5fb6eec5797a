package queue

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/leasekeeper"
)

type unsureKey struct{ key, value string }

// unsureClaim is a claim whose transaction never answered.
type unsureClaim struct {
	lease *leasekeeper.Lease
	until time.Time
}

// unsureFor is how long a claim whose transaction never answered is looked
// out for: longer than etcd takes to apply or drop a proposal it accepted.
const unsureFor = time.Minute

// giveBack is a claim to give back: a buffered task to release, or a claim
// whose transaction did not answer, to delete if it is there with the value
// this Queue wrote.
type giveBack struct {
	seq   int                // identifies it in index.giveBacks
	task  *Task              // a buffered task; or:
	key   string             // a claim key,
	held  clientv3.Cmp       // true while the claim is the one to give back,
	lease *leasekeeper.Lease // and the claim's lease;
	spent bool               // the claim was handed out: its attempt counts
}

// gone reports whether the claim went by itself: its lease or its task's
// claim was lost.
func (g giveBack) gone() bool {
	if g.task != nil {
		return g.task.Context().Err() != nil
	}
	return g.lease.Err() != nil
}

// addGiveBack records a claim that could not be given back.
func (ix *index) addGiveBack(g giveBack) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.addGiveBackLocked(g)
}

func (ix *index) addGiveBackLocked(g giveBack) {
	ix.giveBackSeq++
	g.seq = ix.giveBackSeq
	ix.giveBacks = append(ix.giveBacks, g)
}

// claimRef is a claim key with the comparison that holds while it is the
// claim to give back.
type claimRef struct {
	key  string
	held clientv3.Cmp
}

// giveBackClaims gives back the claims that are still there, in one
// transaction under ctx (which callers bound). If the outcome is unknown,
// the index goroutine retries them until their lease ends; an error that
// says nothing was done (permission, a bad request) is not retried.
func (ix *index) giveBackClaims(ctx context.Context, cs []claimRef, lease *leasekeeper.Lease) {
	ops := make([]clientv3.Op, len(cs))
	for i, c := range cs {
		ops[i] = ix.giveBackOp(c.key, c.held, false)
	}
	_, err := ix.q.cli.Txn(ctx).Then(ops...).Commit()
	if err == nil || !outcomeUnknown(err) {
		return
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for _, c := range cs {
		ix.addGiveBackLocked(giveBack{key: c.key, held: c.held, lease: lease})
	}
}

// giveBackOp deletes claim key ck while held and, unless the claim was
// spent (handed out), counts it as given back unused, so that it spends no
// attempt of the task.
func (ix *index) giveBackOp(ck string, held clientv3.Cmp, spent bool) clientv3.Op {
	ops := []clientv3.Op{clientv3.OpDelete(ck)}
	if !spent {
		id := strings.TrimPrefix(ck, ix.q.keys.claimPrefix())
		ops = append(ops, clientv3.OpPut(ix.q.keys.unused(id), ""))
	}
	return clientv3.OpTxn([]clientv3.Cmp{held}, ops, nil)
}

// outcomeUnknown reports whether a failed request may have been applied, or
// may succeed when tried again.
func outcomeUnknown(err error) bool {
	return retry.Unknown(err)
}

// watchUnsure records claims whose transaction never answered, to be given
// back if the watch shows them land later.
func (ix *index) watchUnsure(keys, values []string, lease *leasekeeper.Lease) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.unsure == nil {
		ix.unsure = map[unsureKey]unsureClaim{}
	}
	until := time.Now().Add(unsureFor)
	for i, k := range keys {
		ix.unsure[unsureKey{k, values[i]}] = unsureClaim{lease: lease, until: until}
	}
}

// retryGiveBacks tries once more, within one 2 s budget, to give back the
// claims that could not be; those that fail again stay for the next tick. A
// claim whose lease is gone went with it.
func (ix *index) retryGiveBacks(ctx context.Context) {
	ix.mu.Lock()
	gs := slices.Clone(ix.giveBacks)
	now := time.Now()
	for k, u := range ix.unsure {
		if now.After(u.until) || u.lease.Err() != nil {
			delete(ix.unsure, k)
		}
	}
	ix.mu.Unlock()
	if len(gs) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	settled := map[int]bool{}
	var claims []giveBack
	for _, g := range gs {
		switch {
		case g.gone():
			settled[g.seq] = true
		case g.task != nil:
			if err := g.task.release(rctx); err == nil || errors.Is(err, ErrLost) || !outcomeUnknown(err) {
				settled[g.seq] = true
			}
		default:
			claims = append(claims, g)
		}
	}
	// One transaction per chunk of claims, each a nested transaction, within
	// the cluster's limit of operations per transaction.
	for _, chunk := range chunkByKey(claims, max(1, ix.q.o.maxTxnOps)) {
		ops := make([]clientv3.Op, len(chunk))
		for i, g := range chunk {
			ops[i] = ix.giveBackOp(g.key, g.held, g.spent)
		}
		if _, err := ix.q.cli.Txn(rctx).Then(ops...).Commit(); err == nil || !outcomeUnknown(err) {
			for _, g := range chunk {
				settled[g.seq] = true
			}
		}
	}
	ix.mu.Lock()
	ix.giveBacks = slices.DeleteFunc(ix.giveBacks, func(g giveBack) bool { return settled[g.seq] })
	ix.mu.Unlock()
}

// chunkByKey splits gs into chunks of at most n with no claim key twice in
// one: one claim key can be recorded twice (two claims sent for it whose
// answers never came), and etcd refuses a transaction that writes a key
// twice (each give-back writes the task's unused counter).
func chunkByKey(gs []giveBack, n int) [][]giveBack {
	var chunks [][]giveBack
	for len(gs) > 0 {
		var chunk, rest []giveBack
		seen := map[string]bool{}
		for _, g := range gs {
			if len(chunk) == n || seen[g.key] {
				rest = append(rest, g)
				continue
			}
			seen[g.key] = true
			chunk = append(chunk, g)
		}
		chunks = append(chunks, chunk)
		gs = rest
	}
	return chunks
}
