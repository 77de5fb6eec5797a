// Package watch is the one way concord follows keys in etcd: a watch that
// survives everything etcd or clientv3 ends a watch for that a new watch can
// get past, so that no recipe, tool or example handles a watch failure on its
// own.
//
// clientv3 resumes a watch by itself after a broken connection, but it ends
// every watch of a gRPC stream (closing its channel, with or without an
// error) when the stream fails for another reason: the member lost its
// leader (watches WithRequireLeader), the stream was refused for its auth
// token, the client's context machinery canceled it. One of those is a race
// every user of password auth meets: clientv3 authenticates again for each
// new stream, through one member, and the stream may reach another member
// that has not applied the new token yet; that member cancels the watch with
// "invalid auth token" (measured: 2–3 of 30 fresh watches on etcd 3.5 and
// 3.6 with simple tokens). A Watch opens a new watch after each such end,
// with backoff, and ends only for good reasons: Stop, a permission etcd
// denies, a start revision etcd compacted away, a request etcd calls
// invalid.
//
// # Two ways to follow
//
// Synced (Config.From == 0): the watch has no start revision, so etcd syncs
// it at once instead of in its unsynced-watcher loop, which runs every
// 100 ms. Every creation, the first and each one after a failure, is
// delivered as a response with Created set and the header revision at which
// the watch began: events after the caller's last read and up to that
// revision were not seen, and the caller reads again when it is past its
// last read (the gap re-read). Waiters use it.
//
// Synced, then exact (Config.Exact): the first watch is synced and its
// creation announced; every later one resumes as a watch from a revision
// does. A follower that starts from "now" uses it.
//
// From a revision (Config.From > 0): every event from From on, in order,
// exactly once: after a failure the watch resumes from the revision after
// the last event it delivered. Progress notifications are delivered but do
// not move the resume point, because etcd 3.4 answers a progress request
// before the watch has caught up. If the resume point has been compacted
// away the watch ends with an error that errors.Is rpctypes.ErrCompacted,
// and CompactRevision tells where history now starts: the caller reads
// afresh and opens a new watch. Followers of a prefix (caches, feeds,
// observers) use it.
//
// # A member that hangs
//
// A member whose process hangs (SIGSTOP, a frozen VM, a stalled disk)
// keeps its TCP connections open and sends nothing, and clientv3 does not
// notice (gRPC's keep-alive, when a client sets one, waits at least 10 s).
// A Watch that stays silent for Config.Probe asks etcd for progress; if no
// answer comes in as long again, it opens its watch again on a gRPC stream
// of its own, which clientv3 opens on the next member in turn, and a synced
// watch announces the new creation as after any failure. clientv3's Watch
// waits for etcd to confirm a new watch, and a new stream can land on the
// hung member again: a watch opened again whose creation is not confirmed
// within twice the probe period moves on the same way.
//
// # Cost
//
// One goroutine per Watch, joined by Stop, which moves each response from
// clientv3's channel to C. All watches of a Stream share one gRPC stream.
// A restart costs a new watch request (and, when the stream itself failed,
// a new stream, which with auth on costs an authentication). A silent
// watch sends one progress request per Probe (2 s by default); its answer
// reaches every watch of the stream, so a stream's watches probe about
// once per period between them.
package watch

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/internal/retry"
)

// Config says what to watch and how.
type Config struct {
	// From is the first revision to deliver events of; 0 follows from
	// the watch's creation (synced), announcing each creation.
	From int64
	// Exact, for a synced watch, makes every watch after the first resume
	// from the revision after the last one delivered (the first creation's,
	// or the last event's), as a watch From a revision does: nothing is
	// missed, no creation is announced after the first, and a compacted
	// resume point ends the watch. A follower that starts "from now" (a
	// feed) uses it.
	Exact bool
	// Stream is the gRPC watch stream to travel on; the zero Stream is the
	// client's shared one.
	Stream Stream
	// Options are clientv3's: WithPrefix, WithRange, WithFilterPut,
	// WithProgressNotify, WithPrevKV. WithRev and WithCreatedNotify are
	// the Watch's own business.
	Options []clientv3.OpOption
	// Progress delivers progress notifications on C: etcd's periodic ones
	// (WithProgressNotify) and answers to progress requests, the Watch's
	// own probes included. Without it they are dropped. Only a user that
	// runs on etcd 3.5 or later may trust an answer to a progress request
	// (3.4 answers before the watch has caught up).
	Progress bool
	// Probe is how long the watch may stay silent before it asks etcd for
	// progress, to learn whether the member serving it still answers; a
	// watch whose probe goes unanswered as long again is opened again on a
	// stream of its own (another member, in all likelihood). 0 means
	// DefaultProbe; negative turns probing off.
	Probe time.Duration
}

