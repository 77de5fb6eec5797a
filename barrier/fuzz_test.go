package barrier

import (
	"errors"
	"testing"
)

func FuzzDecodeCount(f *testing.F) {
	for _, seed := range []string{"2/3", "0/1", "3/3", "", "/", "-1/3", "4/3", "1/0", "x/y", "1/2/3", "99999999999999999999/1"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, i, err := decodeCount(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		if i < 1 || r < 0 || r > i {
			t.Fatalf("decoded out of range: %d/%d", r, i)
		}
		r2, i2, err := decodeCount([]byte(encodeCount(r, i)))
		if err != nil || r2 != r || i2 != i {
			t.Fatalf("round trip of %d/%d: %d/%d, %v", r, i, r2, i2, err)
		}
	})
}
