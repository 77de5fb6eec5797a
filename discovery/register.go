package discovery

import (
	"context"
	"maps"

	"github.com/concordkit/concord/leasekeeper"
)

// Registration is an instance's record, kept in etcd while the keeper lives.
// Its methods are safe for concurrent use.
type Registration struct {
	b       *binding
	service string
	id      string
	addr    string
}

// Register writes the record of instance id of service, at addr with the
// given metadata, bound to k's lease: it disappears when the lease ends (the
// process died or was cut off for a TTL) and is written again on each new
// lease generation, until Deregister or k.Close. Bad input (an invalid service
// name, an empty or invalid ID, an empty address, a record over etcd's
// request limit) is an error before anything is written; so is an ID held by
// another lease (ErrExists). Register waits for a live lease if k is between
// generations.
//
// Cost: one transaction; two when the record of an earlier lease of k is
// still there.
func Register(ctx context.Context, k *leasekeeper.Keeper, service, id, addr string, metadata map[string]string) (*Registration, error) {
	val, err := encodeInstance(service, id, addr, metadata)
	if err != nil {
		return nil, err
	}
	b, err := bind(ctx, k, instancesPrefix(service)+id, val)
	if err != nil {
		return nil, err
	}
	return &Registration{b: b, service: service, id: id, addr: addr}, nil
}

// Key returns the etcd key of the record.
func (r *Registration) Key() string { return r.b.key }

// Update replaces the instance's metadata. It writes only over the
// registration's own record (a guarded transaction, one round trip). Between
// lease generations the new metadata is kept and written on re-registration,
// and Update returns ErrLost. Writes of one record are serialised: Update
// waits for one in progress (another Update, a re-registration) until ctx
// ends, and then returns ctx's cause with the metadata unchanged.
func (r *Registration) Update(ctx context.Context, metadata map[string]string) error {
	val, err := encodeInstance(r.service, r.id, r.addr, maps.Clone(metadata))
	if err != nil {
		return err
	}
	return r.b.set(ctx, val)
}

// Deregister stops re-registration and deletes the record if it is still
// this registration's (one guarded transaction). It is idempotent. If the
// delete fails the record still goes with its lease.
//
// Waiting for a write in progress (an Update, a re-registration) ends with
// ctx. The delete itself does not: so that a canceled caller still
// deregisters, it is retried while etcd cannot be reached, and Deregister may
// outlive ctx until the delete is confirmed or the keeper's lease is lost,
// at most the lease TTL. Once the lease is lost there is nothing to delete
// (the record goes with the lease, when etcd expires it): Deregister then
// returns nil without a round trip.
func (r *Registration) Deregister(ctx context.Context) error { return r.b.close(ctx) }
