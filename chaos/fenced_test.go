package chaos

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The fenced-order checker: workloads write one new key per operation under
// logPrefix, with their holding's token as the value, through the holding's
// Guard. Read back from etcd in revision order, the tokens must never go
// down: a write by an older holding after a newer holding's write means two
// holdings' writes succeeded in the same span of time. etcd's own view is
// used, so a write whose acknowledgement was lost still counts.

// fencedWrite puts value token at a fresh key, guarded by cmps unless cmps
// is nil (the unprotected variant). It reports whether etcd applied it, as
// far as the writer knows.
func fencedWrite(ctx context.Context, cli *clientv3.Client, cmps []clientv3.Cmp, key string, token int64) (bool, error) {
	put := clientv3.OpPut(key, strconv.FormatInt(token, 10))
	if cmps == nil {
		_, err := cli.Do(ctx, put)
		return err == nil, err
	}
	resp, err := cli.Txn(ctx).If(cmps...).Then(put).Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// checkFencedOrder reads every write under logPrefix and reports each write
// whose token is below one already written at a lower revision. It returns
// the number of writes and of distinct tokens.
func checkFencedOrder(ctx context.Context, r *report, admin *clientv3.Client, logPrefix string) (writes, tokens int, err error) {
	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := admin.Get(gctx, logPrefix, clientv3.WithPrefix())
	if err != nil {
		return 0, 0, fmt.Errorf("read the write log: %w", err)
	}
	type w struct {
		key   string
		rev   int64
		token int64
	}
	ws := make([]w, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		tok, err := strconv.ParseInt(string(kv.Value), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("write %s: value %q: %w", kv.Key, kv.Value, err)
		}
		ws = append(ws, w{string(kv.Key), kv.ModRevision, tok})
	}
	sort.Slice(ws, func(i, j int) bool { return ws[i].rev < ws[j].rev })
	var maxTok int64
	var maxKey string
	seen := map[int64]bool{}
	for _, x := range ws {
		seen[x.token] = true
		if x.token < maxTok {
			r.violate("write %s of token %d at revision %d came after a write of the newer token %d (%s)",
				strings.TrimPrefix(x.key, logPrefix), x.token, x.rev, maxTok, strings.TrimPrefix(maxKey, logPrefix))
			continue
		}
		maxTok, maxKey = x.token, x.key
	}
	return len(ws), len(seen), nil
}
