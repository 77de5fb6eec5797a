package queue

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// No chunk of give-backs writes one task's keys twice, none is over the
// limit, and every give-back is in one chunk.
func TestChunkByKey(t *testing.T) {
	var gs []giveBack
	for i, k := range []string{"a", "a", "b", "a", "c", "d", "b"} {
		gs = append(gs, giveBack{seq: i, key: k})
	}
	chunks := chunkByKey(gs, 3)
	seen := map[int]bool{}
	for _, c := range chunks {
		assert.LessOrEqual(t, len(c), 3)
		keys := map[string]bool{}
		for _, g := range c {
			assert.False(t, keys[g.key], "key %s twice in one chunk", g.key)
			keys[g.key] = true
			assert.False(t, seen[g.seq])
			seen[g.seq] = true
		}
	}
	assert.Len(t, seen, len(gs))
	assert.Len(t, chunks, 3, "three claims of key a need three transactions")
	assert.Empty(t, chunkByKey(nil, 3))
}
