// Package health reports a lease keeper's state, and optionally this
// process's leadership, to liveness and readiness probes: an http.Handler
// for HTTP probes, and Serve for the standard gRPC health service.
//
// A probe is healthy while the keeper's lease is live: Connected, Suspended
// (renewals failing, safe deadline not yet passed: holdings are still
// valid) or Reconnected. It is unhealthy once the lease is Lost (the keeper
// is granting a new one; every holding on the old lease has ended) or the
// keeper is Closed. With RequireLeader it is healthy only while, in
// addition, a Leadership it was given holds a live term: a readiness probe
// for an active-passive service whose traffic goes only to the leader.
//
// What is guaranteed: the probe reads the keeper's and the term's state as
// the process knows it, with no round trip to etcd; a Lost keeper is
// reported unhealthy from the moment its holdings' contexts were canceled.
// What is not: that etcd agrees. A process cut off from etcd stays healthy
// until its safe deadline (Suspended), and a term whose key someone deleted
// stays "leader" until the term's watch reports it. Wiring an unhealthy
// Lost state to a liveness probe restarts the process at every lease loss,
// which a keeper recovers from by itself: liveness usually wants only
// Closed to fail, readiness the rest.
package health

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/leasekeeper"
)

// Probe reports on one keeper (and optionally one Leadership).
type Probe struct {
	k             *leasekeeper.Keeper
	lead          *Leadership
	requireLeader bool
}

// Option configures a Probe.
type Option func(*Probe)

// WithLeadership adds l's state to the probe's status ("leader").
func WithLeadership(l *Leadership) Option { return func(p *Probe) { p.lead = l } }

// RequireLeader makes the probe healthy only while the Leadership given
// with WithLeadership holds a live term; without WithLeadership the probe
// is never healthy, and says why.
func RequireLeader() Option { return func(p *Probe) { p.requireLeader = true } }

// New returns a probe of k. It does no I/O.
func New(k *leasekeeper.Keeper, opts ...Option) *Probe {
	p := &Probe{k: k}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Status is what the probe reports, also as the HTTP answer's JSON body.
type Status struct {
	Healthy    bool      `json:"healthy"`
	State      string    `json:"state"`      // the keeper's state
	Lease      string    `json:"lease"`      // the current lease ID, hex
	Generation uint64    `json:"generation"` // the current lease's generation
	SafeUntil  time.Time `json:"safe_until"` // the current lease's safe deadline
	Leader     *bool     `json:"leader,omitempty"`
	Token      int64     `json:"token,omitempty"` // the term's fencing token, while leader
	Reason     string    `json:"reason,omitempty"`
}

// Status reads the probe's state now.
func (p *Probe) Status() Status {
	if p.k == nil {
		return Status{State: "none", Reason: "health: nil keeper"}
	}
	st := p.k.State()
	l := p.k.Current()
	s := Status{
		// The lease's own context ends first when the keeper loses it or
		// closes (Close revokes it only after): unhealthy from then on.
		Healthy:    st.Live() && l.Err() == nil,
		State:      st.String(),
		Lease:      strconv.FormatInt(int64(l.ID()), 16),
		Generation: l.Generation(),
		SafeUntil:  p.k.SafeUntil(),
	}
	if !s.Healthy {
		s.Reason = "lease " + st.String()
		if err := l.Err(); err != nil {
			s.Reason += ": " + err.Error()
		}
	}
	if p.requireLeader && p.lead == nil {
		s.Healthy, s.Reason = false, "health: RequireLeader without WithLeadership"
	}
	if p.lead != nil {
		token, leader := p.lead.Token()
		s.Leader = &leader
		s.Token = token
		if p.requireLeader && !leader && s.Healthy {
			s.Healthy, s.Reason = false, "not leader"
		}
	}
	return s
}

// ServeHTTP answers 200 while healthy and 503 otherwise, with the Status as
// JSON. Only GET and HEAD are served.
func (p *Probe) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "health: method not allowed", http.StatusMethodNotAllowed)
		return
	}
	s := p.Status()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !s.Healthy {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(s)
}

// Serve keeps service's status on srv (SERVING while healthy, NOT_SERVING
// otherwise) in step with the probe, from the keeper's state changes and
// the Leadership's, until ctx ends or the keeper is closed; it sets
// NOT_SERVING before it returns.
func (p *Probe) Serve(ctx context.Context, srv *health.Server, service string) {
	defer srv.SetServingStatus(service, healthpb.HealthCheckResponse_NOT_SERVING)
	if p.k == nil {
		return
	}
	events, cancel := p.k.Subscribe()
	defer cancel()
	for {
		var changed <-chan struct{}
		if p.lead != nil {
			changed = p.lead.changed()
		}
		// The lease's end comes before the keeper's state change when it
		// closes: follow both.
		var leaseDone <-chan struct{}
		if l := p.k.Current(); l.Err() == nil {
			leaseDone = l.Done()
		}
		st := healthpb.HealthCheckResponse_NOT_SERVING
		if p.Status().Healthy {
			st = healthpb.HealthCheckResponse_SERVING
		}
		srv.SetServingStatus(service, st)
		select {
		case <-ctx.Done():
			return
		case _, ok := <-events:
			if !ok {
				return // closed
			}
		case <-changed:
		case <-leaseDone:
		}
	}
}

// Leadership follows this process's current term for a Probe. The zero
// value holds no term. Its methods are safe for concurrent use.
type Leadership struct {
	mu     sync.Mutex
	term   *election.Term
	notify chan struct{} // closed and replaced at each change
	stop   func() bool   // ends the AfterFunc on the current term
}

// Set makes t the current term (nil: none). The Leadership reads "not
// leader" again as soon as t's context ends, without another call; with
// election.Run, call Set(t) at the start of fn.
func (l *Leadership) Set(t *election.Term) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stop != nil {
		l.stop()
		l.stop = nil
	}
	l.term = t
	if t != nil {
		l.stop = context.AfterFunc(t.Context(), l.changedNow)
	}
	l.signalLocked()
}

// Token returns the current term's fencing token and whether it is live.
func (l *Leadership) Token() (int64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term == nil || l.term.Err() != nil {
		return 0, false
	}
	return l.term.Token(), true
}

func (l *Leadership) changedNow() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.signalLocked()
}

func (l *Leadership) signalLocked() {
	if l.notify != nil {
		close(l.notify)
		l.notify = nil
	}
}

// changed returns a channel closed at the next change.
func (l *Leadership) changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.notify == nil {
		l.notify = make(chan struct{})
	}
	return l.notify
}