// DefaultProbe is the silence after which a watch checks that the member
// serving it answers. A member whose process hangs (SIGSTOP, a frozen VM)
// keeps its TCP connections open and sends nothing: without a probe its
// watches would wait, silent, until it runs again, while the other members
// went on without it one election timeout after it stopped.
const DefaultProbe = 2 * time.Second

// Watch follows one key or range. C delivers etcd's responses, never a
// failure: it is closed after Stop or after a failure no new watch can get
// past, and Err then tells which. Its methods are safe for concurrent use,
// but C has one reader at a time.
type Watch struct {
	// C delivers the responses: events, progress notifications and (synced
	// watches) creations.
	C <-chan clientv3.WatchResponse

	cli  *clientv3.Client
	key  string
	cfg  Config
	c    chan clientv3.WatchResponse
	stop context.CancelFunc
	life context.Context
	done chan struct{} // closed when run returns

	rev      atomic.Int64 // highest revision delivered: events and creations
	restarts atomic.Int64
	hangs    atomic.Int64           // restarts after an unanswered probe or creation
	stream   atomic.Pointer[Stream] // the stream the current watch travels on
	resuming atomic.Bool            // every new watch starts at rev+1 (From, or Exact once created)

	mu         sync.Mutex // protects err, compactRev
	err        error
	compactRev int64
}

// Open starts following key. It returns once etcd has confirmed the first
// watch, or once ctx ends, whichever is first: clientv3 registers a watch
// only on an open stream, and a client that reaches no member waits for one.
// A Watch whose first creation ctx cut short goes on trying in the
// background; ctx bounds that first wait only. The caller must Stop it.
func Open(ctx context.Context, cli *clientv3.Client, key string, cfg Config) *Watch {
	life, stop := context.WithCancel(cfg.Stream.Context())
	c := make(chan clientv3.WatchResponse)
	w := &Watch{C: c, cli: cli, key: key, cfg: cfg, c: c, stop: stop, life: life, done: make(chan struct{})}
	st := cfg.Stream
	w.stream.Store(&st)
	if cfg.From > 0 {
		w.rev.Store(cfg.From - 1)
		w.resuming.Store(true)
	}
	ch, cancel, _ := w.start(ctx)
	go w.run(ch, cancel)
	return w
}

// Key returns the key (or start of the range) the watch is on.
func (w *Watch) Key() string { return w.key }

// Rev returns the highest revision the watch has delivered: of an event, or
// (synced) of a creation. A watch that passes between users who read at
// different times (a pool) tells each whether another took events after its
// own read.
func (w *Watch) Rev() int64 { return w.rev.Load() }

// Restarts returns how many times a new watch replaced a failed one.
func (w *Watch) Restarts() int64 { return w.restarts.Load() }

// Hangs returns how many of those restarts followed an unanswered probe or
// a creation not confirmed within twice the probe period.
func (w *Watch) Hangs() int64 { return w.hangs.Load() }

// Err returns, once C is closed, why: nil after Stop, else the failure.
func (w *Watch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// CompactRevision returns, after the watch ended because its resume point
// was compacted, the revision history now starts at.
func (w *Watch) CompactRevision() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.compactRev
}

// Stop ends the watch and waits for its goroutine to return. C is closed.
func (w *Watch) Stop() {
	w.stop()
	<-w.done
}

// Done is closed when the watch has ended (C is closed).
func (w *Watch) Done() <-chan struct{} { return w.done }

