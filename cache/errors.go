package cache

import (
	"errors"

	"github.com/concordkit/concord/internal/compat"
)

// ErrInvalid wraps every decoding or validation failure of a typed value.
var ErrInvalid = errors.New("cache: invalid value")

// ErrClosed is returned by calls on a closed cache.
var ErrClosed = errors.New("cache: closed")

// ErrUnsupported reports an etcd server the cache cannot be right on (etcd
// 3.4; see the package doc).
var ErrUnsupported = compat.ErrUnsupported
