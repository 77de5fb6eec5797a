package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/examples/internal/exampleenv"
	"github.com/concordkit/concord/examples/internal/exampletest"
	"github.com/concordkit/concord/testcluster"
)

func TestCron(t *testing.T) {
	defer testcluster.VerifyNone(t)
	var out bytes.Buffer
	err := run(context.Background(), &out, exampleenv.Options{})
	s := out.String()
	t.Log("\n" + s)
	require.NoError(t, err)
	checkStory(t, s)
}

// The same program against an etcd it did not start, reached with
// -endpoints and the TLS and user flags: etcd processes when CONCORD_ETCD is
// set. The cut-off is made in the replica's own connections there.
func TestCronEndpoints(t *testing.T) {
	for _, mode := range exampletest.Modes {
		t.Run(string(mode), func(t *testing.T) {
			o := exampletest.Cluster(t, mode)
			var out bytes.Buffer
			err := run(context.Background(), &out, o)
			s := out.String()
			t.Log("\n" + s)
			require.NoError(t, err)
			require.NotContains(t, s, "started a ")
			checkStory(t, s)
		})
	}
}

func checkStory(t *testing.T, s string) {
	t.Helper()
	cut := regexp.MustCompile(`CUT (replica-\d) \(the leader, token (\d+)\) off from etcd`).FindStringSubmatch(s)
	require.NotNil(t, cut)
	// The cut replica led: the observer saw it, and its runs carry its
	// term's token.
	assert.Regexp(t, cut[1]+` is the leader \(term token `+cut[2]+`\)`, s)
	assert.Regexp(t, `run by `+cut[1]+` \(token `+cut[2]+`\): ledger write accepted`, s)
	over := regexp.MustCompile(`failover: (replica-\d) leads (\S+) after (replica-\d) was cut off`).FindStringSubmatch(s)
	require.NotNil(t, over)
	assert.NotEqual(t, over[1], cut[1])
	assert.Equal(t, cut[1], over[3])
	assert.Less(t, strings.Index(s, cut[0]), strings.Index(s, over[0]))
	assert.NotContains(t, over[2], "h", "measured from the cut")

	// The cut leader learns that its lease is lost.
	assert.Regexp(t, cut[1]+`'s lease \w+ is lost: leasekeeper: lease lost`, s)

	// The last replica to run (usually the one that took over; another if
	// the leadership moved again) ran with a larger token, and the times
	// missed during the failover were run after the cut by a replica other
	// than the cut one.
	tok := regexp.MustCompile(`fencing tokens: (replica-\d) ran with (\d+), (replica-\d) with (\d+)`).FindStringSubmatch(s)
	require.NotNil(t, tok)
	assert.Equal(t, cut[1], tok[1])
	assert.NotEqual(t, cut[1], tok[3])
	assert.Regexp(t, `run by `+tok[3]+` \(token `+tok[4]+`\): ledger write accepted`, s)
	before, _ := strconv.Atoi(tok[2])
	after, _ := strconv.Atoi(tok[4])
	assert.Less(t, before, after, "the next leader's token is larger")
	after0 := s[strings.Index(s, cut[0]):]
	late := regexp.MustCompile(`run by (replica-\d) \(token \d+, (catching up \S+ late|attempt \d: rerun[^)]*)\): ledger write accepted`).FindStringSubmatch(after0)
	require.NotNil(t, late, "the times missed during the failover are run after it")
	assert.NotEqual(t, cut[1], late[1])
	// The rolling deploy: the leader is stopped, and leadership goes at
	// once to the replica started last, which runs the next time on time.
	dep := regexp.MustCompile(`DEPLOY: started (replica-4); stopping (replica-\d), the leader, as a deploy does`).FindStringSubmatch(s)
	require.NotNil(t, dep)
	hand := regexp.MustCompile(`handover: replica-4 leads (\S+) after ` + dep[2] + ` was told to stop`).FindStringSubmatch(s)
	require.NotNil(t, hand)
	took, err := time.ParseDuration(hand[1])
	require.NoError(t, err)
	assert.Less(t, took, time.Second, "the handover waited")
	// Its first run may catch up a time that passed while it took over,
	// but it reruns none.
	assert.Regexp(t, `run by replica-4 \(token \d+(, catching up [^)]*)?\): ledger write accepted`, s[strings.Index(s, dep[0]):])
	assert.NotRegexp(t, `run by replica-4 \(token \d+, attempt`, s)
	assert.Equal(t, "replica-4", tok[3])
	// The schedule changed at runtime: the defined job ran every other
	// second, then every second, on the leader, and was removed.
	sched := s[strings.Index(s, "SCHEDULE: an operator defines"):]
	assert.Regexp(t, `\d\d:\d\d:\d[02468] purge-temp run by replica-4 \(token \d+\), handler "purge"`, sched)
	assert.Contains(t, sched, `SCHEDULE: "purge-temp" updated to run every second`)
	assert.Contains(t, sched, `SCHEDULE: "purge-temp" removed with its records; the scheduler's jobs: [hourly-report]`)
	m := regexp.MustCompile(`ledger read back from etcd: scheduled times \S+ to \S+, (\d+) times, (\d+) entries, each written once`).FindStringSubmatch(s)
	require.NotNil(t, m)
	assert.Equal(t, m[1], m[2])
}