// RequestProgress asks etcd for a progress notification on every watch of
// this watch's stream. etcd 3.5 and later answer once every watch on the
// stream has delivered all events up to the revision announced; etcd 3.4
// answers at once (see the package doc). ctx bounds the request: it waits
// for the stream while it reconnects.
func (w *Watch) RequestProgress(ctx context.Context) error {
	rctx, cancel := context.WithCancel(w.stream.Load().Context())
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	err := w.cli.RequestProgress(rctx)
	if err != nil && ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

// start opens one clientv3 watch from the resume point; ctx bounds only the
// wait for its creation (clientv3's Watch returns once etcd confirmed it).
// It reports whether the watch was created before ctx ended.
func (w *Watch) start(ctx context.Context) (clientv3.WatchChan, context.CancelFunc, bool) {
	wctx, cancel := context.WithCancel(w.life)
	opts := make([]clientv3.OpOption, 0, len(w.cfg.Options)+2)
	opts = append(opts, w.cfg.Options...)
	if w.resuming.Load() {
		opts = append(opts, clientv3.WithRev(w.rev.Load()+1))
	} else {
		opts = append(opts, clientv3.WithCreatedNotify())
	}
	// The watch's context carries its stream's metadata (and with it
	// WithRequireLeader): clientv3 puts watches with the same metadata on
	// one gRPC stream.
	wctx = metadata.NewOutgoingContext(wctx, streamMD(w.stream.Load()))
	stop := context.AfterFunc(ctx, cancel)
	ch := w.cli.Watch(wctx, w.key, opts...)
	return ch, cancel, stop()
}

// restart opens the watch again. A watch whose creation is not confirmed
// within the probe period is on a stream served by a member that does not
// answer (clientv3 reuses the stream of the same metadata, and would wait
// for the creation for ever): it moves to a stream of its own and tries
// again, as after an unanswered probe.
func (w *Watch) restart() (clientv3.WatchChan, context.CancelFunc) {
	probe := w.cfg.Probe
	if probe == 0 {
		probe = DefaultProbe
	}
	for {
		w.restarts.Add(1)
		if probe < 0 {
			ch, cancel, _ := w.start(w.life)
			return ch, cancel
		}
		cctx, ccancel := context.WithTimeout(w.life, 2*probe)
		ch, cancel, created := w.start(cctx)
		ccancel()
		if created || w.life.Err() != nil {
			return ch, cancel
		}
		cancel()
		w.hangs.Add(1)
		st := w.stream.Load().next()
		w.stream.Store(&st)
	}
}

// streamMD is the outgoing metadata of a watch on st.
func streamMD(st *Stream) metadata.MD {
	md, _ := metadata.FromOutgoingContext(st.Context())
	return md
}

// run moves responses to C and opens a new watch after each failure that
// a new watch can get past.
func (w *Watch) run(ch clientv3.WatchChan, cancel context.CancelFunc) {
	defer close(w.done)
	defer close(w.c)
	bo := retry.WatchPolicy.New()
	quick := false // the one immediate retry after an auth race was used
	for {
		err, delivered := w.pump(ch)
		cancel()
		if w.life.Err() != nil {
			return
		}
		if compactRev, fatal := w.fatal(err); fatal {
			w.mu.Lock()
			w.err, w.compactRev = err, compactRev
			w.mu.Unlock()
			return
		}
		if delivered {
			bo.Reset()
			quick = false
		}
		// A stream refused for its token is opened again at once, once: the
		// new stream authenticates again, and by then the member that
		// refused has applied the token in all likelihood. Anything else
		// backs off.
		switch {
		case errors.Is(err, errHung):
			// The member serving the stream does not answer. A watch with
			// the same metadata would join the same gRPC stream, so this
			// one moves to a stream of its own, which clientv3 opens on
			// the next member in turn.
			w.hangs.Add(1)
			st := w.stream.Load().next()
			w.stream.Store(&st)
		case retry.AuthRace(err) && !quick:
			quick = true
		default:
			if bo.Wait(w.life) != nil {
				return
			}
		}
		ch, cancel = w.restart()
	}
}

// errEnded reports a watch channel that closed without a response saying
// why (clientv3 does this when it cancels a stream's watches).
var errEnded = errors.New("watch: watch ended without a reason")

// errHung reports a watch whose probe went unanswered.
var errHung = errors.New("watch: the member serving the watch does not answer")

// pump delivers ch's responses until it fails, and returns why, and whether
// it delivered anything. While the watch is silent it probes (see
// Config.Probe).
func (w *Watch) pump(ch clientv3.WatchChan) (error, bool) {
	delivered := false
	probe := w.cfg.Probe
	if probe == 0 {
		probe = DefaultProbe
	}
	var timer *time.Timer
	var tick <-chan time.Time
	if probe > 0 {
		timer = time.NewTimer(probe)
		defer timer.Stop()
		tick = timer.C
	}
	probing := false
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case resp, ok = <-ch:
		case <-tick:
			if probing {
				return errHung, delivered
			}
			// Any answer will do: a progress notification, an event.
			pctx, cancel := context.WithTimeout(w.life, probe)
			_ = w.RequestProgress(pctx)
			cancel()
			probing = true
			timer.Reset(probe)
			continue
		case <-w.life.Done():
			return nil, delivered
		}
		if !ok {
			return errEnded, delivered
		}
		if timer != nil {
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
			timer.Reset(probe)
			probing = false
		}
		if err := resp.Err(); err != nil {
			if resp.CompactRevision != 0 {
				return &compacted{err: err, rev: resp.CompactRevision}, delivered
			}
			return err, delivered
		}
		if resp.Canceled {
			return errEnded, delivered
		}
		switch {
		case resp.Created:
			if w.resuming.Load() {
				continue
			}
			w.raise(resp.Header.Revision)
			if w.cfg.Exact {
				w.resuming.Store(true)
			}
		case len(resp.Events) > 0:
			w.raise(resp.Events[len(resp.Events)-1].Kv.ModRevision)
		case resp.IsProgressNotify() && !w.cfg.Progress:
			continue
		}
		select {
		case w.c <- resp:
			delivered = true
		case <-w.life.Done():
			return nil, delivered
		}
	}
}

