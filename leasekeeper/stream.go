package leasekeeper

import (
	"context"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// kaStream is one long-lived LeaseKeepAlive stream, shared by successive
// renewals until it fails. Opening a stream costs far more than a renewal on
// it: with authentication on, clientv3 authenticates again for every new
// stream (a password check on the server), so a stream per renewal would
// make each renewal as slow as a login.
//
// Renewals are sent one at a time and a stream is dropped after any timeout
// or error, so every response on a live stream answers the request in
// flight, and its send time is known exactly.
type kaStream struct {
	cancel context.CancelFunc
	stream pb.Lease_LeaseKeepAliveClient
	resps  chan *pb.LeaseKeepAliveResponse
	done   chan struct{} // closed when the receive loop ends; err is set before
	err    error
}

// openStream opens a stream that lives under ctx (the keeper's lifetime);
// opening it must finish before actx (the attempt) ends. Its receive loop is
// joined by the keeper's wait group.
func (k *Keeper) openStream(ctx, actx context.Context) (*kaStream, error) {
	// WithRequireLeader: a member cut off from the leader fails the stream
	// instead of leaving renewals unanswered until they time out.
	sctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	// Opening may authenticate first, under the stream's own context, which
	// has no deadline: on a connection that went silent it would wait for
	// good. The attempt's deadline cancels it.
	stopWatchdog := context.AfterFunc(actx, cancel)
	st, err := pb.NewLeaseClient(k.cli.ActiveConnection()).LeaseKeepAlive(sctx)
	if !stopWatchdog() {
		cancel()
		return nil, fmt.Errorf("leasekeeper: open keep-alive stream: %w", actx.Err())
	}
	if err != nil {
		cancel()
		return nil, rpctypes.Error(err)
	}
	s := &kaStream{cancel: cancel, stream: st, resps: make(chan *pb.LeaseKeepAliveResponse, 1), done: make(chan struct{})}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		defer close(s.done)
		for {
			r, err := st.Recv()
			if err != nil {
				s.err = rpctypes.Error(err)
				return
			}
			select {
			case s.resps <- r:
			default: // no request in flight: not ours to deliver
			}
		}
	}()
	return s, nil
}

func (s *kaStream) close() {
	s.cancel()
	<-s.done
}

// renew sends one renewal of id on the keeper's stream (opening one if
// needed) and waits for its answer until actx ends. It returns the TTL the
// server granted, or rpctypes.ErrLeaseNotFound if the lease is gone. Only the
// renewal goroutine in flight touches k.ka; run starts them one at a time.
//
// A stream refused for its auth token is reopened once within the attempt:
// clientv3 authenticates through one member, and the stream may reach another
// that has not applied the new token yet (clientv3 retries unary calls for
// the same reason). A new stream authenticates again.
func (k *Keeper) renew(ctx, actx context.Context, id clientv3.LeaseID) (int64, error) {
	ttl, err := k.renewOnce(ctx, actx, id)
	if errors.Is(err, rpctypes.ErrInvalidAuthToken) || errors.Is(err, rpctypes.ErrAuthOldRevision) {
		ttl, err = k.renewOnce(ctx, actx, id)
	}
	return ttl, err
}

func (k *Keeper) renewOnce(ctx, actx context.Context, id clientv3.LeaseID) (int64, error) {
	if k.ka == nil {
		s, err := k.openStream(ctx, actx)
		if err != nil {
			return 0, err
		}
		k.ka = s
	}
	s := k.ka
	drop := func() {
		s.close()
		k.ka = nil
	}
	if err := s.stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)}); err != nil {
		drop()
		return 0, rpctypes.Error(err)
	}
	select {
	case r := <-s.resps:
		if r.ID != int64(id) {
			drop()
			return 0, fmt.Errorf("leasekeeper: renewal of %x answered for %x", int64(id), r.ID)
		}
		if r.TTL <= 0 {
			return 0, rpctypes.ErrLeaseNotFound
		}
		return r.TTL, nil
	case <-s.done:
		err := s.err
		drop()
		return 0, err
	case <-actx.Done():
		drop()
		return 0, actx.Err()
	}
}
