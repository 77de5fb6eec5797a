package discovery

import (
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/codec"
	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
)

// MaxIDLen is the longest instance or member ID accepted, in bytes.
const MaxIDLen = 256

// Instance is one registered instance of a service.
type Instance struct {
	Service  string
	ID       string
	Addr     string
	Metadata map[string]string
	// Lease is the lease the record is bound to; Revision is the record's
	// create revision (it changes when the instance is registered again).
	Lease    clientv3.LeaseID
	Revision int64
}

// record is the stored form of an instance: JSON, so that operators can read
// it with etcdctl. The ID is repeated so that a record copied to another key
// is recognised as foreign.
type record struct {
	ID       string            `json:"id"`
	Addr     string            `json:"addr"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

func instancesPrefix(service string) string { return names.Prefix(service, "discovery") }

func membersPrefix(group string) string { return names.Prefix(group, "group") }

// checkID validates an instance or member ID: it becomes the last segment of
// a key.
func checkID(what, id string) error {
	if err := names.ValidateSegment("discovery", what, id, MaxIDLen); err != nil {
		return err
	}
	if strings.HasPrefix(id, ".") {
		return fmt.Errorf("discovery: invalid %s %q: starts with '.'", what, id)
	}
	return nil
}

// encodeInstance validates an instance's fields and returns its stored form.
func encodeInstance(service, id, addr string, md map[string]string) ([]byte, error) {
	if err := names.Validate("discovery", service); err != nil {
		return nil, err
	}
	if err := checkID("instance ID", id); err != nil {
		return nil, err
	}
	if addr == "" {
		return nil, fmt.Errorf("discovery: instance %q: empty address", id)
	}
	if !utf8.ValidString(addr) || !utf8.ValidString(strings.Join(slicesOf(md), "")) {
		return nil, fmt.Errorf("discovery: instance %q: address or metadata not valid UTF-8", id)
	}
	b, err := json.Marshal(record{ID: id, Addr: addr, Metadata: md})
	if err != nil {
		return nil, fmt.Errorf("discovery: instance %q: %w", id, err)
	}
	if err := guard.CheckValueSize("discovery", "instance record", len(b)); err != nil {
		return nil, err
	}
	return b, nil
}

// slicesOf lists md's keys and values, to check them together.
func slicesOf(md map[string]string) []string {
	out := make([]string, 0, 2*len(md))
	for k, v := range md {
		out = append(out, k, v)
	}
	return out
}

// decodeInstance reads the record stored at key under prefix. Anything but a
// well-formed record whose ID matches the key is ErrCorrupt.
func decodeInstance(service, prefix, key string, value []byte) (Instance, error) {
	id, ok := strings.CutPrefix(key, prefix)
	if !ok || checkID("instance ID", id) != nil {
		return Instance{}, fmt.Errorf("%w: key %q is not an instance key", ErrCorrupt, key)
	}
	var r record
	if err := codec.Strict(value, &r); err != nil {
		return Instance{}, fmt.Errorf("%w: %q: %v", ErrCorrupt, key, err)
	}
	if r.ID != id {
		return Instance{}, fmt.Errorf("%w: %q: record is for instance %q", ErrCorrupt, key, r.ID)
	}
	if r.Addr == "" {
		return Instance{}, fmt.Errorf("%w: %q: empty address", ErrCorrupt, key)
	}
	return Instance{Service: service, ID: id, Addr: r.Addr, Metadata: maps.Clone(r.Metadata)}, nil
}
