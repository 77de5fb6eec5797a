package testcluster

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

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
