package discovery

import (
	"context"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/leasekeeper"
)

// Member is one member of a group.
type Member struct {
	ID      string
	Payload []byte
	// Lease is the lease the member's key is bound to; Revision is the
	// key's create revision.
	Lease    clientv3.LeaseID
	Revision int64
}

// Membership is a process's seat in a group, kept while the keeper lives.
type Membership struct {
	b *binding
}

// Join adds member id with payload to group, bound to k's lease like a
// registration (see Register): gone with the lease, back on each new lease
// generation, until Leave or k.Close. The payload is stored as it is.
func Join(ctx context.Context, k *leasekeeper.Keeper, group, id string, payload []byte) (*Membership, error) {
	if err := names.Validate("discovery", group); err != nil {
		return nil, err
	}
	if err := checkID("member ID", id); err != nil {
		return nil, err
	}
	if err := guard.CheckValueSize("discovery", "member payload", len(payload)); err != nil {
		return nil, err
	}
	b, err := bind(ctx, k, membersPrefix(group)+id, slices.Clone(payload))
	if err != nil {
		return nil, err
	}
	return &Membership{b: b}, nil
}

// Key returns the etcd key of the membership.
func (m *Membership) Key() string { return m.b.key }

// Update replaces the member's payload (see Registration.Update).
func (m *Membership) Update(ctx context.Context, payload []byte) error {
	if err := guard.CheckValueSize("discovery", "member payload", len(payload)); err != nil {
		return err
	}
	return m.b.set(ctx, slices.Clone(payload))
}

// Leave stops re-joining and deletes the member's key if it is still this
// membership's. It is idempotent. Like Registration.Deregister, it may
// outlive ctx while etcd cannot be reached, until the delete is confirmed or
// the keeper's lease is lost (at most the lease TTL), and returns nil without
// a round trip once the lease is lost.
func (m *Membership) Leave(ctx context.Context) error { return m.b.close(ctx) }
