package testcluster

import "time"

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
// run with fsync on and, unless WithTiming says otherwise, etcd's default
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

// WithSize sets the number of members (default 3).
func WithSize(n int) Option { return func(c *config) { c.size = n } }

// WithTLS serves clients over mutual TLS with an ephemeral CA made in-process;
// clients made by the cluster get the matching configuration.
func WithTLS() Option { return func(c *config) { c.tls = true } }

// WithAuth enables etcd authentication with a root user; clients made by the
// cluster are root unless made with AsUser. See AddUser.
func WithAuth() Option { return func(c *config) { c.auth = true } }

// WithAutoCompaction sets etcd's auto-compaction mode ("periodic" or "revision")
// and retention (a duration such as "1m" or a revision count such as "1000").
func WithAutoCompaction(mode, retention string) Option {
	return func(c *config) { c.compactMode, c.compactRetain = mode, retention }
}

// WithMaxRequestBytes sets the members' request size limit (etcd default 1.5 MiB).
func WithMaxRequestBytes(n uint) Option { return func(c *config) { c.maxRequestBytes = n } }

// WithMaxTxnOps sets the members' limit on operations per transaction (etcd
// default 128).
func WithMaxTxnOps(n uint) Option { return func(c *config) { c.maxTxnOps = n } }

// WithTiming sets the raft heartbeat tick and election timeout in milliseconds
// (defaults: 10 and 100 for embedded members, for fast failover in tests;
// etcd's own 100 and 1000 in process mode; election must be at least 5 ×
// tick). etcd's shortest lease TTL is ceil(1.5 × election) seconds: see
// MinLeaseTTL.
func WithTiming(tickMs, electionMs uint) Option {
	return func(c *config) { c.tickMs, c.electionMs, c.timingSet = tickMs, electionMs, true }
}
