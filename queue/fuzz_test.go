package queue

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/concordkit/concord/internal/codec"
)

func FuzzDecodeTask(f *testing.F) {
	f.Add(encodeTask(taskMeta{Prio: 3, Enq: 42, Dedup: "d", MaxAtt: 5}, []byte("payload")))
	f.Add(encodeTask(taskMeta{MaxAtt: 1}, nil))
	f.Add(encodeTask(taskMeta{MaxAtt: 1, Trace: map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}, nil))
	f.Add([]byte("{\"v\":1,\"m\":2,\"tc\":{}}\nabc"))
	f.Add([]byte("{\"v\":1}\n"))
	f.Add([]byte("garbage"))
	f.Add([]byte("{\"v\":1,\"m\":2,\"x\":1}\nabc"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, payload, err := decodeTask(b)
		if err != nil {
			return
		}
		m2, p2, err := decodeTask(encodeTask(m, payload))
		if err != nil || !reflect.DeepEqual(m2, m) || !bytes.Equal(p2, payload) {
			t.Fatalf("round trip: %+v %q → %+v %q (%v)", m, payload, m2, p2, err)
		}
	})
}

func FuzzDecodeStatus(f *testing.F) {
	f.Add(encodeStatus(statusRecord{State: StateQueued, Pos: "i/r/x", At: 1}))
	f.Add(encodeStatus(statusRecord{State: StateDead, Attempt: 3, Err: "boom", Token: 9}))
	f.Add([]byte(`{"v":1,"s":"running"}`))
	f.Add([]byte(`{"v":1,"s":"queued"}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeStatus(b)
		if err != nil {
			return
		}
		s2, err := decodeStatus(encodeStatus(s))
		if err != nil || s2 != s {
			t.Fatalf("round trip: %+v → %+v (%v)", s, s2, err)
		}
	})
}

func FuzzDecodeProgress(f *testing.F) {
	f.Add(encodeProgress(progressRecord{Fraction: 0.5, Message: "m", Token: 3}, []byte("cp")))
	f.Add(encodeProgress(progressRecord{Fraction: 1}, nil))
	f.Add([]byte("{\"v\":1,\"f\":2}\n"))
	f.Add([]byte("{\"v\":1,\"f\":NaN}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, cp, err := decodeProgress(b)
		if err != nil {
			return
		}
		if p.Fraction < 0 || p.Fraction > 1 {
			t.Fatalf("fraction %v accepted", p.Fraction)
		}
		p2, cp2, err := decodeProgress(encodeProgress(p, cp))
		if err != nil || p2 != p || !bytes.Equal(cp, cp2) {
			t.Fatalf("round trip: %+v → %+v (%v)", p, p2, err)
		}
	})
}

func FuzzDecodeClaimAndDead(f *testing.F) {
	f.Add(encodeClaim(claimRecord{Worker: "w", Nonce: "n", Lease: 7, At: 1}))
	f.Add(encodeDead(deadRecord{Reason: "r", Attempt: 2, Token: 4}))
	f.Add([]byte(`{"w":""}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := decodeClaim(b); err == nil {
			if c2, err := decodeClaim(encodeClaim(c)); err != nil || c2 != c {
				t.Fatalf("claim round trip: %+v → %+v (%v)", c, c2, err)
			}
		}
		if d, err := decodeDead(b); err == nil {
			if d2, err := decodeDead(encodeDead(d)); err != nil || d2 != d {
				t.Fatalf("dead round trip: %+v → %+v (%v)", d, d2, err)
			}
		}
	})
}

func FuzzParseIndexKey(f *testing.F) {
	l := layout{prefix: "q/.queue/"}
	id := "18ea4f6a8610d0b5f7c5c4d8"
	f.Add(l.ready(5, 123, id)[len(l.index()):])
	f.Add(l.delayed(99, -7, id)[len(l.index()):])
	f.Add("r/zz/1/x")
	f.Add("d/0000000000000001/7fffffff/" + id + "/extra")
	f.Fuzz(func(t *testing.T, rest string) {
		e, err := parseIndexKey(l.index()+rest, rest)
		if err != nil {
			return
		}
		var again string
		if e.ready {
			again = l.ready(e.prio, e.at, e.id)
		} else {
			again = l.delayed(e.at, e.prio, e.id)
		}
		if again != l.index()+rest {
			t.Fatalf("key %q parsed as %+v re-encodes as %q", rest, e, again)
		}
	})
}

func TestPriorityEncodingOrders(t *testing.T) {
	ps := []int32{2147483647, 10, 1, 0, -1, -10, -2147483648}
	for i := 1; i < len(ps); i++ {
		if !(encPrio(ps[i-1]) < encPrio(ps[i])) {
			t.Errorf("priority %d does not sort before %d", ps[i-1], ps[i])
		}
		if p, err := decPrio(encPrio(ps[i])); err != nil || p != ps[i] {
			t.Errorf("decPrio(encPrio(%d)) = %d, %v", ps[i], p, err)
		}
	}
}

// FuzzParseClaimExact checks that the fast claim parser accepts only what
// the full decoder accepts, with the same result, and that it accepts what
// encodeClaim writes.
func FuzzParseClaimExact(f *testing.F) {
	f.Add(encodeClaim(claimRecord{Worker: "w-0123456789ab", Nonce: "0011223344556677", Lease: 7587, At: 1763800000000000000}))
	f.Add(encodeClaim(claimRecord{Worker: "wörker <&>", Nonce: "n", Lease: -1, At: 0}))
	f.Add([]byte(`{"w":"a","n":"b","l":01,"at":2}`))
	f.Add([]byte(`{"w":"a\"b","n":"b","l":1,"at":2}`))
	f.Add([]byte(`{"w":"","n":"b","l":1,"at":2}`))
	f.Add([]byte(`{"w":"a","n":"b","l":99999999999999999999,"at":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := parseClaimExact(b)
		if !ok {
			return
		}
		var full claimRecord
		if err := codec.Strict(b, &full); err != nil || full != fast || full.Worker == "" || full.Nonce == "" {
			t.Fatalf("%q: fast %+v, full %+v (%v)", b, fast, full, err)
		}
	})
}

func TestParseClaimExactRoundTrip(t *testing.T) {
	for _, c := range []claimRecord{
		{Worker: "w-0123456789ab", Nonce: "0011223344556677", Lease: 7587, At: 1763800000000000000},
		{Worker: "wörker", Nonce: "n", Lease: -1},
	} {
		got, ok := parseClaimExact(encodeClaim(c))
		if !ok || got != c {
			t.Errorf("%+v: got %+v, %v", c, got, ok)
		}
	}
	// Escaped strings (json.Marshal also escapes <, > and &) take the full
	// decoder.
	for _, w := range []string{"a\"b", "<&>"} {
		c := claimRecord{Worker: w, Nonce: "n"}
		if _, ok := parseClaimExact(encodeClaim(c)); ok {
			t.Errorf("worker %q took the fast path", w)
		}
		if got, err := decodeClaim(encodeClaim(c)); err != nil || got != c {
			t.Errorf("worker %q: got %+v, %v", w, got, err)
		}
	}
}
