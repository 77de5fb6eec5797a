package testcluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Option configures a cluster.
type Option func(*config)

type config struct {
	size            int
	tls             bool
	auth            bool
	compactMode     string
	compactRetain   string
	maxRequestBytes uint
	maxTxnOps       uint
	tickMs          uint
	electionMs      uint
}

// Size sets the number of members (default 3).
func Size(n int) Option { return func(c *config) { c.size = n } }

// WithTLS serves clients over mutual TLS with an ephemeral CA made in-process;
// clients made by the cluster get the matching configuration.
func WithTLS() Option { return func(c *config) { c.tls = true } }

// WithAuth enables etcd authentication with a root user; clients made by the
// cluster are root unless made with AsUser. See AddUser.
func WithAuth() Option { return func(c *config) { c.auth = true } }

// AutoCompaction sets etcd's auto-compaction mode ("periodic" or "revision")
// and retention (a duration such as "1m" or a revision count such as "1000").
func AutoCompaction(mode, retention string) Option {
	return func(c *config) { c.compactMode, c.compactRetain = mode, retention }
}

// MaxRequestBytes sets the members' request size limit (etcd default 1.5 MiB).
func MaxRequestBytes(n uint) Option { return func(c *config) { c.maxRequestBytes = n } }

// MaxTxnOps sets the members' limit on operations per transaction (etcd
// default 128).
func MaxTxnOps(n uint) Option { return func(c *config) { c.maxTxnOps = n } }

// Timing sets the raft heartbeat tick and election timeout in milliseconds
// (defaults 10 and 100, for fast failover in tests; election must be at least
// 5 × tick). etcd's shortest lease TTL is ceil(1.5 × election) seconds.
func Timing(tickMs, electionMs uint) Option {
	return func(c *config) { c.tickMs, c.electionMs = tickMs, electionMs }
}

// Cluster is a set of embedded etcd members on loopback. Its methods are safe
// for concurrent use.
type Cluster struct {
	cfg   config
	dir   string
	certs *certs
	root  User

	mu       sync.Mutex // protects members' runtime state, clients, partitioned, closed
	members  []*member
	clients  map[*clientv3.Client][]*proxy
	shared   *clientv3.Client
	pinned   map[int]*clientv3.Client
	admin    *clientv3.Client
	isolated map[int]bool
	closed   bool
}

type member struct {
	name       string
	dir        string
	peer       *portReservation
	client     *portReservation
	etcd       *embed.Etcd // nil while stopped
	clientAddr string
}

// New starts a cluster for a test and closes it when the test ends. It fails
// the test if the cluster does not start.
func New(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, opts...)
	if err != nil {
		t.Fatalf("testcluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("testcluster: close: %v", err)
		}
	})
	return c
}

