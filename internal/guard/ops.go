package guard

import (
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// CheckOps vets operations a caller hands to a recipe to apply in the
// recipe's own transaction (cron's Run.Commit, queue's Task.Ack). It
// reports, with pkg as the error's prefix, an operation on a key or range
// that meets one of the reserved prefixes (the recipe's own keys), also
// inside nested transactions, or operations that together carry more bytes
// than maxBytes less room for the recipe's own operations and framing.
// Comparisons are not checked: reading a recipe's keys harms nothing.
func CheckOps(pkg string, ops []clientv3.Op, maxBytes int, reserved ...string) error {
	n, err := checkOps(pkg, ops, reserved)
	if err != nil {
		return err
	}
	if n > maxBytes-requestOverhead {
		return fmt.Errorf("%s: operations of %d bytes are over the %d bytes etcd accepts in one request (less %d bytes for the recipe's own operations and framing)",
			pkg, n, maxBytes, requestOverhead)
	}
	return nil
}

func checkOps(pkg string, ops []clientv3.Op, reserved []string) (int, error) {
	size := 0
	for _, op := range ops {
		if op.IsTxn() {
			cmps, thenOps, elseOps := op.Txn()
			for _, c := range cmps {
				size += len(c.KeyBytes()) + len(c.GetCompare().GetRangeEnd()) + len(c.ValueBytes())
			}
			for _, nested := range [][]clientv3.Op{thenOps, elseOps} {
				n, err := checkOps(pkg, nested, reserved)
				if err != nil {
					return 0, err
				}
				size += n
			}
			continue
		}
		k, r := string(op.KeyBytes()), string(op.RangeBytes())
		size += len(k) + len(r) + len(op.ValueBytes())
		for _, p := range reserved {
			if meets(k, r, p) {
				return 0, fmt.Errorf("%s: operation on the recipe's own keys (%q)", pkg, k)
			}
		}
	}
	return size, nil
}

// meets reports whether the key k, or the range [k, r), holds a key that
// starts with prefix. r is "" for a single key and "\x00" for every key
// from k on.
func meets(k, r, prefix string) bool {
	if strings.HasPrefix(k, prefix) {
		return true
	}
	end := clientv3.GetPrefixRangeEnd(prefix)
	switch {
	case r == "\x00":
		return k < end
	case r != "":
		return k < end && r > prefix
	}
	return false
}
