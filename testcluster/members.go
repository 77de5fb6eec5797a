package testcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/version"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Settings shared by both modes.
const (
	// A small snapshot count keeps a restarted member's catch-up short.
	snapshotCount = 10000
	// Passwords in a test cluster protect nothing: the cheapest bcrypt cost
	// keeps authentication from dominating start-up and user creation.
	bcryptCost = 4
)

// embeddedVersion is the version of the etcd server this module embeds.
var embeddedVersion = version.Version

// processArgs is the command line of member m in process mode. fsync stays
// on, as on users' clusters; logs go to the member's log file at level warn.
func (c *Cluster) processArgs(m *member, initial, token string) []string {
	scheme := c.scheme()
	args := []string{
		"--name=" + m.name,
		"--data-dir=" + m.dir,
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", m.peer.port),
		"--initial-advertise-peer-urls=http://" + m.peerAddr,
		"--listen-client-urls=" + scheme + "://" + m.clientAddr,
		"--advertise-client-urls=" + scheme + "://" + m.clientAddr,
		"--initial-cluster=" + initial,
		"--initial-cluster-token=" + token,
		"--initial-cluster-state=new",
		fmt.Sprintf("--heartbeat-interval=%d", c.cfg.tickMs),
		fmt.Sprintf("--election-timeout=%d", c.cfg.electionMs),
		fmt.Sprintf("--snapshot-count=%d", snapshotCount),
		fmt.Sprintf("--bcrypt-cost=%d", bcryptCost),
		"--logger=zap",
		"--log-level=warn",
	}
	if c.certs != nil {
		args = append(args,
			"--cert-file="+c.certs.serverCert,
			"--key-file="+c.certs.serverKey,
			"--trusted-ca-file="+c.certs.caFile,
			"--client-cert-auth")
	}
	if c.cfg.compactMode != "" {
		args = append(args, "--auto-compaction-mode="+c.cfg.compactMode, "--auto-compaction-retention="+c.cfg.compactRetain)
	}
	if c.cfg.maxRequestBytes > 0 {
		args = append(args, fmt.Sprintf("--max-request-bytes=%d", c.cfg.maxRequestBytes))
	}
	if c.cfg.maxTxnOps > 0 {
		args = append(args, fmt.Sprintf("--max-txn-ops=%d", c.cfg.maxTxnOps))
	}
	return args
}

// newProbe makes a client of member m alone, used to ask it for its own view
// (Status) and to wait until it serves. With auth on, etcd 3.5 and later
// answer Status only to an authenticated user: setup replaces the probes
// with root's once auth is enabled.
func (c *Cluster) newProbe(m *member) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   []string{c.scheme() + "://" + m.clientAddr},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		Username:    c.root.Name,
		Password:    c.root.Password,
	}
	if c.certs != nil {
		cfg.TLS = c.certs.client.Clone()
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("testcluster: probe client of %s: %w", m.name, err)
	}
	return cli, nil
}

// view is what member i believes: its own ID and the leader it follows (0:
// none). ok is false when the member cannot say (stopped, paused, or not
// answering within a short deadline).
func (c *Cluster) view(i int) (id, lead uint64, ok bool) {
	c.mu.Lock()
	m := c.members[i]
	e, p, probe := m.etcd, m.proc, m.probe
	c.mu.Unlock()
	switch {
	case e != nil:
		return uint64(e.Server.MemberID()), uint64(e.Server.Leader()), true
	case p != nil && !p.isPaused() && probe != nil:
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		resp, err := probe.Status(ctx, probe.Endpoints()[0])
		if err != nil {
			return 0, 0, false
		}
		return resp.Header.MemberId, resp.Leader, true
	}
	return 0, 0, false
}

// PIDs returns the process IDs of the running members in process mode (none
// when embedded).
func (c *Cluster) PIDs() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var pids []int
	for _, m := range c.members {
		if m.proc != nil {
			pids = append(pids, m.proc.cmd.Process.Pid)
		}
	}
	return pids
}

// Pause stops member i's process with SIGSTOP, as a long GC pause, a frozen
// VM or a stalled disk would: it neither answers nor ticks, and its peers
// elect a new leader one election timeout later. A paused leader still
// believes it leads when Resume lets it run again: until it hears of the
// new term it may act on its stale view (for example, expire leases whose
// TTL ran out by its own clock). Process mode only: an embedded member
// shares the test's process and cannot be stopped alone, so Pause returns
// an error; tests that need it skip themselves when Binary is "".
func (c *Cluster) Pause(i int) error {
	p, err := c.proc(i)
	if err != nil {
		return err
	}
	p.pause()
	return nil
}

// Resume lets a paused member run again.
func (c *Cluster) Resume(i int) error {
	p, err := c.proc(i)
	if err != nil {
		return err
	}
	p.resume()
	return nil
}

func (c *Cluster) proc(i int) (*process, error) {
	if !c.process() {
		return nil, errProcessOnly
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if i < 0 || i >= len(c.members) {
		return nil, fmt.Errorf("testcluster: no member %d", i)
	}
	if c.members[i].proc == nil {
		return nil, fmt.Errorf("testcluster: member %d is not running", i)
	}
	return c.members[i].proc, nil
}

// peerCut reports whether raft traffic from member from (-1: unknown) to
// member to is cut by a partition.
func (c *Cluster) peerCut(from, to int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.isolated[to] || (from >= 0 && c.isolated[from])
}

// peerIndex returns the member whose advertised peer URLs are urls, or -1.
func (c *Cluster) peerIndex(urls string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.members {
		for _, u := range strings.Split(urls, ",") {
			if strings.TrimSpace(u) == "http://"+m.peerAddr {
				return i
			}
		}
	}
	return -1
}

// Data folders of clusters whose test binary died (killed by a timeout,
// say) would stay in the temp folder for good, and in process mode so could
// their members where the parent-death signal is not available. Each cluster
// folder names its owner's PID and its members' PIDs; Start sweeps folders
// whose owner is gone.
const (
	dirPrefix = "concord-testcluster-"
	ownerFile = "owner.pid"
)

func makeClusterDir() (string, error) {
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		_ = os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

func writePID(dir, name string, pid int) {
	_ = os.WriteFile(filepath.Join(dir, name+".pid"), []byte(strconv.Itoa(pid)), 0o644)
}

func sweep() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		owner, ok := readPID(filepath.Join(dir, ownerFile))
		if !ok || alive(owner) {
			continue // a live cluster, or one still being made
		}
		pids, _ := filepath.Glob(filepath.Join(dir, "m*.pid"))
		for _, f := range pids {
			// Only a process whose command line names this folder is ours:
			// the PID may have been reused since.
			if pid, ok := readPID(f); ok && alive(pid) {
				if cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmd), dir) {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		_ = os.RemoveAll(dir)
	}
}

func readPID(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && pid > 0
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}
