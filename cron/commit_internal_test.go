package cron

import (
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestCommitRefusesOwnKeys(t *testing.T) {
	c := &commitState{reserved: reservedPrefixes("N"), desc: "j"}
	for _, tc := range []struct {
		op clientv3.Op
		ok bool
	}{
		{clientv3.OpPut("N/ledger/1", "x"), true},
		{clientv3.OpDelete("N/a", clientv3.WithPrefix()), true},
		{clientv3.OpPut("N/.cron/claim/j", "x"), false},
		{clientv3.OpDelete("N/.cron/done/j/", clientv3.WithPrefix()), false},
		{clientv3.OpDelete("N/", clientv3.WithPrefix()), false},              // the range holds the prefix
		{clientv3.OpDelete("N/.cr", clientv3.WithRange("N/.cron/d")), false}, // the range reaches into it
		{clientv3.OpDelete("N/.f", clientv3.WithFromKey()), true},            // starts after both
		{clientv3.OpDelete("M", clientv3.WithFromKey()), false},              // from before it to the end
		{clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut("N/.cron/x", "")}, nil), false},
		{clientv3.OpTxn(nil, nil, []clientv3.Op{clientv3.OpPut("N/ok", "")}), true},
		{clientv3.OpPut("N/.election/zz", "x"), false}, // the scheduler's election
		{clientv3.OpDelete("N/.election/", clientv3.WithPrefix()), false},
	} {
		err := c.checkOps([]clientv3.Op{tc.op})
		if (err == nil) != tc.ok {
			t.Errorf("op on %q (range end %q): error %v, want ok=%v", tc.op.KeyBytes(), tc.op.RangeBytes(), err, tc.ok)
		}
	}
}
