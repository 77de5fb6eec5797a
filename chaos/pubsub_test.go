package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/pubsub"
	"github.com/concordkit/concord/testcluster"
)

// The pubsub checker. Publishers on clients of their own publish numbered
// payloads to one topic with a small ring; subscribers on clients of their
// own follow it from a revision before the first publish, one of them slow
// with a small buffer. Checks, per subscriber:
//   - events come in strictly increasing revision order;
//   - sequence numbers go up by one from message to message unless a Gap came
//     between them: a jump without a Gap is a silent loss;
//   - a delivered message carries the payload that was acknowledged at its
//     revision;
//   - at the end, every acknowledged publish is delivered or inside a Gap.

type pubsubSub struct {
	name     string
	r        *report
	mu       sync.Mutex // protects the fields below
	lastRev  int64
	lastSeq  uint64
	gapSince bool // a Gap came after the last message
	got      map[int64]bool
	gaps     [][2]int64
	dropped  [][2]int64 // gap notices the unprotected variant dropped
	messages int
	moved    chan struct{} // closed and replaced on each event
}

func (s *pubsubSub) onEvent(ev pubsub.Event, acked *sync.Map, honourGaps bool) {
	s.mu.Lock()
	defer func() {
		close(s.moved)
		s.moved = make(chan struct{})
		s.mu.Unlock()
	}()
	if g := ev.Gap; g != nil {
		if !honourGaps {
			s.dropped = append(s.dropped, [2]int64{g.From, g.To})
			return // the unprotected variant drops gap notices
		}
		if g.From <= s.lastRev || g.To < g.From {
			s.r.violate("pubsub: %s: gap %v after revision %d", s.name, *g, s.lastRev)
		}
		s.gaps = append(s.gaps, [2]int64{g.From, g.To})
		s.lastRev = max(s.lastRev, g.To)
		s.gapSince = true
		return
	}
	m := ev.Message
	s.messages++
	if m.Rev <= s.lastRev {
		s.r.violate("pubsub: %s: message at revision %d after revision %d", s.name, m.Rev, s.lastRev)
	}
	if m.Seq != s.lastSeq+1 && !s.gapSince {
		s.r.violate("pubsub: %s: message %d at revision %d follows message %d with no gap reported: %d messages lost silently",
			s.name, m.Seq, m.Rev, s.lastSeq, m.Seq-s.lastSeq-1)
	}
	if want, ok := acked.Load(m.Rev); ok && want.(string) != string(m.Payload) {
		s.r.violate("pubsub: %s: message at revision %d carries %q, %q was published there", s.name, m.Rev, m.Payload, want)
	}
	s.got[m.Rev] = true
	s.lastRev, s.lastSeq, s.gapSince = m.Rev, m.Seq, false
}

func (s *pubsubSub) covered(rev int64) bool {
	if s.got[rev] {
		return true
	}
	for _, g := range s.gaps {
		if g[0] <= rev && rev <= g[1] {
			return true
		}
	}
	return false
}

type pubsubRun struct {
	publishers, subscribers int
	protected               bool // false: subscribers drop gap notices
	ring                    int
	slow                    time.Duration // the last subscriber's pause per event
	nemesis                 nemesisConfig
	duration                time.Duration
}

