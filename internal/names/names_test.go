package names

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
		why  string
	}{
		{"jobs", true, ""},
		{"/jobs/reindex", true, ""},
		{"a/b-c_d.e", true, ""},
		{"naïve/日本", true, ""},
		{"", false, "empty"},
		{strings.Repeat("x", MaxLen), true, ""},
		{strings.Repeat("x", MaxLen+1), false, "longer than"},
		{"bad\xffutf8", false, "UTF-8"},
		{"nul\x00byte", false, "NUL"},
		{"tab\there", false, "control"},
		{"trailing/", false, "ends with"},
		{"/", false, "ends with"},
		{"a//b", false, "empty segment"},
		{"a/.lock", false, "reserved"},
		{".hidden", false, "reserved"},
		{"/a/../b", false, "reserved"},
		{"a/./b", false, "reserved"},
	} {
		err := Validate("lock", tc.name)
		if tc.ok {
			assert.NoError(t, err, "%q", tc.name)
			continue
		}
		if assert.Error(t, err, "%q", tc.name) {
			assert.True(t, strings.HasPrefix(err.Error(), "lock: invalid name"), err.Error())
			assert.Contains(t, err.Error(), tc.why)
		}
	}
}

func TestPrefixesDoNotNest(t *testing.T) {
	// No valid name's reserved prefix may contain another valid name's
	// reserved prefix, for any pair of names and kinds tried here.
	names := []string{"a", "a/b", "ab", "a/lock", "a/b/c", "/a", "/a/b"}
	kinds := []string{"lock", "election", "queue"}
	for _, n1 := range names {
		for _, n2 := range names {
			for _, k1 := range kinds {
				for _, k2 := range kinds {
					if n1 == n2 && k1 == k2 {
						continue
					}
					p1, p2 := Prefix(n1, k1), Prefix(n2, k2)
					assert.False(t, strings.HasPrefix(p1, p2), "%q nests in %q", p1, p2)
				}
			}
		}
	}
}

func FuzzValidate(f *testing.F) {
	for _, s := range []string{"a", "/a/b", "a/.x", "", "\x00", "a//", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := Validate("x", name)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "x: invalid name") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		// A valid name's reserved prefix contains no reserved segment other
		// than its own kind's.
		p := Prefix(name, "k")
		if strings.Count(p, "/.") != 1 {
			t.Fatalf("valid name %q yields prefix %q with more than one reserved segment", name, p)
		}
	})
}

func TestIsID(t *testing.T) {
	for s, want := range map[string]bool{
		"0123456789abcdef":  true,
		"ffffffffffffffff":  true,
		"0123456789ABCDEF":  false, // IDs are lowercase
		"0123456789abcdeg":  false,
		"0123456789abcde":   false,
		"0123456789abcdef0": false,
		"":                  false,
		"zz":                false,
	} {
		if got := IsID(s); got != want {
			t.Errorf("IsID(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestValidateSegment(t *testing.T) {
	for _, tc := range []struct {
		s, why string
	}{
		{"job-1", ""},
		{"ünï .x", ""},
		{"", "cron: invalid job name: empty"},
		{strings.Repeat("x", 9), "longer than 8 bytes"},
		{"a/b", "contains '/'"},
		{"a\x7fb", "control character"},
		{"a\nb", "control character"},
		{"\xff", "not valid UTF-8"},
	} {
		err := ValidateSegment("cron", "job name", tc.s, 8)
		if tc.why == "" {
			assert.NoError(t, err, "%q", tc.s)
			continue
		}
		assert.ErrorContains(t, err, tc.why, "%q", tc.s)
	}
}
