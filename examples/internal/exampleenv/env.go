// Package exampleenv is where concord's examples run: a 3-member cluster of
// their own by default (embedded members, or etcd processes when
// CONCORD_ETCD names an etcd binary, see testcluster), or the etcd given by
// -endpoints (with TLS and user flags), with spans printed by -trace. The
// faults the examples show (a client cut off from etcd) work the same on
// both.
package exampleenv

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/concordkit/concord/internal/connect"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/testcluster"
)

// Options are the flags every example takes. The zero value runs on a
// cluster of the example's own without tracing.
type Options struct {
	Endpoints string // empty: start a 3-member cluster (embedded, or etcd processes with CONCORD_ETCD)
	CACert    string
	Cert      string
	Key       string
	User      string        // name:password, or name with the password in CONCORD_PASSWORD
	TTL       time.Duration // lease TTL; 0: see Env.LeaseTTL
	Trace     bool          // print spans to the output
}

// DefaultTTL is the lease TTL the examples use with -endpoints unless -ttl
// says otherwise. A lease must outlive the death of the etcd leader, or
// every etcd leader failover would cost the examples' processes their
// holdings: etcd's default timings (1 s election timeout) elect a new
// leader up to about 2 s after the old one stopped, the keeper renews every
// third of the TTL and gives a lease up a tenth of the TTL before its safe
// deadline, so TTL × (1 − 1/3 − 1/10) must exceed about 2.5 s: 5 s. (At
// those timings etcd raises any TTL under 2 s to 2 s anyway.)
const DefaultTTL = 5 * time.Second

// Register defines the flags on fs.
func (o *Options) Register(fs *flag.FlagSet) {
	fs.StringVar(&o.Endpoints, "endpoints", "", "comma-separated etcd client URLs (default: start a 3-member cluster: embedded, or etcd processes from the binary in "+testcluster.EnvBinary+")")
	fs.StringVar(&o.CACert, "cacert", "", "with -endpoints: PEM file of the members' CA")
	fs.StringVar(&o.Cert, "cert", "", "with -endpoints: PEM file of a client certificate")
	fs.StringVar(&o.Key, "key", "", "with -endpoints: PEM file of the client certificate's key")
	fs.StringVar(&o.User, "user", "", "with -endpoints: etcd user as name:password, or name with CONCORD_PASSWORD")
	fs.DurationVar(&o.TTL, "ttl", 0, "lease TTL (default: "+DefaultTTL.String()+" with -endpoints, which fits etcd's default 1 s election timeout; on the example's own cluster, the shortest that outlives its leader failover)")
	fs.BoolVar(&o.Trace, "trace", false, "print OpenTelemetry spans to stdout")
}

// Env is where an example runs.
type Env struct {
	// Admin is a client no fault touches, for setting up and reading back.
	Admin *clientv3.Client

	tc      *testcluster.Cluster // nil with -endpoints
	cfg     clientv3.Config      // with -endpoints
	ttl     time.Duration
	mu      sync.Mutex // protects clients, links
	clients []*clientv3.Client
	links   map[*clientv3.Client]*link // with -endpoints: each client's own network
	tp      *sdktrace.TracerProvider
	prevTP  trace.TracerProvider
}

