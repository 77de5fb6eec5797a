package exampleenv

import (
	"context"
	"net"
	"strings"
	"sync"
)

// link is the network between one client and the etcd members it was given
// with -endpoints. The client dials every connection through it, so that
// cut can stall them all the way a partition looks to TCP: connections stay
// open, nothing is refused or reset, bytes the server sends meanwhile are
// held and delivered after restore, and bytes the client sends wait. The
// server hears nothing from the client and expires its leases while the
// process lives on, which is the fault the examples show. It works against
// any cluster, with or without TLS (it sits below the TLS session), because
// it needs nothing from the members.
type link struct {
	mu   sync.Mutex    // protects open
	open chan struct{} // closed while traffic may flow
}

func newLink() *link {
	l := &link{open: make(chan struct{})}
	close(l.open)
	return l
}

// gate returns a channel that is closed while traffic may flow.
func (l *link) gate() chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

func (l *link) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.open:
		l.open = make(chan struct{})
	default: // already cut
	}
}

func (l *link) restore() {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.open:
	default:
		close(l.open)
	}
}

// wait returns true once traffic may flow, false if stop closes first.
func (l *link) wait(stop <-chan struct{}) bool {
	select {
	case <-l.gate():
		return true
	case <-stop:
		return false
	}
}

// dial is the client's dialer (grpc.WithContextDialer). addr is what
// clientv3 resolved an endpoint to: host:port, or unix:path for unix
// sockets.
func (l *link) dial(ctx context.Context, addr string) (net.Conn, error) {
	// A connection opened during a cut waits, as its SYN would go
	// unanswered; the dial's own deadline still applies.
	if !l.wait(ctx.Done()) {
		return nil, context.Cause(ctx)
	}
	network := "tcp"
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", strings.TrimPrefix(path, "//")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &stallConn{Conn: c, l: l, closed: make(chan struct{})}, nil
}

// stallConn is a connection that stops at the link's gate in both
// directions.
type stallConn struct {
	net.Conn
	l      *link
	once   sync.Once
	closed chan struct{} // closed by Close, so that a stalled call returns
}

// Read returns what arrived only while the link is open: bytes the server
// sent during a cut are held until it ends.
func (c *stallConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.l.wait(c.closed) {
		return 0, net.ErrClosed
	}
	return n, err
}

// Write sends nothing during a cut.
func (c *stallConn) Write(p []byte) (int, error) {
	if !c.l.wait(c.closed) {
		return 0, net.ErrClosed
	}
	return c.Conn.Write(p)
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}
