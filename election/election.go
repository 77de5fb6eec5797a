package election

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/concordkit/concord/internal/acquiretel"
	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/holding"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/wait"
	"github.com/concordkit/concord/leasekeeper"
)

// checkCandidate reports a key under prefix that no Campaign wrote: a
// candidate key is prefix + 16 hex digits, attached to a lease. Such a key
// would otherwise lead the election, or block every Campaign behind it, for
// good.
func checkCandidate(prefix string, kv *mvccpb.KeyValue) error {
	if rest, ok := strings.CutPrefix(string(kv.Key), prefix); ok && names.IsID(rest) && kv.Lease != 0 {
		return nil
	}
	return fmt.Errorf("%w: %s (lease %x)", ErrCorrupt, kv.Key, kv.Lease)
}

const kind = "election"

// Election is one candidate's handle on the election called name. Every
// Campaign through one Election uses the same candidate key, so concurrent
// Campaigns on one Election queue locally: the second waits until the first
// one's term ends. Processes (or goroutines) that should compete create an
// Election each. Its methods are safe for concurrent use.
type Election struct {
	k      *leasekeeper.Keeper
	cli    *clientv3.Client
	name   string
	prefix string
	key    string // this candidate's key, reused across campaigns
	err    error  // from validation; reported by every call

	slot chan struct{} // one campaign or term at a time per Election

	tel     *acquiretel.Recorder
	changes metric.Int64Counter

	handover func([]Leader) string // WithHandover: Run's choice at a graceful end
}

// Option configures an Election.
type Option func(*options)

type options struct {
	tp       trace.TracerProvider
	mp       metric.MeterProvider
	handover func([]Leader) string
}

// WithHandover makes Run end a term it leaves because its ctx ended (a
// graceful stop, not a loss) with Term.Handover(choose) instead of Resign:
// leadership goes at once to the candidate choose picks, for example
// Newest, the replica started last in a rolling deploy.
func WithHandover(choose func(waiting []Leader) string) Option {
	return func(o *options) { o.handover = choose }
}

// WithTracerProvider sets the tracer provider for election.campaign spans
// (default: the global one).
func WithTracerProvider(tp trace.TracerProvider) Option { return func(o *options) { o.tp = tp } }

// WithMeterProvider sets the meter provider for leadership metrics (default:
// the global one).
func WithMeterProvider(mp metric.MeterProvider) Option { return func(o *options) { o.mp = mp } }

// New returns a candidate for the election called name, bound to k's lease.
// It does no I/O; an invalid name is reported by every call.
func New(k *leasekeeper.Keeper, name string, opts ...Option) *Election {
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.tp == nil {
		o.tp = otel.GetTracerProvider()
	}
	if o.mp == nil {
		o.mp = otel.GetMeterProvider()
	}
	e := &Election{k: k, name: name, slot: make(chan struct{}, 1), handover: o.handover}
	e.err = names.Validate("election", name)
	if k == nil && e.err == nil {
		e.err = errors.New("election: nil keeper")
	}
	if k != nil {
		e.cli = k.Client()
	}
	e.prefix = names.Prefix(name, kind)
	e.key = e.prefix + names.NewID()

	const scope = "github.com/concordkit/concord/election"
	e.tel = acquiretel.New(acquiretel.Config{
		Scope:    scope,
		Prefix:   "election",
		Span:     "campaign",
		Attrs:    []attribute.KeyValue{attribute.String("election.name", name)},
		Lost:     ErrLost,
		WaitHelp: "How long Campaign waited, by outcome.",
		HoldHelp: "How long terms were held, from election to resignation or loss.",
	}, o.tp, o.mp)
	e.changes, _ = o.mp.Meter(scope).Int64Counter("concord.election.leadership_changes",
		metric.WithDescription("Terms won by this process's candidates."))
	return e
}

// Name returns the election's name.
func (e *Election) Name() string { return e.name }

// Key returns this candidate's key.
func (e *Election) Key() string { return e.key }