// Setup connects as o says; the caller must Close the Env.
func Setup(ctx context.Context, out io.Writer, o Options) (*Env, error) {
	e := &Env{ttl: o.TTL, links: map[*clientv3.Client]*link{}}
	if o.TTL < 0 {
		return nil, fmt.Errorf("-ttl %v: must be positive", o.TTL)
	}
	if o.Trace {
		exp, err := stdouttrace.New(stdouttrace.WithWriter(out))
		if err != nil {
			return nil, err
		}
		// Recipes use the global provider unless told otherwise.
		e.tp = sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
		e.prevTP = otel.GetTracerProvider()
		otel.SetTracerProvider(e.tp)
	}
	if o.Endpoints == "" {
		c, err := testcluster.Start(ctx)
		if err != nil {
			e.Close()
			return nil, err
		}
		e.tc = c
		e.Admin = c.Admin()
		if e.ttl == 0 {
			e.ttl = c.FailoverTTL()
		}
		return e, nil
	}
	if err := e.connect(ctx, o); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// connect sets e up for the cluster at o.Endpoints.
func (e *Env) connect(ctx context.Context, o Options) error {
	cfg, err := connect.Settings{
		Endpoints: strings.Split(o.Endpoints, ","), CACert: o.CACert, Cert: o.Cert, Key: o.Key, User: o.User,
	}.Config("-")
	if err != nil {
		return err
	}
	e.cfg = cfg
	if e.ttl == 0 {
		e.ttl = DefaultTTL
	}
	admin, err := e.NewClient()
	if err != nil {
		return err
	}
	// clientv3.New does not wait for a connection: check that one answers.
	sctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := admin.Status(sctx, cfg.Endpoints[0]); err != nil {
		return fmt.Errorf("etcd at %s did not answer: %w", o.Endpoints, err)
	}
	e.Admin = admin
	return nil
}

// NewClient returns a client of its own, so that it can be cut off alone.
func (e *Env) NewClient() (*clientv3.Client, error) {
	var cli *clientv3.Client
	var err error
	var l *link
	if e.tc != nil {
		cli, err = e.tc.NewClient()
	} else {
		l = newLink()
		cfg := e.cfg
		cfg.DialOptions = append(append([]grpc.DialOption(nil), cfg.DialOptions...), grpc.WithContextDialer(l.dial))
		cli, err = clientv3.New(cfg)
	}
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.clients = append(e.clients, cli)
	if l != nil {
		e.links[cli] = l
	}
	e.mu.Unlock()
	return cli, nil
}

// Started describes the cluster the example started for itself, or returns
// "" when it was given -endpoints.
func (e *Env) Started() string {
	switch {
	case e.tc == nil:
		return ""
	case e.tc.Binary() != "":
		return fmt.Sprintf("started a 3-member cluster of etcd %s processes (%s)", e.tc.Version(), testcluster.EnvBinary)
	default:
		return "started an embedded 3-member etcd cluster"
	}
}

// LeaseTTL is the TTL for the examples' leases: -ttl if given; on the
// example's own cluster, the shortest TTL that outlives the death of its
// etcd leader (2 s for embedded members' 100 ms elections, which keeps the
// demos quick, 5 s for etcd processes' default 1 s); with -endpoints,
// DefaultTTL, sized for etcd's default timings.
func (e *Env) LeaseTTL() time.Duration { return e.ttl }

// Retry calls fn, one request that is safe to send again (a read, a delete,
// a put of the same value), until it succeeds, fails for good, or ctx ends.
// Each try is bounded by about an election timeout (retry.Attempt of ttl,
// the TTL of the leases involved): a request sent to an etcd leader that
// died or hangs gets no answer, and is better sent again to whichever
// member answers once the others have elected a new leader (about a second
// after the fault, at etcd's default timings) than waited on; and "request
// timed out", which etcd answers while it has no leader, is worth another
// try too.
func Retry(ctx context.Context, ttl time.Duration, fn func(context.Context) error) error {
	return retry.Attempts(ctx, retry.RequestPolicy, retry.Attempt(ttl), fn)
}

// Retry is Retry with the examples' lease TTL.
func (e *Env) Retry(ctx context.Context, fn func(context.Context) error) error {
	return Retry(ctx, e.ttl, fn)
}

// CutOff cuts cli, a client made by NewClient, off from every member as a
// partition or a long pause would: its requests and lease renewals stall
// (nothing is refused), so its leases expire on the server while the
// process lives on and learns of the loss from its keeper. On the example's
// own cluster the cluster's proxies do it; with -endpoints, the client's
// own dialer (see link), so it works against any cluster.
func (e *Env) CutOff(cli *clientv3.Client) {
	if e.tc != nil {
		e.tc.CutClient(cli)
		return
	}
	e.mu.Lock()
	l := e.links[cli]
	e.mu.Unlock()
	if l != nil {
		l.cut()
	}
}

// Restore undoes CutOff: stalled traffic flows again.
func (e *Env) Restore(cli *clientv3.Client) {
	if e.tc != nil {
		e.tc.RestoreClient(cli)
		return
	}
	e.mu.Lock()
	l := e.links[cli]
	e.mu.Unlock()
	if l != nil {
		l.restore()
	}
}

// Close closes every client it made, the embedded cluster and the tracer.
func (e *Env) Close() {
	e.mu.Lock()
	clients := e.clients
	e.clients = nil
	e.mu.Unlock()
	for _, cli := range clients {
		e.Restore(cli)
		cli.Close()
	}
	if e.tc != nil {
		e.tc.Close()
	}
	if e.tp != nil {
		_ = e.tp.Shutdown(context.Background())
		otel.SetTracerProvider(e.prevTP)
	}
}
