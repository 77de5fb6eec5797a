package testcluster

import (
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// proxy forwards TCP connections from a loopback listener to one member's
// client address. Cutting it stalls traffic in both directions without closing
// anything, the way a network partition looks to TCP: connections stay open,
// bytes already read are held and delivered after the cut is restored, new
// connections are accepted but not forwarded. Nothing is lost or reordered,
// so a gRPC connection resumes as soon as the cut ends, with no reconnect
// backoff; meanwhile the server hears nothing and lets the client's leases
// expire.
//
// A proxy can also delay traffic, to model a network: each chunk read in
// either direction is delivered delay plus a random part of jitter after it
// was read, and never before the chunk read ahead of it (TCP does not
// reorder), without holding up the reading of the next one.
type proxy struct {
	ln     net.Listener
	target func() string // the member's current client address
	lat    Latency

	mu     sync.Mutex // protects open, conns, closed
	open   chan struct{}
	conns  map[net.Conn]struct{}
	closed bool

	wg sync.WaitGroup // joins the accept loop and every copy goroutine
}

func newProxy(target func() string, lat Latency) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, target: target, lat: lat, open: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(p.open)
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// gate returns a channel that is closed while traffic may flow.
func (p *proxy) gate() chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
		p.open = make(chan struct{})
	default: // already cut
	}
}

func (p *proxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
	default:
		close(p.open)
	}
}

// stopped is closed by close; copy loops blocked at a cut gate wake on it.
func (p *proxy) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	select {
	case <-p.open:
	default:
		close(p.open)
	}
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	_ = p.ln.Close()
	for c := range conns {
		_ = c.Close()
	}
	p.wg.Wait()
}

func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

func (p *proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(in) {
			_ = in.Close()
			return
		}
		p.wg.Add(1)
		go p.serve(in)
	}
}

func (p *proxy) serve(in net.Conn) {
	defer p.wg.Done()
	// A connection made during a cut is held, not refused or forwarded.
	<-p.gate()
	out, err := net.Dial("tcp", p.target())
	if err != nil || !p.track(out) {
		if out != nil {
			_ = out.Close()
		}
		_ = in.Close()
		p.untrack(in)
		return
	}
	var once sync.Once
	shut := func() {
		once.Do(func() {
			_ = in.Close()
			_ = out.Close()
			p.untrack(in)
			p.untrack(out)
		})
	}
	p.wg.Add(2)
	go func() { defer p.wg.Done(); p.pipe(out, in); shut() }()
	go func() { defer p.wg.Done(); p.pipe(in, out); shut() }()
}

func (p *proxy) pipe(dst io.Writer, src io.Reader) {
	if p.lat.Delay > 0 || p.lat.Jitter > 0 {
		p.delayedPipe(dst, src)
		return
	}
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			<-p.gate()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Latency is a delay added to each direction of a client's traffic: Delay
// plus a uniformly random part of Jitter. A round trip then takes at least
// twice Delay longer.
type Latency struct {
	Delay, Jitter time.Duration
}

type chunk struct {
	b   []byte
	due time.Time
}

// delayedPipe copies src to dst, delivering each chunk at its due time. The
// reader goes on reading while earlier chunks wait, so the delay adds
// latency without limiting throughput.
func (p *proxy) delayedPipe(dst io.Writer, src io.Reader) {
	chunks := make(chan chunk, 256)
	done := make(chan struct{})
	go func() {
		defer close(done)
		timer := time.NewTimer(0)
		<-timer.C
		defer timer.Stop()
		for c := range chunks {
			if d := time.Until(c.due); d > 0 {
				timer.Reset(d)
				<-timer.C
			}
			<-p.gate()
			if _, err := dst.Write(c.b); err != nil {
				// Drain so the reader never blocks on a dead writer.
				for range chunks {
				}
				return
			}
		}
	}()
	var last time.Time
	for {
		buf := make([]byte, 32*1024)
		n, err := src.Read(buf)
		if n > 0 {
			due := time.Now().Add(p.lat.Delay)
			if p.lat.Jitter > 0 {
				due = due.Add(rand.N(p.lat.Jitter))
			}
			if due.Before(last) {
				due = last
			}
			last = due
			chunks <- chunk{b: buf[:n], due: due}
		}
		if err != nil {
			break
		}
	}
	close(chunks)
	<-done
}
