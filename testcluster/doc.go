// Package testcluster starts real etcd members on loopback and injects the
// faults that coordination code must survive. It is public so that users'
// own tests can run against real etcd, as Java users import curator-test.
//
//	var cluster *testcluster.Cluster
//
//	func TestMain(m *testing.M) { testcluster.Main(m, &cluster) } // one cluster per package, leak check at exit
//
//	func TestFailover(t *testing.T) {
//		c := testcluster.New(t) // a private cluster, closed when the test ends
//		cli, _ := c.NewClient()
//		c.CutClient(cli) // cli's leases now expire on the server while the process lives
//		...
//	}
//
// # Two modes
//
// Embedded (the default): members run inside the test process
// (go.etcd.io/etcd/server/v3/embed, the version this module requires), with
// test timings (TickMs 10, ElectionMs 100, so the shortest lease TTL etcd
// grants is 1 s), no fsync and silent loggers. A 3-member cluster is ready in
// about 70 ms and closes in about 1 s (members are hard-stopped: a graceful
// close of all members waits out the leader's transfer timeout). `go run
// ./bench -run testcluster` measures both.
//
// Process mode: with CONCORD_ETCD set to the path of an etcd binary (or the
// WithBinary option), each member is an etcd process of its own, as users
// run etcd: fsync on and etcd's default timings (heartbeat 100 ms, election
// 1000 ms, so the shortest lease TTL is 2 s) unless WithTiming says otherwise,
// logs at level warn in the cluster's folder. Binaries of any release from
// 3.5 on come from the Go module proxy with nothing installed:
//
//	CONCORD_ETCD=$(go run ./testcluster/cmd/etcdbin v3.6.17) go test ./...
//
// The API and the faults are the same in both modes, so the same tests run
// in both; a test that depends on the timings asks the cluster
// (ElectionTimeout, MinLeaseTTL, LeaseTTL, FailoverTTL) instead of assuming
// them. Process mode adds Pause. Member processes get the parent-death
// signal, so a test binary that is killed takes its members with it; Start
// also sweeps the folders (and any members) of earlier runs whose test
// binary is gone.
//
// # Ports
//
// Peer URLs must be known before members start, so port 0 cannot be used for
// them. Each port is reserved with an exclusive flock on a file named after
// it in a shared temp folder, held for the cluster's life, and drawn below
// the kernel's ephemeral range: test binaries that `go test ./...` runs in
// parallel never pick the same port, and a bind check catches other programs.
//
// # Clients and faults
//
// Every client the cluster makes talks to the members through loopback
// proxies of its own, so CutClient can stall exactly that client: its
// requests and lease renewals hang (nothing is refused), its leases expire on
// the server while the process lives — the fault that exposes unfenced locks —
// and RestoreClient lets the same connections resume. WithLatency (per
// client) and WithClientLatency (every client) delay that traffic to model a
// network. Admin returns a client that no fault touches, for tests to
// inspect what recipes wrote.
//
// Member faults: Stop (graceful: a leader hands over first) and Kill (hard)
// keep the data folder for Restart; Partition drops raft traffic between a
// member and its peers both ways until Heal (embedded members through etcd's
// CutPeer, processes through proxies in front of their peer listeners);
// Pause and Resume (process mode only) stop a member's process with SIGSTOP
// and let it run again, the fault that shows a stale leader acting on its
// old view. RevokeLease revokes a lease on the server; Compact compacts the
// history to the current revision.
//
// # Security
//
// WithTLS serves clients over mutual TLS with an ephemeral CA generated
// in-process; WithAuth enables etcd authentication with a root user, and
// AddUser creates a user whose role grants read and write on one key prefix
// only.
package testcluster
