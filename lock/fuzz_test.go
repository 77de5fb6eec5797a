package lock

import (
	"testing"
	"time"
)

func FuzzDecodeValue(f *testing.F) {
	for _, s := range []string{"c1:0:", "c1:1700000000000000000:host-1:pid 7", "c1:-1:x", "c1::", "c1:12", "s1:1:0:", "", "c1:99999999999999999999:"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		at, v, err := decodeValue(b)
		if err != nil {
			return
		}
		if at.Before(time.Unix(0, 0)) {
			t.Fatalf("decodeValue(%q): negative time %v", b, at)
		}
		// Re-encoding gives a value that decodes the same.
		at2, v2, err := decodeValue([]byte(encodeValue(at, v)))
		if err != nil || !at2.Equal(at) || v2 != v {
			t.Fatalf("round trip of %q: %v %q %v", b, at2, v2, err)
		}
	})
}

func FuzzDecodeRelease(f *testing.F) {
	for _, s := range []string{"request", "force", "", "forced", "REQUEST"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		force, err := decodeRelease(b)
		if err != nil {
			return
		}
		want := releaseRequest
		if force {
			want = releaseForce
		}
		if string(b) != want {
			t.Fatalf("decodeRelease(%q) accepted as force=%v", b, force)
		}
	})
}
