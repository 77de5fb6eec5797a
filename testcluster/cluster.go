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
	timingSet       bool
	binary          string // process mode's etcd binary; "" embeds
	binarySet       bool
	latency         Latency
}

// EnvBinary is the environment variable that puts every cluster of a test
// run into process mode: the path of an etcd binary (see
// testcluster/cmd/etcdbin), for example
//
//	CONCORD_ETCD=$(go run ./testcluster/cmd/etcdbin v3.6.17) go test ./...
const EnvBinary = "CONCORD_ETCD"

// WithBinary starts each member as its own etcd process from the binary at
// path, instead of embedding it, whatever CONCORD_ETCD says. Members then
// run with fsync on and, unless Timing says otherwise, etcd's default
// timings (heartbeat 100 ms, election 1000 ms), as users' clusters do. An
// empty path embeds the members.
func WithBinary(path string) Option {
	return func(c *config) { c.binary, c.binarySet = path, true }
}

// WithClientLatency delays the traffic of every client the cluster makes
// through its proxies (all but Admin and Direct clients), in each direction,
// by delay plus a uniformly random part of jitter, to model a network
// between clients and members. Order is kept.
func WithClientLatency(delay, jitter time.Duration) Option {
	return func(c *config) { c.latency = Latency{Delay: delay, Jitter: jitter} }
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
// (defaults: 10 and 100 for embedded members, for fast failover in tests;
// etcd's own 100 and 1000 in process mode; election must be at least 5 ×
// tick). etcd's shortest lease TTL is ceil(1.5 × election) seconds: see
// MinLeaseTTL.
func Timing(tickMs, electionMs uint) Option {
	return func(c *config) { c.tickMs, c.electionMs, c.timingSet = tickMs, electionMs, true }
}

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

// Member returns member i's embedded server, or nil while it is stopped or
// when members run as processes.
func (c *Cluster) Member(i int) *embed.Etcd {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i].etcd
}

// Root returns the root user's credentials when the cluster runs WithAuth.
func (c *Cluster) Root() User { return c.root }

// Binary returns the etcd binary members run from in process mode, or ""
// when they are embedded.
func (c *Cluster) Binary() string { return c.cfg.binary }

// Version returns the members' etcd version, such as "3.6.17".
func (c *Cluster) Version() string { return c.version }

// ElectionTimeout returns the members' raft election timeout: a dead or
// paused leader is replaced about this long (plus up to as much again,
// randomised) after it stopped answering.
func (c *Cluster) ElectionTimeout() time.Duration {
	return time.Duration(c.cfg.electionMs) * time.Millisecond
}

// LeaseTTL returns d, or MinLeaseTTL if that is longer: the TTL for a test
// that wants leases to expire soon after a holder is cut off, on any
// cluster.
func (c *Cluster) LeaseTTL(d time.Duration) time.Duration { return max(d, c.MinLeaseTTL()) }

// FailoverTTL returns the shortest whole-second TTL that keeps a lease
// alive through the death of the etcd leader, for tests in which leases
// must outlive member faults. A keeper renews every third of the TTL and
// declares the lease lost a tenth of the TTL before its safe deadline; the
// members elect a new leader up to two election timeouts after the old one
// stopped, and the first renewal after that needs a little more. So the
// TTL must satisfy TTL × (1 − 1/3 − 1/10) > 2 × election + 0.5 s: 2 s for
// embedded members' 100 ms elections, 5 s for etcd's default 1 s.
func (c *Cluster) FailoverTTL() time.Duration {
	need := (2*c.ElectionTimeout() + 500*time.Millisecond) * 30 / 17
	ttl := (need + time.Second - 1).Truncate(time.Second)
	return max(ttl, c.MinLeaseTTL())
}

// MinLeaseTTL returns the shortest lease TTL the members grant as asked:
// etcd raises shorter TTLs to ceil(1.5 × election timeout), in whole seconds.
func (c *Cluster) MinLeaseTTL() time.Duration {
	// As etcdserver computes it: 1.5 election timeouts counted in ticks.
	ticks := c.cfg.electionMs / c.cfg.tickMs
	ms := (3 * ticks / 2) * c.cfg.tickMs
	return time.Duration((ms+999)/1000) * time.Second
}

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
