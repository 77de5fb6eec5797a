package semaphore

import (
	"testing"
	"time"
)

func FuzzDecodePermit(f *testing.F) {
	for _, s := range []string{"s1:1:0:", "s1:3:1700000000000000000:host:1", "s1:0:0:", "s1:-1:0:",
		"s1:01:0:", "c1:1:0:", "s1:1", "", "s1:99999999999999999999:0:", "s1:9223372036854775807:0:", "s1:2147483648:0:", "s1:2:-5:x"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, at, v, err := decodePermit(b)
		if err != nil {
			return
		}
		if n <= 0 || n > MaxLimit || at.Before(time.Unix(0, 0)) {
			t.Fatalf("decodePermit(%q) accepted n=%d at=%v", b, n, at)
		}
		if got := encodePermit(n, at, v); got != string(b) {
			t.Fatalf("round trip: %q → %q", b, got)
		}
	})
}

func FuzzDecodeLimit(f *testing.F) {
	for _, s := range []string{"1", "4", "0", "-2", "007", "", "x", "9223372036854775808", "2147483648", "2147483647", "+3", " 3"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := decodeLimit(b)
		if err != nil {
			return
		}
		if n <= 0 || n > MaxLimit {
			t.Fatalf("decodeLimit(%q) = %d", b, n)
		}
		if got := encodeLimit(n); got != string(b) {
			t.Fatalf("round trip: %q → %q", b, got)
		}
	})
}
