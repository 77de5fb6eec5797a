package cron

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/internal/retry"
	callturn "github.com/concordkit/concord/internal/turn"
)

// MaxCommitOps is the most operations one Commit takes: etcd's default limit
// of 128 operations per transaction (--max-txn-ops) less the one that Commit
// adds.
const MaxCommitOps = 128 - 1

// commitState is shared by the copies of one Run.
type commitState struct {
	cli *clientv3.Client
	key string // the time's commit record
	// def is a defined job's definition key (empty for a job added in
	// code): a Commit refused while it is gone reports ErrRemoved.
	def    string
	defRev int64
	desc   string // job and time, for errors
	// reserved are the prefixes of the scheduler's keys (its records and
	// its election), which Commit's operations must not touch.
	reserved []string
	// try bounds each try (see Commit).
	try time.Duration

	// turn serializes Commit calls of one run. A call waiting for it gives
	// up when its context ends: the call ahead may retry for as long as its
	// own context lasts while etcd cannot be reached.
	turn      callturn.Turn
	committed atomic.Bool
}

// checkOps refuses operations that touch the scheduler's keys (its records
// and its election's candidates), also inside nested transactions, or that
// are too large for one request.
func (c *commitState) checkOps(ops []clientv3.Op) error {
	return guard.CheckOps("cron: commit of "+c.desc, ops, guard.MaxRequestBytes, c.reserved...)
}

// reservedPrefixes are the prefixes of the keys of the scheduler named name:
// its records and its election's candidates.
func reservedPrefixes(name string) []string {
	return []string{keysOf(name).prefix, names.Prefix(name, "election")}
}

func (l *leader) newCommit(j *jobRun, r Run) *commitState {
	def := ""
	if j.defRev != 0 {
		def = l.s.keys.def(j.name)
	}
	return &commitState{
		def:      def,
		defRev:   j.defRev,
		cli:      l.cli(),
		key:      l.s.keys.done(j.name, r.Time, r.Trigger),
		reserved: reservedPrefixes(l.s.name),
		desc:     fmt.Sprintf("%s at %s", j.name, r.Time.Format(time.RFC3339Nano)),
		try:      l.try(),
		turn:     callturn.New(),
	}
}

// Commit applies ops in one transaction that also records that this
// scheduled time's effects are done, if the run's leadership still stands
// and no attempt of the same time committed before. Together with WithRerun
// it makes effects in etcd exactly once per scheduled time: a time whose
// run was interrupted runs again under the next leader, and the rerun's
// Commit is refused if the interrupted run had committed.
//
// It returns nil once applied (also when an earlier try's reply was lost
// and it turns out to have applied), an error wrapping ErrCommitted when
// the time was committed already, an error wrapping election.ErrLost when
// leadership is gone (nothing applied), or ctx's cause while the outcome is
// unknown (a rerun's Commit then settles it). Transient errors are retried
// until ctx ends. At most MaxCommitOps operations, within etcd's default
// request size; none may touch the scheduler's own keys or its election's.
// Commits of one run take turns; one that is still waiting for its turn
// when ctx ends returns ctx's cause, having sent nothing. Cost: one
// transaction. The commit record it writes
// is deleted by a later claim of the job, once the time is no longer open.
func (r Run) Commit(ctx context.Context, ops ...clientv3.Op) error {
	c := r.commit
	if c == nil || r.term == nil {
		return errors.New("cron: Commit of a Run that no scheduler started")
	}
	if len(ops) > MaxCommitOps {
		return fmt.Errorf("cron: commit of %s: %d operations, more than %d", c.desc, len(ops), MaxCommitOps)
	}
	if err := c.checkOps(ops); err != nil {
		return err
	}
	if err := c.turn.Take(ctx); err != nil {
		return fmt.Errorf("cron: commit of %s, behind another Commit of the run (nothing sent): %w", c.desc, err)
	}
	defer c.turn.Done()
	if c.committed.Load() {
		return fmt.Errorf("%w: %s committed by this run before", ErrCommitted, c.desc)
	}
	rec, err := encode(doneRecord{Token: r.Token, Attempt: r.Attempt, At: time.Now().UnixNano()})
	if err != nil {
		return err
	}
	cmps := append(r.Guard(), clientv3.Compare(clientv3.CreateRevision(c.key), "=", 0))
	reads := []clientv3.Op{clientv3.OpGet(c.key)}
	if c.def != "" {
		reads = append(reads, clientv3.OpGet(c.def, clientv3.WithKeysOnly()))
	}
	then := append(ops[:len(ops):len(ops)], clientv3.OpPut(c.key, rec))
	bo := retry.RequestPolicy.New()
	tr := newTries(c.try)
	for {
		// Each try is bounded: a request stuck on a member that lost the
		// Raft leadership waits for etcd's own request timeout, longer than
		// a term may last. A later try settles an earlier one applied late:
		// it finds the record with this run's token and attempt.
		tctx, cancel := tr.next(ctx)
		resp, err := c.cli.Txn(tctx).If(cmps...).Then(then...).Else(reads...).Commit()
		tr.ended(err)
		cancel()
		if err == nil {
			if resp.Succeeded {
				c.committed.Store(true)
				return nil
			}
			kvs := resp.Responses[0].GetResponseRange().Kvs
			if len(kvs) == 0 {
				if d := resp.Responses[len(resp.Responses)-1].GetResponseRange().Kvs; c.def != "" && (len(d) == 0 || d[0].CreateRevision != c.defRev) {
					return fmt.Errorf("%w: commit of %s refused", ErrRemoved, c.desc)
				}
				return fmt.Errorf("cron: commit of %s refused: %w", c.desc, election.ErrLost)
			}
			d, derr := decodeDone(kvs[0].Value)
			if derr != nil {
				return fmt.Errorf("cron: commit of %s: %w (key %s)", c.desc, derr, c.key)
			}
			if d.Token == r.Token && d.Attempt == r.Attempt {
				// An earlier try applied; its reply was lost.
				c.committed.Store(true)
				return nil
			}
			return fmt.Errorf("%w: %s by attempt %d of term %d", ErrCommitted, c.desc, d.Attempt, d.Token)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("cron: commit of %s, outcome unknown: %w", c.desc, context.Cause(ctx))
		}
		if !retry.Unknown(err) {
			return fmt.Errorf("cron: commit of %s: %w", c.desc, err)
		}
		if werr := bo.Wait(ctx); werr != nil {
			return fmt.Errorf("cron: commit of %s, outcome unknown: %w", c.desc, werr)
		}
	}
}

// tries bounds the tries of one request that is retried on an unknown
// outcome (retry.Bounds): the first by its full bound, those after a try
// that ran out of time shorter at first, so that a request that met a dead
// etcd leader goes through soon after the next one is elected.
type tries struct {
	bounds   *retry.Bounds
	timedOut bool
	parent   context.Context
	cur      context.Context
}

func newTries(full time.Duration) *tries { return &tries{bounds: retry.NewBounds(full)} }

// next returns the context of the next try, under ctx.
func (t *tries) next(ctx context.Context) (context.Context, context.CancelFunc) {
	var cancel context.CancelFunc
	t.parent = ctx
	t.cur, cancel = context.WithTimeout(ctx, t.bounds.Next(t.timedOut))
	return t.cur, cancel
}

// ended records how the try ended.
func (t *tries) ended(err error) {
	t.timedOut = err != nil && t.cur.Err() != nil && t.parent.Err() == nil
}
