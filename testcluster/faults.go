package testcluster

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// Stop closes member i gracefully (a leader hands over leadership first),
// keeping its data folder for Restart.
func (c *Cluster) Stop(i int) error { return c.stop(i, false) }

// Kill stops member i at once, as a crash would; Restart brings it back.
func (c *Cluster) Kill(i int) error { return c.stop(i, true) }

func (c *Cluster) stop(i int, hard bool) error {
	c.mu.Lock()
	if i < 0 || i >= len(c.members) {
		c.mu.Unlock()
		return fmt.Errorf("testcluster: no member %d", i)
	}
	m := c.members[i]
	e, p := m.etcd, m.proc
	m.etcd, m.proc = nil, nil
	c.mu.Unlock()
	switch {
	case e != nil:
		if hard {
			e.Server.HardStop()
		}
		e.Close()
	case p != nil:
		// A graceful stop hands leadership over first; etcd bounds that by
		// a few election timeouts.
		p.stop(hard, 10*time.Second+5*c.ElectionTimeout())
	default:
		return fmt.Errorf("testcluster: member %d is not running", i)
	}
	return nil
}

// Restart starts stopped member i again on its old data folder and ports, and
// waits until it serves. A member isolated by Partition stays isolated.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errClosed
	}
	if i < 0 || i >= len(c.members) {
		c.mu.Unlock()
		return fmt.Errorf("testcluster: no member %d", i)
	}
	m := c.members[i]
	if m.running() {
		c.mu.Unlock()
		return fmt.Errorf("testcluster: member %d is running", i)
	}
	c.mu.Unlock()
	if c.process() {
		// The same command line: etcd restarts from its data folder and
		// ignores the initial-cluster flags. The peer proxy in front of it
		// stays, and with it any partition.
		if err := c.startMember(m, "", ""); err != nil {
			return err
		}
		if err := c.waitMember(ctx, m); err != nil {
			_ = c.stop(i, true)
			return fmt.Errorf("testcluster: restart member %d: %w", i, err)
		}
		return nil
	}
	var initial string
	for j, o := range c.members {
		if j > 0 {
			initial += ","
		}
		initial += fmt.Sprintf("%s=http://%s", o.name, o.peerAddr)
	}
	// The data folder holds the cluster's identity, so the token and initial
	// cluster are only checked for consistency.
	ec := c.embedConfig(m, initial, "")
	ec.InitialClusterToken = ""
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return fmt.Errorf("testcluster: restart member %d: %w", i, err)
	}
	if err := waitReady(ctx, e); err != nil {
		e.Server.HardStop()
		e.Close()
		return fmt.Errorf("testcluster: restart member %d: %w", i, err)
	}
	c.mu.Lock()
	m.etcd = e
	isolated := c.isolated[i]
	c.mu.Unlock()
	if isolated {
		c.cut(i, true)
	}
	return nil
}

// Partition cuts member i off from its peers, both ways: raft messages between
// it and every other member are dropped until Heal (embedded members through
// etcd's CutPeer, processes through the proxies their peers reach them by).
// Clients connected to member i still reach it; with WithRequireLeader their
// watches fail once it notices it has lost the leader.
func (c *Cluster) Partition(i int) {
	c.mu.Lock()
	c.isolated[i] = true
	c.mu.Unlock()
	c.cut(i, true)
}

// Heal ends every partition.
func (c *Cluster) Heal() {
	c.mu.Lock()
	var idx []int
	for i := range c.isolated {
		idx = append(idx, i)
	}
	clear(c.isolated)
	c.mu.Unlock()
	for _, i := range idx {
		c.cut(i, false)
	}
}

func (c *Cluster) cut(i int, on bool) {
	if c.process() {
		// The proxies read the partition from c.isolated; close the
		// connections it now cuts.
		for _, m := range c.members {
			m.peerProxy.enforce()
		}
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	a := c.members[i].etcd
	for j, m := range c.members {
		if j == i {
			continue
		}
		b := m.etcd
		if a != nil && b != nil {
			if on {
				a.Server.CutPeer(b.Server.MemberID())
				b.Server.CutPeer(a.Server.MemberID())
			} else {
				a.Server.MendPeer(b.Server.MemberID())
				b.Server.MendPeer(a.Server.MemberID())
			}
		}
	}
}

// Leader returns the index of a running, connected, unpaused member that is
// leader in its own view, or -1 if none is.
func (c *Cluster) Leader() int {
	for _, i := range c.connected() {
		if id, lead, ok := c.view(i); ok && id == lead {
			return i
		}
	}
	return -1
}

// connected returns the members that run, are not partitioned off and are
// not paused.
func (c *Cluster) connected() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var idx []int
	for i, m := range c.members {
		if !m.running() || c.isolated[i] || (m.proc != nil && m.proc.isPaused()) {
			continue
		}
		idx = append(idx, i)
	}
	return idx
}

// WaitLeader waits until the running, connected members agree on a leader and
// returns its index.
func (c *Cluster) WaitLeader(ctx context.Context) (int, error) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if i, ok := c.agreedLeader(); ok {
			return i, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("testcluster: wait for leader: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

func (c *Cluster) agreedLeader() (int, bool) {
	var lead uint64
	idx := -1
	for _, i := range c.connected() {
		id, l, ok := c.view(i)
		if !ok || l == 0 || (lead != 0 && l != lead) {
			return -1, false
		}
		lead = l
		if id == l {
			idx = i
		}
	}
	return idx, idx >= 0
}

// RevokeLease revokes a lease on the server, as an operator or a bug would;
// the holder's process is not told.
func (c *Cluster) RevokeLease(ctx context.Context, id clientv3.LeaseID) error {
	admin, err := c.adminClient()
	if err != nil {
		return err
	}
	if _, err := admin.Revoke(ctx, id); err != nil && err != rpctypes.ErrLeaseNotFound {
		return fmt.Errorf("testcluster: revoke lease %x: %w", int64(id), err)
	}
	return nil
}

// Compact compacts the history up to the current revision (physically, so
// watches on older revisions fail at once) and returns that revision.
func (c *Cluster) Compact(ctx context.Context) (int64, error) {
	admin, err := c.adminClient()
	if err != nil {
		return 0, err
	}
	resp, err := admin.Get(ctx, "concord-testcluster-compact", clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("testcluster: compact: %w", err)
	}
	rev := resp.Header.Revision
	if _, err := admin.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil && err != rpctypes.ErrCompacted {
		return 0, fmt.Errorf("testcluster: compact to %d: %w", rev, err)
	}
	return rev, nil
}

// Admin returns the cluster's own root client, which talks to the members
// directly: faults never cut it. Tests use it to look at what recipes wrote.
func (c *Cluster) Admin() *clientv3.Client {
	admin, err := c.adminClient()
	if err != nil {
		return nil
	}
	return admin
}

func (c *Cluster) adminClient() (*clientv3.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.admin == nil {
		return nil, errClosed
	}
	return c.admin, nil
}
