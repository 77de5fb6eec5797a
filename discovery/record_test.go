package discovery

import (
	"maps"
	"testing"
)

func TestRecordRoundTrip(t *testing.T) {
	b, err := encodeInstance("/svc", "i-1", "10.0.0.1:80", map[string]string{"zone": "a", "weight": "3"})
	if err != nil {
		t.Fatal(err)
	}
	inst, err := decodeInstance("/svc", instancesPrefix("/svc"), "/svc/.discovery/i-1", b)
	if err != nil {
		t.Fatal(err)
	}
	if inst.ID != "i-1" || inst.Addr != "10.0.0.1:80" || inst.Metadata["weight"] != "3" {
		t.Fatalf("round trip: %+v", inst)
	}
}

// FuzzDecodeInstance: whatever is stored under a discovery key, decoding
// never panics, and what it accepts encodes back to a record that decodes
// to the same instance.
func FuzzDecodeInstance(f *testing.F) {
	for _, seed := range []struct{ key, val string }{
		{"i-1", `{"id":"i-1","addr":"x:1"}`},
		{"i-1", `{"id":"i-1","addr":"x:1","metadata":{"a":"b"}}`},
		{"i-1", `{"id":"i-2","addr":"x:1"}`},
		{"i-1", `{"id":"i-1"}`},
		{"i-1", `{"id":"i-1","addr":"x:1","metadata":{"a":1}}`},
		{"i-1", `{"id":"i-1","addr":"x:1"} {}`},
		{"a/b", `{"id":"a/b","addr":"x:1"}`},
		{"", `{"id":"","addr":"x:1"}`},
		{"i", "\xff\xfe"},
		{"i", `null`},
		{"i", ``},
	} {
		f.Add(seed.key, []byte(seed.val))
	}
	const service = "/svc"
	prefix := instancesPrefix(service)
	f.Fuzz(func(t *testing.T, id string, val []byte) {
		inst, err := decodeInstance(service, prefix, prefix+id, val)
		if err != nil {
			return
		}
		b, err := encodeInstance(service, inst.ID, inst.Addr, inst.Metadata)
		if err != nil {
			return // accepted on read but not writable (for example invalid UTF-8 in metadata)
		}
		again, err := decodeInstance(service, prefix, prefix+id, b)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if again.ID != inst.ID || again.Addr != inst.Addr || !maps.Equal(again.Metadata, inst.Metadata) {
			t.Fatalf("round trip changed the instance: %+v vs %+v", inst, again)
		}
	})
}

// FuzzDecodeMember: any key under a group prefix decodes or is reported,
// never a panic.
func FuzzDecodeMember(f *testing.F) {
	f.Add("m1", []byte("payload"))
	f.Add("a/b", []byte{})
	f.Add(".x", []byte{0xff})
	prefix := membersPrefix("/g")
	f.Fuzz(func(t *testing.T, id string, val []byte) {
		m, err := decodeMember(prefix, prefix+id, val, 0, 1)
		if err == nil && m.ID != id {
			t.Fatalf("member %q decoded as %q", id, m.ID)
		}
	})
}