// check judges by the ledger read back from etcd, not by what the runs were
// told: a Commit whose reply was lost but that applied counts as written,
// and a time with no entry or with two writes fails the demo.
func TestLedgerCheck(t *testing.T) {
	t.Cleanup(func() { testcluster.VerifyNone(t) }) // after the cluster is closed
	c := testcluster.New(t)
	ctx := context.Background()
	admin := c.Admin()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	put := func(i int, v string) {
		_, err := admin.Put(ctx, ledgerKey(at(i)), v)
		require.NoError(t, err)
	}
	rep := func(i int, v string, err error) runReport {
		return runReport{replica: "replica-1", run: cron.Run{Time: at(i), Attempt: 1}, key: ledgerKey(at(i)), value: v, err: err}
	}
	tokens := map[string]int64{"replica-1": 2, "replica-2": 3}
	for _, tc := range []struct {
		name    string
		ledger  []string // value per second from t0; "" leaves the time out
		twice   int      // the time written a second time, -1 for none
		reports []runReport
		err     string // what the error says, "" for none
		says    []string
	}{
		{
			name:    "an unconfirmed write that applied counts",
			ledger:  []string{"a", "b", "c"},
			twice:   -1,
			reports: []runReport{rep(0, "a", nil), rep(1, "b", context.DeadlineExceeded), rep(2, "x", election.ErrLost)},
			says: []string{
				"read back replica-1's unconfirmed write of 03:04:06 (attempt 1): it had applied (its reply was lost)",
				"read back replica-1's unconfirmed write of 03:04:07 (attempt 1): it had not applied",
				"scheduled times 03:04:05 to 03:04:07, 3 times, 3 entries, each written once",
			},
		},
		{
			name:   "a time with no entry fails",
			ledger: []string{"a", "", "c"},
			twice:  -1,
			err:    "scheduled times with no ledger entry: [03:04:06]",
		},
		{
			name:   "a time written twice fails",
			ledger: []string{"a", "b"},
			twice:  1,
			err:    "ledger entries written more than once: [2026-01-02T03:04:06Z (2 writes)]",
		},
		{
			name:    "a confirmed write that is not there fails",
			ledger:  []string{"a", "b"},
			twice:   -1,
			reports: []runReport{rep(1, "mine", nil)},
			err:     `returned nil, but the ledger holds "b"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := admin.Delete(ctx, ledgerPrefix, clientv3.WithPrefix())
			require.NoError(t, err)
			for i, v := range tc.ledger {
				if v != "" {
					put(i, v)
				}
			}
			if tc.twice >= 0 {
				put(tc.twice, tc.ledger[tc.twice])
			}
			var out bytes.Buffer
			say := func(format string, args ...any) { fmt.Fprintf(&out, format+"\n", args...) }
			err = check(ctx, admin, c.FailoverTTL(), say, tc.reports, "replica-1", "replica-2", tokens)
			t.Log("\n" + out.String())
			if tc.err == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tc.err)
			}
			for _, w := range tc.says {
				assert.Contains(t, out.String(), w)
			}
		})
	}
}
