package guard

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/leasekeeper"
)

// Withdraw deletes key, a recipe's key on lease l, if cmps hold, after an
// acquisition that failed. It runs under a context detached from ctx's
// cancellation (a canceled caller still withdraws) and bounded by bound, and
// tries transient errors again with require-leader, so that a member cut
// off from the majority answers at once and another is asked: a key left on
// a live lease would stand for a request nobody waits on. bound is the
// holding's TTL; each attempt is bounded by retry.Attempt(bound). It does
// nothing once l is lost, before or meanwhile: the key goes with the lease.
func Withdraw(ctx context.Context, cli *clientv3.Client, l *leasekeeper.Lease, bound time.Duration, key string, cmps ...clientv3.Cmp) {
	if l.Err() != nil {
		return
	}
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.WithoutCancel(ctx)), bound)
	defer cancel()
	defer context.AfterFunc(l.Context(), cancel)()
	// Each attempt is short (retry.Attempt): one sent to a leader that died
	// or hangs is sent again once another is elected. A delete is safe to
	// repeat.
	_ = retry.Attempts(cctx, retry.RequestPolicy, retry.Attempt(bound), func(ctx context.Context) error {
		_, err := cli.Txn(ctx).If(cmps...).Then(clientv3.OpDelete(key)).Commit()
		return err
	})
}
