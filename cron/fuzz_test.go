package cron

import (
	"errors"
	"reflect"
	"testing"
)

func FuzzDecodeClaim(f *testing.F) {
	for _, seed := range []string{`{"time":1,"token":2,"attempt":1,"at":3}`, `{"time":5,"token":2,"attempt":1,"at":3,"open":[{"time":4,"attempt":2}]}`, `{"time":5,"token":2,"attempt":1,"open":[]}`, `{"time":5,"token":2,"attempt":1,"open":[{"time":6,"attempt":1}]}`, `{}`, `null`, `[]`, `{"time":-1}`, `{"time":1,"token":1,"attempt":0}`, `x`, ``} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeClaim(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		if c.Time <= 0 || c.Token <= 0 || c.Attempt < 1 {
			t.Fatalf("accepted out-of-range claim %+v", c)
		}
		s, err := encode(c)
		if err != nil {
			t.Fatal(err)
		}
		if c2, err := decodeClaim([]byte(s)); err != nil || !reflect.DeepEqual(c2, c) {
			t.Fatalf("round trip of %+v: %+v, %v", c, c2, err)
		}
	})
}

func FuzzDecodeStatus(f *testing.F) {
	for _, seed := range []string{`{"job":"j","outcome":"ok","duration":5}`, `{"outcome":"maybe"}`, `{"duration":-1}`, `{"last_time":"not a time"}`, `null`, `1`, ``} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeStatus(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		if !s.Outcome.valid() || s.Duration < 0 {
			t.Fatalf("accepted out-of-range status %+v", s)
		}
	})
}

func FuzzDecodeControl(f *testing.F) {
	for _, seed := range []string{`{"at":1}`, `{"at":0}`, `{}`, `"x"`, ``} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeControl(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		if c.At <= 0 {
			t.Fatalf("accepted out-of-range control %+v", c)
		}
	})
}

func FuzzParseCtl(f *testing.F) {
	k := keysOf("n")
	for _, seed := range []string{k.paused("j"), k.trigger("j"), k.ctl() + "j", k.ctl() + "/paused", k.ctl() + "a/b/trigger", "other"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, key string) {
		job, what, ok := k.parseCtl(key)
		if !ok {
			return
		}
		if validateJob(job) != nil || (what != "paused" && what != "trigger") {
			t.Fatalf("parsed %q into %q, %q", key, job, what)
		}
	})
}
