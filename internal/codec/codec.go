// Package codec is the one strict JSON decoder for the records concord
// stores and the values its cache decodes: a value under a recipe's keys
// that is not exactly a record of the expected shape is an error, which the
// recipe reports as its ErrCorrupt, rather than a record read in part.
package codec

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
)

// Strict decodes b into v. Unknown fields, a second value, and anything
// after the value but white space are errors: a foreign writer's record,
// or a newer one with fields this code does not know, is refused whole
// instead of being misread.
func Strict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	// Decoder.More is no test for trailing data: it reports false before
	// a stray '}' or ']'. Only io.EOF from the next token is the end.
	if _, err := dec.Token(); err != io.EOF {
		return errTrailing
	}
	return nil
}

var errTrailing = errors.New("trailing data after the JSON value")
