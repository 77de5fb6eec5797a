package testcluster

import (
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ClientOption configures a client made by NewClient.
type ClientOption func(*clientConfig)

type clientConfig struct {
	members []int
	user    *User
	direct  bool
	latency *Latency
}

// WithLatency delays this client's traffic in each direction by delay plus
// a uniformly random part of jitter (see WithClientLatency), instead of the
// cluster's default.
func WithLatency(delay, jitter time.Duration) ClientOption {
	return func(cc *clientConfig) { cc.latency = &Latency{Delay: delay, Jitter: jitter} }
}

// To pins the client to the given members (default: all of them).
func To(members ...int) ClientOption {
	return func(cc *clientConfig) { cc.members = append([]int(nil), members...) }
}

// Direct makes a client that talks to the members without the loopback
// proxies, as a client of a real cluster would: slightly cheaper per request,
// for benchmarks, but CutClient cannot cut it off.
func Direct() ClientOption { return func(cc *clientConfig) { cc.direct = true } }

// AsUser authenticates the client as u instead of root (clusters WithAuth).
func AsUser(u User) ClientOption { return func(cc *clientConfig) { cc.user = &u } }

// Client returns a client spanning all members, shared by every caller and
// closed with the cluster. Like every client the cluster makes, it talks
// through loopback proxies, so CutClient can cut it off.
func (c *Cluster) Client() *clientv3.Client {
	c.mu.Lock()
	cli := c.shared
	c.mu.Unlock()
	if cli != nil {
		return cli
	}
	cli, err := c.NewClient()
	if err != nil {
		panic(fmt.Sprintf("testcluster: shared client: %v", err)) // loopback dial without blocking: cannot fail short of a closed cluster
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shared != nil {
		_ = cli.Close()
		return c.shared
	}
	c.shared = cli
	return cli
}

// ClientTo returns a shared client pinned to member i, closed with the cluster.
func (c *Cluster) ClientTo(i int) *clientv3.Client {
	c.mu.Lock()
	cli := c.pinned[i]
	c.mu.Unlock()
	if cli != nil {
		return cli
	}
	cli, err := c.NewClient(To(i))
	if err != nil {
		panic(fmt.Sprintf("testcluster: client to member %d: %v", i, err))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev := c.pinned[i]; prev != nil {
		_ = cli.Close()
		return prev
	}
	c.pinned[i] = cli
	return cli
}

// NewClient makes a new client of its own: a separate gRPC connection through
// its own proxies, so that CutClient affects it alone. The cluster closes it
// at teardown; closing it earlier is fine.
func (c *Cluster) NewClient(opts ...ClientOption) (*clientv3.Client, error) {
	cc := clientConfig{members: c.allMembers()}
	for _, o := range opts {
		o(&cc)
	}
	user := c.root
	if cc.user != nil {
		user = *cc.user
	}
	lat := c.cfg.latency
	if cc.latency != nil {
		lat = *cc.latency
	}
	return c.dial(cc.members, user, !cc.direct, lat)
}

// ClientConfig returns a configuration for a client of the caller's own that
// reaches every member directly (no proxy, so CutClient cannot affect it),
// with the cluster's TLS settings and root credentials.
func (c *Cluster) ClientConfig() clientv3.Config {
	cfg := clientv3.Config{
		Endpoints:   c.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		Username:    c.root.Name,
		Password:    c.root.Password,
	}
	if c.certs != nil {
		cfg.TLS = c.certs.client.Clone()
	}
	return cfg
}

func (c *Cluster) dial(members []int, user User, proxied bool, lat Latency) (*clientv3.Client, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errClosed
	}
	c.mu.Unlock()
	var proxies []*proxy
	var eps []string
	for _, i := range members {
		if i < 0 || i >= len(c.members) {
			return nil, fmt.Errorf("testcluster: no member %d", i)
		}
		m := c.members[i]
		if !proxied {
			eps = append(eps, c.scheme()+"://"+m.clientAddr)
			continue
		}
		p, err := newProxy(func() string { return m.clientAddr }, lat)
		if err != nil {
			for _, p := range proxies {
				p.close()
			}
			return nil, fmt.Errorf("testcluster: proxy: %w", err)
		}
		proxies = append(proxies, p)
		eps = append(eps, c.scheme()+"://"+p.addr())
	}
	cfg := clientv3.Config{
		Endpoints:   eps,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		Username:    user.Name,
		Password:    user.Password,
	}
	if c.certs != nil {
		cfg.TLS = c.certs.client.Clone()
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		for _, p := range proxies {
			p.close()
		}
		return nil, fmt.Errorf("testcluster: client: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		_ = cli.Close()
		for _, p := range proxies {
			p.close()
		}
		return nil, errClosed
	}
	c.clients[cli] = proxies
	return cli, nil
}

// CutClient cuts cli, a client made by this cluster, off from every member:
// its requests and renewals stall (nothing is refused or reset), so its
// leases expire on the server while the process lives on. The process
// itself is not told.
func (c *Cluster) CutClient(cli *clientv3.Client) {
	for _, p := range c.proxiesOf(cli) {
		p.cut()
	}
}

// RestoreClient lets cli's traffic flow again; stalled requests resume.
func (c *Cluster) RestoreClient(cli *clientv3.Client) {
	for _, p := range c.proxiesOf(cli) {
		p.restore()
	}
}

func (c *Cluster) proxiesOf(cli *clientv3.Client) []*proxy {
	c.mu.Lock()
	defer c.mu.Unlock()
	proxies, ok := c.clients[cli]
	if (!ok || proxies == nil) && !c.closed {
		panic("testcluster: CutClient/RestoreClient on a client this cluster did not make, or made Direct")
	}
	return proxies
}