// Campaign blocks until this candidate is the leader and returns its Term,
// or until ctx ends (ctx's cause), or until the candidate's lease or key is
// lost while it waits (an error that errors.Is ErrLost; never a Term).
// value is what Leader and Observe report for this candidate.
//
// On any failure no key of this candidate is left behind: the key is deleted
// with a detached context bounded by the TTL. While etcd cannot be reached
// that delete can keep Campaign past ctx's end, until etcd confirms it or
// the lease is lost.
//
// Cost: one transaction that writes the candidate key and reads its
// predecessor; while waiting, one watch on the candidate's own key and one on
// its immediate predecessor, and one read per predecessor that goes; once
// elected, one watch on its own key for the term's duration, and one read of
// the key each time that watch is created.
func (e *Election) Campaign(ctx context.Context, value string) (t *Term, err error) {
	if e.err != nil {
		return nil, e.err
	}
	if err := guard.CheckValueSize("election", "value", len(value)); err != nil {
		return nil, err
	}
	ctx, span := e.tel.StartAcquire(ctx, false)
	defer func() {
		var token int64
		if err == nil {
			token = t.Token()
		}
		span.End(ctx, token, err)
	}()

	select {
	case e.slot <- struct{}{}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	t, err = e.campaign(ctx, value)
	if err != nil {
		<-e.slot
		return nil, err
	}
	e.changes.Add(context.WithoutCancel(ctx), 1, metric.WithAttributes(attribute.String("election.name", e.name)))
	return t, nil
}

// campaign runs with the slot held.
func (e *Election) campaign(ctx context.Context, value string) (*Term, error) {
	bo := retry.RequestPolicy.New()
	bounds := retry.NewBounds(retry.Attempt(e.k.TTL()))
	timedOut := false
	for {
		l, err := e.k.Lease(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			return nil, fmt.Errorf("election: campaign %q: %w", e.name, err)
		}
		t, err := e.campaignOn(ctx, l, value, bounds.Next(timedOut))
		timedOut = errors.Is(err, errAttemptTimedOut)
		if err == nil {
			return t, nil
		}
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		if errRetryCreate(err) {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				// Have the keeper replace the lease now rather than at its
				// next renewal, which Lease would otherwise wait for.
				e.k.Invalidate(l, err)
			}
			if werr := bo.Wait(ctx); werr != nil {
				return nil, werr
			}
			continue
		}
		return nil, err
	}
}

// errStaleKey reports that this candidate's key was left by an earlier
// campaign (whose outcome the client never learned) and was removed: the
// create is retried.
var errStaleKey = errors.New("stale candidate key removed")

// errAttemptTimedOut reports a create that got no answer in time; its key
// was removed if it landed, and the create is retried.
var errAttemptTimedOut = errors.New("campaign attempt timed out")

// errRetryCreate: the create may succeed if tried again. A lease that etcd
// no longer knows (revoked, or expired before the keeper noticed) is one the
// keeper is about to replace: Lease waits for the next generation.
func errRetryCreate(err error) bool {
	return errors.Is(err, errStaleKey) || errors.Is(err, errAttemptTimedOut) || errors.Is(err, errPassedOver) ||
		errors.Is(err, rpctypes.ErrLeaseNotFound) || retry.Retriable(err)
}

