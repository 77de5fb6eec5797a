package testcluster

import (
	"context"
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

// Cluster is a set of etcd members on loopback, embedded in the test
// process or running as processes of their own. Its methods are safe for
// concurrent use.
type Cluster struct {
	cfg     config
	dir     string
	certs   *certs
	root    User
	version string // the members' etcd version

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
	dir        string // data folder
	logPath    string // process mode: the member's log
	peer       *portReservation
	client     *portReservation
	clientAddr string
	peerAddr   string // the advertised peer address: in process mode, the peer proxy's
	id         uint64 // raft member ID, known once started

	// While the member runs, etcd (embedded) or proc (process) is set.
	etcd *embed.Etcd
	proc *process
	args []string // process mode: the member's command line

	peerProxy *peerProxy       // process mode
	probe     *clientv3.Client // process mode: a direct client for Status
}

func (m *member) running() bool { return m.etcd != nil || m.proc != nil }

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
	cfg := config{size: 3}
	for _, o := range opts {
		o(&cfg)
	}
	if !cfg.binarySet {
		cfg.binary = os.Getenv(EnvBinary)
	}
	if !cfg.timingSet {
		cfg.tickMs, cfg.electionMs = 10, 100
		if cfg.binary != "" {
			cfg.tickMs, cfg.electionMs = 100, 1000
		}
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
	sweep()
	version := embeddedVersion
	if cfg.binary != "" {
		if version, err = binaryVersion(ctx, cfg.binary); err != nil {
			return nil, err
		}
	}
	dir, err := makeClusterDir()
	if err != nil {
		return nil, fmt.Errorf("testcluster: %w", err)
	}
	c := &Cluster{
		cfg:      cfg,
		dir:      dir,
		version:  version,
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
		m := &member{
			name:    fmt.Sprintf("m%d", i),
			dir:     filepath.Join(dir, fmt.Sprintf("m%d", i)),
			logPath: filepath.Join(dir, fmt.Sprintf("m%d.log", i)),
		}
		c.mu.Lock()
		c.members = append(c.members, m)
		c.mu.Unlock()
		if m.peer, err = reservePort(); err != nil {
			return nil, err
		}
		if m.client, err = reservePort(); err != nil {
			return nil, err
		}
		m.clientAddr = fmt.Sprintf("127.0.0.1:%d", m.client.port)
		m.peerAddr = fmt.Sprintf("127.0.0.1:%d", m.peer.port)
		if c.process() {
			if m.peerProxy, err = newPeerProxy(i, m.peerAddr, c.peerCut, c.peerIndex); err != nil {
				return nil, fmt.Errorf("testcluster: peer proxy: %w", err)
			}
			m.peerAddr = m.peerProxy.addr()
		}
		initial = append(initial, fmt.Sprintf("%s=http://%s", m.name, m.peerAddr))
	}
	token := "concord-" + randomHex(8)
	for _, m := range c.members {
		if err := c.startMember(m, strings.Join(initial, ","), token); err != nil {
			return nil, err
		}
	}
	for _, m := range c.members {
		if err := c.waitMember(ctx, m); err != nil {
			return nil, err
		}
	}
	if err := c.setup(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// process reports whether members run as processes of their own.
func (c *Cluster) process() bool { return c.cfg.binary != "" }

// startMember starts m, embedded or as a process, without waiting for it to
// serve.
func (c *Cluster) startMember(m *member, initial, token string) error {
	if !c.process() {
		e, err := embed.StartEtcd(c.embedConfig(m, initial, token))
		if err != nil {
			return fmt.Errorf("testcluster: start %s: %w", m.name, err)
		}
		c.mu.Lock()
		m.etcd = e
		c.mu.Unlock()
		return nil
	}
	if m.args == nil {
		m.args = c.processArgs(m, initial, token)
	}
	p, err := startProcess(c.cfg.binary, m.args, m.logPath)
	if err != nil {
		return fmt.Errorf("testcluster: start %s: %w", m.name, err)
	}
	writePID(c.dir, m.name, p.cmd.Process.Pid)
	c.mu.Lock()
	m.proc = p
	c.mu.Unlock()
	return nil
}

// waitMember waits until m serves client requests and records its ID.
func (c *Cluster) waitMember(ctx context.Context, m *member) error {
	c.mu.Lock()
	e, p := m.etcd, m.proc
	c.mu.Unlock()
	if e != nil {
		if err := waitReady(ctx, e); err != nil {
			return fmt.Errorf("testcluster: %s: %w", m.name, err)
		}
		m.id = uint64(e.Server.MemberID())
		return nil
	}
	if p == nil {
		return fmt.Errorf("testcluster: %s is not running", m.name)
	}
	if m.probe == nil {
		probe, err := c.newProbe(m)
		if err != nil {
			return err
		}
		m.probe = probe
	}
	// etcd serves client requests only once it has joined the cluster, so
	// the first Status answered means ready.
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := m.probe.Status(sctx, m.probe.Endpoints()[0])
		cancel()
		if err == nil {
			m.id = resp.Header.MemberId
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("testcluster: %s exited before serving (%v); its log ends:\n%s", m.name, p.err, logTail(m.logPath, 20))
		case <-ctx.Done():
			return fmt.Errorf("testcluster: %s not ready: %w (last error: %v)", m.name, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
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
	ec.SnapshotCount = snapshotCount
	peerURL := url.URL{Scheme: "http", Host: m.peerAddr}
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
	ec.BcryptCost = bcryptCost
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
		plain, err := c.dial(c.allMembers(), User{}, false, Latency{})
		if err != nil {
			return err
		}
		err = enableAuth(ctx, plain, c.root)
		_ = plain.Close()
		if err != nil {
			return fmt.Errorf("testcluster: enable auth: %w", err)
		}
		for _, m := range c.members {
			if m.probe == nil {
				continue
			}
			probe, err := c.newProbe(m)
			if err != nil {
				return err
			}
			c.mu.Lock()
			old := m.probe
			m.probe = probe
			c.mu.Unlock()
			_ = old.Close()
		}
	}
	admin, err := c.dial(c.allMembers(), c.root, false, Latency{})
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
	var procs []*process
	for _, m := range c.members {
		if m.etcd != nil {
			running = append(running, m.etcd)
			m.etcd = nil
		}
		if m.proc != nil {
			procs = append(procs, m.proc)
			m.proc = nil
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
	for _, p := range procs {
		wg.Go(func() { p.stop(true, 0) })
	}
	wg.Wait()
	for _, m := range c.members {
		if m.probe != nil {
			_ = m.probe.Close()
		}
		if m.peerProxy != nil {
			m.peerProxy.close()
		}
		if m.peer != nil {
			m.peer.release()
		}
		if m.client != nil {
			m.client.release()
		}
	}
	return os.RemoveAll(c.dir)
}
