package guard

import (
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd's defaults for what one request may carry. A cluster can raise them;
// recipes accept options where that matters.
const (
	// MaxRequestBytes is etcd's default --max-request-bytes (1.5 MiB).
	MaxRequestBytes = 1536 * 1024
	// MaxTxnOps is etcd's default --max-txn-ops.
	MaxTxnOps = 128
	// requestOverhead leaves room for the key, the other ops of a recipe's
	// transaction and the protobuf framing.
	requestOverhead = 64 * 1024
)

// CheckValueSize reports a value too large to be written under etcd's default
// request limit, with pkg as the error's prefix.
func CheckValueSize(pkg, what string, n int) error {
	if n > MaxRequestBytes-requestOverhead {
		return fmt.Errorf("%s: %s of %d bytes is over the %d bytes etcd accepts in one request (less %d bytes for keys and framing)",
			pkg, what, n, MaxRequestBytes, requestOverhead)
	}
	return nil
}

// CheckClient reports a nil etcd client, with pkg as the error's prefix:
// a clear error rather than a panic on first use.
func CheckClient(pkg string, cli *clientv3.Client) error {
	if cli == nil {
		return fmt.Errorf("%s: nil client", pkg)
	}
	return nil
}