// campaignOn writes the candidate key on lease l and waits its turn. The
// write's attempt is bounded by attempt.
func (e *Election) campaignOn(ctx context.Context, l *leasekeeper.Lease, value string, attempt time.Duration) (*Term, error) {
	// Everything below runs under a context that also ends when the lease is
	// lost, so a candidate never waits on (or wins with) a dead lease.
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(l.Context(), func() {
		cancel(fmt.Errorf("%w: %w", ErrLost, context.Cause(l.Context())))
	})
	defer stop()

	// One transaction writes the key and reads the two newest candidates by
	// create revision: ours (written in this very transaction, so newest)
	// and our immediate predecessor, if any.
	// The attempt is short (retry.Attempt): one sent to an etcd leader that
	// died or hangs is given up, its key removed if it landed, and sent
	// again by campaign once another leader is elected.
	actx, cancelAttempt := context.WithTimeout(wctx, attempt)
	resp, err := e.cli.Txn(actx).
		If(clientv3.Compare(clientv3.CreateRevision(e.key), "=", 0)).
		Then(
			clientv3.OpPut(e.key, value, clientv3.WithLease(l.ID())),
			clientv3.OpGet(e.prefix, clientv3.WithPrefix(),
				clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend), clientv3.WithLimit(2))).
		Else(clientv3.OpGet(e.key)).
		Commit()
	timedOut := err != nil && actx.Err() != nil && wctx.Err() == nil
	cancelAttempt()
	if err != nil {
		// The put may have been applied: remove it if it is ours.
		e.cleanup(ctx, l, 0)
		if wctx.Err() != nil {
			return nil, context.Cause(wctx)
		}
		if timedOut {
			return nil, errAttemptTimedOut
		}
		return nil, fmt.Errorf("election: campaign %q: %w", e.name, err)
	}
	if !resp.Succeeded {
		// The key survives from a campaign whose reply never arrived, or from
		// a term lost locally before the server expired it. It is ours (the
		// key is unique to this Election and we hold its slot): delete that
		// incarnation and start over.
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
			e.cleanup(ctx, l, kvs[0].CreateRevision)
		}
		return nil, errStaleKey
	}
	rev := resp.Header.Revision
	var pred *wait.Pred
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) == 2 {
		pred = &wait.Pred{KV: kvs[1], ReadRev: rev}
	}
	if pred != nil {
		own := wait.Own{Key: e.key, Rev: rev, Attempt: retry.Attempt(e.k.TTL()),
			Check: func(kv *mvccpb.KeyValue) error { return checkCandidate(e.prefix, kv) }}
		err = wait.ForPredecessors(wctx, e.cli, e.prefix, own, pred)
		if err != nil {
			e.cleanup(ctx, l, rev)
			switch {
			case errors.Is(err, ErrCorrupt):
				return nil, fmt.Errorf("election: campaign %q: %w", e.name, err)
			case errors.Is(err, wait.ErrOwnKeyGone) && e.passedOver(ctx, rev):
				return nil, errPassedOver
			case errors.Is(err, wait.ErrOwnKeyGone):
				return nil, fmt.Errorf("%w: candidate key %s deleted while waiting (lease expired or revoked): %w", ErrLost, e.key, err)
			case wctx.Err() != nil:
				return nil, context.Cause(wctx)
			}
			return nil, fmt.Errorf("election: campaign %q: %w", e.name, err)
		}
	}
	// ForPredecessors confirmed our key in a linearizable read; the lease
	// must also still be trusted locally, or the server may expire it any
	// moment now.
	if l.Context().Err() != nil {
		e.cleanup(ctx, l, rev)
		return nil, fmt.Errorf("%w: %w", ErrLost, context.Cause(l.Context()))
	}
	return newTerm(e, l, rev, value), nil
}

// cleanup deletes this candidate's key with a detached, bounded context: the
// incarnation created at rev if rev > 0, otherwise whatever incarnation is
// attached to lease l (the outcome of the create is unknown). A key on a lost
// lease goes with it: then, or once l is lost meanwhile (etcd unreachable),
// there is nothing to wait for.
func (e *Election) cleanup(ctx context.Context, l *leasekeeper.Lease, rev int64) {
	cmp := clientv3.Compare(clientv3.CreateRevision(e.key), "=", rev)
	if rev == 0 {
		cmp = clientv3.Compare(clientv3.LeaseValue(e.key), "=", l.ID())
	}
	// Retried until the TTL: a key left on a live lease would stand as a
	// candidate with no Term, and could become leader.
	holding.Withdraw(ctx, e.cli, l, e.k.TTL(), e.key, cmp)
}

// Leader describes who holds the election at revision Rev. The zero Token
// means no leader.
type Leader struct {
	Key   string // the leader's candidate key
	Value string // what the leader campaigned or last proclaimed with
	Token int64  // the leader's term token (create revision of its key); 0: no leader
	Lease clientv3.LeaseID
	Rev   int64 // the etcd revision at which this became the state
}

// Exists reports whether l describes a leader (false: "no leader").
func (l Leader) Exists() bool { return l.Token != 0 }

func leaderOf(kv *mvccpb.KeyValue, rev int64) Leader {
	if kv == nil {
		return Leader{Rev: rev}
	}
	return Leader{Key: string(kv.Key), Value: string(kv.Value), Token: kv.CreateRevision, Lease: clientv3.LeaseID(kv.Lease), Rev: rev}
}

// Leader returns the current leader, or ErrNoLeader. Cost: one
// linearizable read. Rev is the read's revision.
func (e *Election) Leader(ctx context.Context) (Leader, error) {
	if e.err != nil {
		return Leader{}, e.err
	}
	return LeaderOf(ctx, e.cli, e.name)
}
