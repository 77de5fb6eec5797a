// Package compat reads which etcd server a client talks to, and refuses
// servers on which a recipe cannot be right.
//
// concord supports etcd 3.5, 3.6 and 3.7. On etcd 3.4 a watch progress
// request is answered at once with the store's current revision, even while
// the watches on the stream still have events to send (3.5 and later answer
// only once every watch of the stream has caught up). The lock's confirm and
// the cache's WaitRevision rely on the later behaviour: on 3.4 the cache
// was measured to drop updates for good (3 and 6 of 2,000 rounds), so the
// lease keeper (which every lock stands on) and the cache refuse 3.4.
package compat

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrUnsupported reports an etcd server concord cannot be right on.
var ErrUnsupported = errors.New("etcd version not supported (concord needs etcd 3.5 or later)")

// Minimum is the oldest etcd release concord supports.
const Minimum = "3.5"

// Check asks the members cli reaches for their version (one Status request
// per endpoint, which clientv3 spreads over the endpoints in turn) and
// returns an error that wraps ErrUnsupported if one runs a release older
// than Minimum. A member the client does not reach in those requests (a
// rolling upgrade half done, endpoints behind one load balancer) is not
// seen.
func Check(ctx context.Context, cli *clientv3.Client) error {
	mc := pb.NewMaintenanceClient(cli.ActiveConnection())
	n := max(len(cli.Endpoints()), 1)
	seen := map[uint64]bool{}
	for range n {
		resp, err := mc.Status(ctx, &pb.StatusRequest{})
		if err != nil {
			return fmt.Errorf("read the etcd version: %w", err)
		}
		id := resp.GetHeader().GetMemberId()
		if seen[id] {
			continue
		}
		seen[id] = true
		if !Supported(resp.Version) {
			return fmt.Errorf("%w: member %x runs etcd %s; on 3.4 a watch progress request is answered before the watch has caught up, which concord's locks and caches rely on", ErrUnsupported, id, resp.Version)
		}
	}
	return nil
}

// Supported reports whether version ("3.6.17") is Minimum or later. A
// version that cannot be read is taken as supported: a server too new for
// this code to parse is not what the check is for.
func Supported(version string) bool {
	major, rest, ok := strings.Cut(version, ".")
	if !ok {
		return true
	}
	minor, _, _ := strings.Cut(rest, ".")
	ma, err1 := strconv.Atoi(major)
	mi, err2 := strconv.Atoi(minor)
	if err1 != nil || err2 != nil {
		return true
	}
	return ma > 3 || ma == 3 && mi >= 5
}