func (w *Watch) raise(rev int64) {
	for {
		cur := w.rev.Load()
		if rev <= cur || w.rev.CompareAndSwap(cur, rev) {
			return
		}
	}
}

type compacted struct {
	err error
	rev int64
}

func (c *compacted) Error() string { return c.err.Error() }
func (c *compacted) Unwrap() error { return c.err }

// fatal reports whether err ends the watch for good. Synced watches have no
// start revision, so compaction cannot concern them.
func (w *Watch) fatal(err error) (compactRev int64, fatal bool) {
	var c *compacted
	if errors.As(err, &c) || errors.Is(err, rpctypes.ErrCompacted) {
		if c != nil {
			compactRev = c.rev
		}
		return compactRev, w.resuming.Load()
	}
	return 0, !retry.StreamTransient(err)
}

// Stream names the gRPC watch stream a watch travels on. clientv3
// multiplexes all watches whose contexts carry the same metadata onto one
// stream; Stream{} is the client's shared stream (for watches with
// WithRequireLeader, as all of concord's are). A recipe that asks etcd for
// progress (RequestProgress) keeps its watches on a stream of its own: etcd
// answers only when every watch on the stream is in step.
type Stream struct {
	name string
	gen  int // > 0: a stream of its own after the stream name gen-1 hung
}

// NewStream returns a stream of its own, named name (printable ASCII: gRPC
// metadata takes nothing else).
func NewStream(name string) Stream { return Stream{name: name} }

// next returns a stream that no other watch of this one's travels on.
func (s Stream) next() Stream {
	return Stream{name: s.name + "~" + names.NewID(), gen: s.gen + 1}
}

// Context returns a context that puts a watch or a progress request on the
// stream. It carries WithRequireLeader: a watch served by a member cut off
// from the leader fails (and is opened again, elsewhere if need be) instead
// of waiting for events that will not come.
func (s Stream) Context() context.Context {
	ctx := context.Background()
	if s.name != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "concord-watch-stream", s.name)
	}
	return clientv3.WithRequireLeader(ctx)
}

// Next returns the next response; once the watch has ended, its error, or
// ErrStopped after Stop; or ctx's cause if ctx ends first.
func (w *Watch) Next(ctx context.Context) (clientv3.WatchResponse, error) {
	select {
	case resp, ok := <-w.C:
		if !ok {
			if err := w.Err(); err != nil {
				return resp, err
			}
			return resp, ErrStopped
		}
		return resp, nil
	case <-ctx.Done():
		return clientv3.WatchResponse{}, context.Cause(ctx)
	}
}

// ErrStopped is returned by Next on a stopped watch.
var ErrStopped = errors.New("watch: stopped")
