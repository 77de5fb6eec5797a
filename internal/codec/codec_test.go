package codec

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestStrict(t *testing.T) {
	type rec struct {
		A int    `json:"a"`
		B string `json:"b,omitempty"`
	}
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{"a":1}`, true},
		{" {\"a\":1,\"b\":\"x\"}\n", true},
		{`{"a":1,"c":2}`, false},  // unknown field
		{`{"a":1}{"a":2}`, false}, // a second value
		{`{"a":1}}`, false},       // a stray closer, which Decoder.More misses
		{`{"a":1}]`, false},
		{`{"a":1} x`, false},
		{`{"a":"1"}`, false}, // wrong type
		{`{"a":1`, false},
		{``, false},
		{`null`, true}, // JSON's null leaves the value as it was; callers check fields
	} {
		var r rec
		err := Strict([]byte(tc.in), &r)
		assert.Equal(t, tc.ok, err == nil, "%q: %v", tc.in, err)
	}
}