// Start starts a cluster and waits until every member serves requests. The
// caller must Close it.
func Start(ctx context.Context, opts ...Option) (*Cluster, error) {
	cfg := config{size: 3, tickMs: 10, electionMs: 100}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.electionMs < 5*cfg.tickMs || cfg.tickMs == 0 {
		return nil, fmt.Errorf("testcluster: timing %d/%d ms: election must be at least 5 × tick", cfg.tickMs, cfg.electionMs)
	}
	if cfg.size < 1 {
		return nil, fmt.Errorf("testcluster: size %d: must be at least 1", cfg.size)
	}
	var lastErr error
	// A port can still be taken between our bind check and etcd's own bind by
	// a program that does not use our reservations; start again on new ports.
	for range 3 {
		c, err := start(ctx, cfg)
		if err == nil {
			return c, nil
		}
		lastErr = err
		if ctx.Err() != nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, lastErr
}

func start(ctx context.Context, cfg config) (_ *Cluster, err error) {
	dir, err := os.MkdirTemp("", "concord-testcluster-")
	if err != nil {
		return nil, fmt.Errorf("testcluster: %w", err)
	}
	c := &Cluster{
		cfg:      cfg,
		dir:      dir,
		clients:  map[*clientv3.Client][]*proxy{},
		pinned:   map[int]*clientv3.Client{},
		isolated: map[int]bool{},
	}
	defer func() {
		if err != nil {
			_ = c.Close()
		}
	}()
	if cfg.tls {
		if c.certs, err = makeCerts(dir); err != nil {
			return nil, fmt.Errorf("testcluster: certificates: %w", err)
		}
	}
	var initial []string
	for i := range cfg.size {
		m := &member{name: fmt.Sprintf("m%d", i), dir: filepath.Join(dir, fmt.Sprintf("m%d", i))}
		c.members = append(c.members, m)
		if m.peer, err = reservePort(); err != nil {
			return nil, err
		}
		if m.client, err = reservePort(); err != nil {
			return nil, err
		}
		m.clientAddr = fmt.Sprintf("127.0.0.1:%d", m.client.port)
		initial = append(initial, fmt.Sprintf("%s=http://127.0.0.1:%d", m.name, m.peer.port))
	}
	token := "concord-" + randomHex(8)
	for _, m := range c.members {
		e, err := embed.StartEtcd(c.embedConfig(m, strings.Join(initial, ","), token))
		if err != nil {
			return nil, fmt.Errorf("testcluster: start %s: %w", m.name, err)
		}
		c.mu.Lock()
		m.etcd = e
		c.mu.Unlock()
	}
	for _, m := range c.members {
		if err := waitReady(ctx, m.etcd); err != nil {
			return nil, fmt.Errorf("testcluster: %s: %w", m.name, err)
		}
	}
	if err := c.setup(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func waitReady(ctx context.Context, e *embed.Etcd) error {
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("not ready: %w", err)
	case <-ctx.Done():
		return fmt.Errorf("not ready: %w", ctx.Err())
	}
}

func (c *Cluster) embedConfig(m *member, initial, token string) *embed.Config {
	ec := embed.NewConfig()
	ec.Name = m.name
	ec.Dir = m.dir
	ec.TickMs = c.cfg.tickMs
	ec.ElectionMs = c.cfg.electionMs
	ec.UnsafeNoFsync = true
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.InitialCluster = initial
	ec.InitialClusterToken = token
	ec.ClusterState = embed.ClusterStateFlagNew
	// A small snapshot count keeps a restarted member's catch-up short.
	ec.SnapshotCount = 10000
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", m.peer.port)}
	scheme := "http"
	if c.certs != nil {
		scheme = "https"
		ec.ClientTLSInfo.CertFile = c.certs.serverCert
		ec.ClientTLSInfo.KeyFile = c.certs.serverKey
		ec.ClientTLSInfo.TrustedCAFile = c.certs.caFile
		ec.ClientTLSInfo.ClientCertAuth = true
	}
	clientURL := url.URL{Scheme: scheme, Host: m.clientAddr}
	ec.ListenPeerUrls = []url.URL{peerURL}
	ec.AdvertisePeerUrls = []url.URL{peerURL}
	ec.ListenClientUrls = []url.URL{clientURL}
	ec.AdvertiseClientUrls = []url.URL{clientURL}
	ec.ListenMetricsUrls = nil
	// Passwords in a test cluster protect nothing: the cheapest bcrypt cost
	// keeps authentication from dominating start-up and user creation.
	ec.BcryptCost = 4
	ec.EnableGRPCGateway = false
	if c.cfg.compactMode != "" {
		ec.AutoCompactionMode = c.cfg.compactMode
		ec.AutoCompactionRetention = c.cfg.compactRetain
	}
	if c.cfg.maxRequestBytes > 0 {
		ec.MaxRequestBytes = c.cfg.maxRequestBytes
	}
	if c.cfg.maxTxnOps > 0 {
		ec.MaxTxnOps = c.cfg.maxTxnOps
	}
	return ec
}

// setup enables auth if asked and opens the admin client used for faults.
func (c *Cluster) setup(ctx context.Context) error {
	if c.cfg.auth {
		c.root = User{Name: "root", Password: randomHex(12)}
		plain, err := c.dial(c.allMembers(), User{}, false)
		if err != nil {
			return err
		}
		err = enableAuth(ctx, plain, c.root)
		_ = plain.Close()
		if err != nil {
			return fmt.Errorf("testcluster: enable auth: %w", err)
		}
	}
	admin, err := c.dial(c.allMembers(), c.root, false)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.admin = admin
	c.mu.Unlock()
	// One linearizable read proves the cluster has a leader and serves.
	if _, err := admin.Get(ctx, "concord-testcluster-ready"); err != nil {
		return fmt.Errorf("testcluster: first read: %w", err)
	}
	return nil
}

func (c *Cluster) allMembers() []int {
	idx := make([]int, len(c.members))
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// Close stops every member, closes every client made by the cluster and
// removes the data folders. Members are hard-stopped: a graceful close of all
// members at once waits out the leader's transfer timeout (about 5 s).
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	clients := c.clients
	c.clients = map[*clientv3.Client][]*proxy{}
	var running []*embed.Etcd
	for _, m := range c.members {
		if m.etcd != nil {
			running = append(running, m.etcd)
			m.etcd = nil
		}
	}
	c.mu.Unlock()

	for cli, proxies := range clients {
		_ = cli.Close()
		for _, p := range proxies {
			p.close()
		}
	}
	var wg sync.WaitGroup
	for _, e := range running {
		wg.Go(func() {
			e.Server.HardStop()
			e.Close()
		})
	}
	wg.Wait()
	for _, m := range c.members {
		if m.peer != nil {
			m.peer.release()
		}
		if m.client != nil {
			m.client.release()
		}
	}
	return os.RemoveAll(c.dir)
}

// Size returns the number of members, running or not.
func (c *Cluster) Size() int { return len(c.members) }

// Endpoints returns the members' client URLs, without proxies.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = c.scheme() + "://" + m.clientAddr
	}
	return eps
}

func (c *Cluster) scheme() string {
	if c.certs != nil {
		return "https"
	}
	return "http"
}

// Member returns member i's embedded server, or nil while it is stopped.
func (c *Cluster) Member(i int) *embed.Etcd {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i].etcd
}

// Root returns the root user's credentials when the cluster runs WithAuth.
func (c *Cluster) Root() User { return c.root }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

var errClosed = errors.New("testcluster: cluster closed")

// CertFiles returns the paths of the CA certificate and of the client
// certificate and key when the cluster runs WithTLS (empty strings otherwise),
// for programs that take TLS settings as files.
func (c *Cluster) CertFiles() (ca, cert, key string) {
	if c.certs == nil {
		return "", "", ""
	}
	return c.certs.caFile, c.certs.clientCert, c.certs.clientKey
}
