package testcluster

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// peerProxy stands in front of one member's peer listener in process mode,
// where etcd's in-process CutPeer is out of reach: the member advertises the
// proxy's address, so every peer connection to it passes here, and
// Partition drops the raft traffic of an isolated member both ways.
//
// Which member opened a connection is read from its first HTTP request:
// etcd's raft transport (streams, pipeline, snapshots) sends the sender's
// advertised peer URLs in an X-PeerURLs header. A connection is cut when
// its sender or its receiver is isolated. Connections that carry no such
// header (version probes, lease renewals a follower forwards to the leader)
// are cut only when the receiver is isolated; embedded members' CutPeer
// leaves those alone too, so both modes isolate raft messages alike. A cut
// connection is closed, and new ones from or to an isolated member are
// closed once identified: raft sees its messages dropped and redials, and
// gets through again after Heal.
type peerProxy struct {
	ln     net.Listener
	target string
	self   int
	// cut reports whether traffic from member `from` (-1: unknown) to this
	// member must be dropped now; who resolves X-PeerURLs to a member.
	cut func(from, to int) bool
	who func(peerURLs string) int

	mu     sync.Mutex // protects conns, closed
	conns  map[*peerConn]struct{}
	closed bool

	wg sync.WaitGroup
}

type peerConn struct {
	in, out net.Conn
	from    int
	once    sync.Once
}

func (c *peerConn) close() {
	c.once.Do(func() {
		_ = c.in.Close()
		if c.out != nil {
			_ = c.out.Close()
		}
	})
}

func newPeerProxy(self int, target string, cut func(from, to int) bool, who func(string) int) (*peerProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &peerProxy{ln: ln, target: target, self: self, cut: cut, who: who, conns: map[*peerConn]struct{}{}}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

func (p *peerProxy) addr() string { return p.ln.Addr().String() }

// enforce closes every open connection that the current partition cuts.
func (p *peerProxy) enforce() {
	p.mu.Lock()
	var doomed []*peerConn
	for c := range p.conns {
		if p.cut(c.from, p.self) {
			doomed = append(doomed, c)
		}
	}
	p.mu.Unlock()
	for _, c := range doomed {
		c.close()
	}
}

func (p *peerProxy) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	_ = p.ln.Close()
	for c := range conns {
		c.close()
	}
	p.wg.Wait()
}

func (p *peerProxy) acceptLoop() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.serve(in)
	}
}

// maxHeader bounds how much of a connection is read to find its sender.
const maxHeader = 16 << 10

func (p *peerProxy) serve(in net.Conn) {
	defer p.wg.Done()
	c := &peerConn{in: in, from: -1}
	if p.cut(-1, p.self) {
		c.close()
		return
	}
	// Read the first request's header; the bytes read are forwarded first.
	br := bufio.NewReaderSize(in, 4096)
	var head bytes.Buffer
	_ = in.SetReadDeadline(time.Now().Add(10 * time.Second))
	for head.Len() < maxHeader {
		line, err := br.ReadSlice('\n')
		head.Write(line)
		if err != nil && err != bufio.ErrBufferFull {
			c.close()
			return
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 && err == nil {
			break
		}
		if name, value, ok := strings.Cut(string(line), ":"); ok && strings.EqualFold(strings.TrimSpace(name), "X-PeerURLs") {
			c.from = p.who(strings.TrimSpace(value))
		}
	}
	_ = in.SetReadDeadline(time.Time{})
	if p.cut(c.from, p.self) {
		c.close()
		return
	}
	out, err := net.Dial("tcp", p.target)
	if err != nil {
		c.close()
		return
	}
	c.out = out
	if !p.track(c) {
		c.close()
		return
	}
	defer p.untrack(c)
	// A partition that began while this connection was being set up.
	if p.cut(c.from, p.self) {
		c.close()
		return
	}
	if _, err := out.Write(head.Bytes()); err != nil {
		c.close()
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(out, br); c.close() })
	wg.Go(func() { _, _ = io.Copy(in, out); c.close() })
	wg.Wait()
}

func (p *peerProxy) track(c *peerConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *peerProxy) untrack(c *peerConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}
