package lock

import "sync/atomic"

var DebugCnt [6]atomic.Int64