func runPubsub(t *testing.T, c *testcluster.Cluster, seed int64, cfg pubsubRun) (*report, *nemesis) {
	ctx := ctxT(t, cfg.duration+2*time.Minute)
	r := newReport(t, seed)
	topic := "chaos/" + strings.ReplaceAll(t.Name(), "/", "_") + "/topic"
	cfg.nemesis.clients = nil
	newHub := func() *pubsub.Hub {
		cli, err := c.NewClient()
		require.NoError(t, err)
		cfg.nemesis.clients = append(cfg.nemesis.clients, cli)
		h := pubsub.NewHub(cli)
		t.Cleanup(func() { _ = h.Close() })
		return h
	}
	start, err := c.Admin().Get(ctx, topic)
	require.NoError(t, err)
	from := start.Header.Revision + 1

	var acked sync.Map // rev → payload
	var published, ambiguous atomic.Int64
	var maxAcked atomic.Int64
	subCtx, subStop := context.WithCancel(ctx)
	defer subStop()
	var subWG sync.WaitGroup
	subs := make([]*pubsubSub, cfg.subscribers)
	for i := range subs {
		h := newHub()
		var opts []pubsub.SubscribeOption
		slow := i == cfg.subscribers-1 && cfg.slow > 0
		if slow {
			opts = append(opts, pubsub.WithBuffer(2))
		}
		sub, err := h.Subscribe(subCtx, topic, pubsub.FromRevision(from), opts...)
		require.NoError(t, err)
		ps := &pubsubSub{name: fmt.Sprintf("subscriber %d", i), r: r, got: map[int64]bool{}, moved: make(chan struct{})}
		subs[i] = ps
		subWG.Go(func() {
			defer sub.Close()
			for {
				ev, err := sub.Next(subCtx)
				if err != nil {
					return
				}
				ps.onEvent(ev, &acked, cfg.protected)
				if slow {
					pause(subCtx, cfg.slow)
				}
			}
		})
	}

	n := newNemesis(t, c, seed, cfg.nemesis)
	wctx, wstop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range cfg.publishers {
		h := newHub()
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(600+i)))
		wg.Go(func() {
			for seq := 0; wctx.Err() == nil; seq++ {
				payload := fmt.Sprintf("p%d-%d", i, seq)
				pctx, cancel := context.WithTimeout(wctx, 2*time.Second)
				rev, err := h.Publish(pctx, topic, []byte(payload), pubsub.WithMaxCount(cfg.ring))
				cancel()
				if err == nil {
					acked.Store(rev, payload)
					published.Add(1)
					r.ops.Add(1)
					for m := maxAcked.Load(); rev > m && !maxAcked.CompareAndSwap(m, rev); m = maxAcked.Load() {
					}
				} else if wctx.Err() == nil {
					ambiguous.Add(1)
				}
				pause(wctx, time.Duration(rng.IntN(4))*time.Millisecond)
			}
		})
	}
	nctx, ncancel := context.WithTimeout(ctx, nemesisTime(c, cfg.duration))
	n.run(nctx)
	ncancel()
	wstop()
	wg.Wait()

	// Each subscriber must account for every acknowledged publish.
	last := maxAcked.Load()
	wait := 30 * time.Second
	if !cfg.protected {
		wait = 3 * time.Second // a subscriber that drops gaps may never get there
	}
	fctx, fcancel := context.WithTimeout(ctx, wait)
	defer fcancel()
	for _, s := range subs {
		for {
			s.mu.Lock()
			done, ch := s.lastRev >= last, s.moved
			s.mu.Unlock()
			if done {
				break
			}
			select {
			case <-ch:
				continue
			case <-fctx.Done():
			}
			break
		}
	}
	subStop()
	subWG.Wait()
	notes := []string{fmt.Sprintf("%d publishes acknowledged, %d failed in transit", published.Load(), ambiguous.Load())}
	for _, s := range subs {
		missing := 0
		acked.Range(func(k, _ any) bool {
			if rev := k.(int64); rev >= from && !s.covered(rev) {
				missing++
				if missing <= 3 {
					r.violate("pubsub: %s: message acknowledged at revision %d neither delivered nor inside a gap (last revision seen %d)", s.name, rev, s.lastRev)
				}
			}
			return true
		})
		notes = append(notes, fmt.Sprintf("%s: %d delivered, %d gaps, %d unaccounted", s.name, s.messages, len(s.gaps), missing))
		if len(s.dropped) > 0 {
			notes = append(notes, fmt.Sprintf("%s dropped %d gap notices %v", s.name, len(s.dropped), s.dropped[:min(len(s.dropped), 6)]))
		}
	}
	r.note("%s", strings.Join(notes, "; "))
	return r, n
}

func TestChaosPubsub(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	r, n := runPubsub(t, c, s, pubsubRun{
		publishers: 2, subscribers: 3, protected: true, ring: 64, slow: 5 * time.Millisecond,
		nemesis: defaultNemesis(), duration: chaosDuration(6 * time.Second),
	})
	r.expectNone(t, n)
}

// TestChaosPubsubCheckerCatchesDroppedGaps runs a slow subscriber that
// drops the gap notices it is sent: its losses become silent, and the
// checker must see them.
func TestChaosPubsubCheckerCatchesDroppedGaps(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	cfg := defaultNemesis()
	cfg.kinds = nil
	r, n := runPubsub(t, c, s, pubsubRun{
		publishers: 2, subscribers: 1, protected: false, ring: 64, slow: 100 * time.Millisecond,
		nemesis: cfg, duration: 4 * time.Second,
	})
	r.expectSome(t, n)
}
