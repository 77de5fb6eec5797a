package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/internal/retry"
)

// Scheme is the gRPC target scheme of the resolver: concord:///payments
// resolves the instances of service "/payments".
const Scheme = "concord"

// roundRobin is the service config the resolver hands to gRPC: spread calls
// over every live instance rather than pick the first (gRPC's default).
const roundRobin = `{"loadBalancingConfig":[{"round_robin":{}}]}`

// NewResolverBuilder returns a gRPC resolver builder for the concord scheme,
// resolving through cli. Register it per client connection with
// grpc.WithResolvers, or globally with resolver.Register:
//
//	conn, err := grpc.NewClient("concord:///payments",
//		grpc.WithResolvers(discovery.NewResolverBuilder(cli)), ...)
//
// The target's path is the service name, leading '/' included. Each
// resolver follows its service with a Watcher (one paged read, then one
// watch) and sends gRPC the live instances' addresses on every change, with
// round-robin balancing; an instance whose lease ends drops out when etcd
// deletes its record, within the lease TTL of its death.
func NewResolverBuilder(cli *clientv3.Client, opts ...ResolverOption) resolver.Builder {
	b := &builder{cli: cli, serviceConfig: roundRobin}
	for _, o := range opts {
		o(b)
	}
	return b
}

// ResolverOption configures NewResolverBuilder.
type ResolverOption func(*builder)

// WithServiceConfig replaces the service config the resolver hands to gRPC
// (default: round robin over the instances) with a JSON service config of
// your own, for another balancing policy or per-method retry policies. An
// invalid config is reported to gRPC, which then keeps its previous one.
func WithServiceConfig(json string) ResolverOption {
	return func(b *builder) { b.serviceConfig = json }
}

type builder struct {
	cli           *clientv3.Client
	serviceConfig string
}

func (b *builder) Scheme() string { return Scheme }

// Build starts resolving; it does no I/O itself (gRPC may call it on a path
// that must not block): a goroutine loads and follows the service.
func (b *builder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	service := target.URL.Path
	if err := names.Validate("discovery", service); err != nil {
		return nil, fmt.Errorf("discovery: target %q: %w", target.URL.String(), err)
	}
	if err := guard.CheckClient("discovery", b.cli); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &grpcResolver{cli: b.cli, service: service, serviceConfig: b.serviceConfig, cc: cc, cancel: cancel}
	r.wg.Add(1)
	go r.run(ctx)
	return r, nil
}

type grpcResolver struct {
	cli           *clientv3.Client
	service       string
	serviceConfig string
	cc            resolver.ClientConn
	cancel        context.CancelFunc
	wg            sync.WaitGroup // joins run
}

func (r *grpcResolver) run(ctx context.Context) {
	defer r.wg.Done()
	sc := r.cc.ParseServiceConfig(r.serviceConfig)
	bo := retry.RecoverPolicy.New()
	var w *Watcher
	for w == nil {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var err error
		w, err = Watch(lctx, r.cli, r.service, WithErrorHandler(func(key string, err error) {
			slog.Warn("discovery: skipping a record", "key", key, "err", err)
		}))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.cc.ReportError(err)
			if bo.Wait(ctx) != nil {
				return
			}
		}
	}
	defer w.Close()
	list, _ := w.Instances()
	r.update(list, sc)
	for {
		select {
		case <-ctx.Done():
			return
		case list, ok := <-w.Changes():
			if !ok {
				return
			}
			r.update(list, sc)
		}
	}
}

func (r *grpcResolver) update(list []Instance, sc *serviceconfig.ParseResult) {
	eps := make([]resolver.Endpoint, 0, len(list))
	for _, inst := range list {
		eps = append(eps, resolver.Endpoint{Addresses: []resolver.Address{{Addr: inst.Addr}}})
	}
	// An error here (no addresses for round robin) only means calls wait or
	// fail until an instance registers; the next change updates again.
	_ = r.cc.UpdateState(resolver.State{Endpoints: eps, ServiceConfig: sc})
}

// ResolveNow does nothing: the watcher is always current.
func (r *grpcResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close stops following the service and joins the resolver's goroutine.
func (r *grpcResolver) Close() {
	r.cancel()
	r.wg.Wait()
}
