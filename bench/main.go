// Command bench measures concord's recipes side by side with etcd's own
// concurrency package and raw etcd operations, on one 3-member cluster, in
// one run. Each figure is the median of several rounds; both sides of a
// comparison alternate within each round. Absolute numbers on a shared
// machine are noise; the ratio x (>1: concord is better) is the figure.
//
//	go run ./bench                # table, on an embedded cluster
//	go run ./bench -json          # one JSON object per figure
//	go run ./bench -run 'lock\.'  # figures whose names match
//	go run ./bench -etcd $(go run ./testcluster/cmd/etcdbin v3.5.36)
//	                              # members as etcd processes, fsync on
//	go run ./bench -delay 1ms     # every client 1 ms away, each direction
//	go run ./bench -endpoints http://10.0.0.1:2379,http://10.0.0.2:2379
//	                              # an existing cluster (no fault figures)
//
// Progress goes to stderr, figures to stdout.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/connect"
	"github.com/concordkit/concord/testcluster"
)

func main() { os.Exit(run()) }

type flags struct {
	jsonOut      bool
	run          string
	rounds       int
	quick        bool
	list         bool
	cpuProf      string
	etcd         string
	endpoints    string
	cacert       string
	cert         string
	key          string
	user         string
	delay        time.Duration
	timing       string
	roundTimeout time.Duration
	retries      int
}

func run() int {
	var f flags
	flag.BoolVar(&f.jsonOut, "json", false, "print one JSON object per figure")
	flag.StringVar(&f.run, "run", "", "only figures whose names match this regular expression")
	flag.IntVar(&f.rounds, "rounds", 5, "rounds per figure (median taken; at least 5)")
	flag.BoolVar(&f.quick, "quick", false, "smaller workloads, for a smoke run")
	flag.BoolVar(&f.list, "list", false, "list figure names and exit")
	flag.StringVar(&f.cpuProf, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.StringVar(&f.etcd, "etcd", "", "run the members as processes of this etcd binary (fsync on, etcd's default timings) instead of embedding them; see testcluster/cmd/etcdbin")
	flag.StringVar(&f.endpoints, "endpoints", "", "run on the existing cluster at these comma-separated client URLs; figures that need faults or fresh clusters are skipped")
	flag.StringVar(&f.cacert, "cacert", "", "with -endpoints: PEM file of the members' CA")
	flag.StringVar(&f.cert, "cert", "", "with -endpoints: PEM file of a client certificate")
	flag.StringVar(&f.key, "key", "", "with -endpoints: PEM file of the client certificate's key")
	flag.StringVar(&f.user, "user", "", "with -endpoints: etcd user as name:password, or name with the password in CONCORD_PASSWORD")
	flag.DurationVar(&f.delay, "delay", 0, "delay every client's traffic by this much in each direction (a round trip takes twice as long), through the cluster's proxies")
	flag.StringVar(&f.timing, "timing", "", "raft heartbeat/election timeout in ms of the cluster the bench starts, e.g. 100/1000 (default: 10/100 embedded, 100/1000 with -etcd)")
	flag.DurationVar(&f.roundTimeout, "round-timeout", 3*time.Minute, "longest one round may take before it is retried")
	flag.IntVar(&f.retries, "retries", 2, "how many times a round that failed with a transient etcd error is retried")
	flag.Parse()
	if f.rounds < 5 && !f.quick {
		fmt.Fprintln(os.Stderr, "bench: -rounds must be at least 5 (or use -quick)")
		return 2
	}
	re, err := regexp.Compile(f.run)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: -run: %v\n", err)
		return 2
	}
	if f.list {
		for _, g := range groups {
			for _, name := range g.Figures {
				fmt.Println(name)
			}
		}
		return 0
	}
	var selected []Group
	for _, g := range groups {
		if slices.ContainsFunc(g.Figures, re.MatchString) {
			selected = append(selected, g)
		}
	}
	slices.SortStableFunc(selected, func(a, b Group) int {
		switch {
		case a.Disruptive == b.Disruptive:
			return 0
		case b.Disruptive:
			return -1
		}
		return 1
	})
	if len(selected) == 0 {
		fmt.Fprintf(os.Stderr, "bench: no figure matches %q\n", f.run)
		return 2
	}
	clusterOpts, err := f.clusterOptions()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}

	if f.cpuProf != "" {
		out, err := os.Create(f.cpuProf)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 2
		}
		if err := pprof.StartCPUProfile(out); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}

	ctx := context.Background()
	env := &Env{
		Rounds:       f.rounds,
		Quick:        f.quick,
		RoundTimeout: f.roundTimeout,
		Retries:      f.retries,
		delay:        f.delay,
		log:          newProgress(os.Stderr),
		clusterOpts:  clusterOpts,
	}
	var on string
	if f.endpoints != "" {
		if env.dialCfg, err = f.dialConfig(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 2
		}
		env.endpoints = env.dialCfg.Endpoints
	} else {
		startCtx, cancel := context.WithTimeout(ctx, time.Minute)
		env.Cluster, err = testcluster.Start(startCtx, clusterOpts...)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 1
		}
		defer func() { _ = env.Cluster.Close() }()
	}
	if env.raft, err = newRaftWatch(env); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	defer env.raft.close()
	if on, err = describe(ctx, env, f); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	env.log.printf("on %s", on)

	var results []Result
	failed := false
	for gi, g := range selected {
		env.log.group(g.Name, gi, len(selected))
		mark := env.raft.mark(ctx)
		var rs []Result
		if env.Cluster == nil && !slices.ContainsFunc(g.Figures, func(name string) bool {
			return re.MatchString(name) && !slices.Contains(g.Faults, name)
		}) {
			env.log.printf("%s: skipped: every selected figure %v", g.Name, errNoFaults)
		} else {
			var err error
			rs, err = g.Run(ctx, env)
			if err != nil {
				fmt.Fprintf(os.Stderr, "bench: %s: %v\n", g.Name, err)
				failed = true
			}
		}
		env.closeClients()
		retried := env.takeRetried()
		if env.Cluster == nil {
			for _, name := range g.Faults {
				if !slices.ContainsFunc(rs, func(r Result) bool { return r.Name == name }) {
					rs = append(rs, Skip(name, errNoFaults.Error()))
				}
			}
		}
		env.log.printf("%s: done; %s", g.Name, env.raft.since(ctx, mark))
		for _, r := range rs {
			if !re.MatchString(r.Name) {
				continue
			}
			r.Retried = retried
			if r.Skipped != "" {
				env.log.printf("%s: skipped: %s", r.Name, r.Skipped)
			}
			results = append(results, r)
			if f.jsonOut {
				printJSON(r, on, f.delay)
			}
		}
	}
	env.log.printf("run done; %s", env.raft.total(ctx))
	if !f.jsonOut {
		printTable(os.Stdout, results, on, env.raft.total(ctx))
	}
	if failed {
		return 1
	}
	return 0
}

// clusterOptions are the options of every cluster the bench starts: the
// shared one, and the fresh ones of the testcluster figures.
func (f *flags) clusterOptions() ([]testcluster.Option, error) {
	var opts []testcluster.Option
	if f.endpoints != "" {
		if f.etcd != "" || f.timing != "" {
			return nil, errors.New("-endpoints runs on an existing cluster: -etcd and -timing apply to a cluster the bench starts")
		}
		if f.delay != 0 {
			return nil, errors.New("-delay needs a cluster the bench starts (its clients go through the cluster's proxies); with -endpoints, put the delay in the network")
		}
		return nil, nil
	}
	if f.cacert != "" || f.cert != "" || f.key != "" || f.user != "" {
		return nil, errors.New("-cacert, -cert, -key and -user go with -endpoints")
	}
	// -etcd "" embeds, whatever CONCORD_ETCD says: the run says on the
	// command line what it measures.
	opts = append(opts, testcluster.WithBinary(f.etcd))
	if f.timing != "" {
		tick, election, ok := strings.Cut(f.timing, "/")
		t, err1 := strconv.ParseUint(tick, 10, 32)
		e, err2 := strconv.ParseUint(election, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("-timing %q: want TICK/ELECTION in ms, e.g. 100/1000", f.timing)
		}
		opts = append(opts, testcluster.WithTiming(uint(t), uint(e)))
	}
	if f.delay < 0 {
		return nil, fmt.Errorf("-delay %v: negative", f.delay)
	}
	if f.delay > 0 {
		opts = append(opts, testcluster.WithClientLatency(f.delay, 0))
	}
	return opts, nil
}

// dialConfig is the client configuration for -endpoints.
func (f *flags) dialConfig() (clientv3.Config, error) {
	return connect.Settings{
		Endpoints: strings.Split(f.endpoints, ","), CACert: f.cacert, Cert: f.cert, Key: f.key, User: f.user,
	}.Config("-")
}

// describe says what the run is on, for the table's header and each JSON
// figure: a figure means little without the cluster it was measured on.
func describe(ctx context.Context, env *Env, f flags) (string, error) {
	delay := "no client delay"
	if f.delay > 0 {
		delay = fmt.Sprintf("client delay %v each way", f.delay)
	}
	if env.Cluster == nil {
		version := "unknown version"
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		for _, st := range env.raft.status(sctx) {
			if st != nil {
				version = "v" + st.Version
				break
			}
		}
		if version == "unknown version" {
			return "", fmt.Errorf("no member at %s answered", f.endpoints)
		}
		return fmt.Sprintf("endpoints %s (etcd %s, %d members), %s", f.endpoints, version, len(env.endpoints), delay), nil
	}
	c := env.Cluster
	kind := "embedded"
	disk := "no fsync"
	if c.Binary() != "" {
		kind, disk = "process", "fsync"
	}
	return fmt.Sprintf("%s etcd v%s (%d members, %s, election timeout %v), %s",
		kind, c.Version(), c.Size(), disk, c.ElectionTimeout(), delay), nil
}

type jsonFigure struct {
	Name         string   `json:"name"`
	Unit         string   `json:"unit,omitempty"`
	Concord      *float64 `json:"concord,omitempty"`
	Baseline     *float64 `json:"baseline,omitempty"`
	BaselineName string   `json:"baseline_name,omitempty"`
	X            *float64 `json:"x,omitempty"`
	Skipped      string   `json:"skipped,omitempty"`
	Retried      int      `json:"retried_rounds,omitempty"`
	On           string   `json:"on"`
	DelayMs      float64  `json:"delay_ms"`
}

func round3(v float64) *float64 {
	r := float64(int64(v*1000+0.5)) / 1000
	return &r
}

func printJSON(r Result, on string, delay time.Duration) {
	f := jsonFigure{Name: r.Name, Unit: r.Unit, BaselineName: r.BaselineName,
		Skipped: r.Skipped, Retried: r.Retried, On: on, DelayMs: float64(delay) / float64(time.Millisecond)}
	if r.HasConcord {
		f.Concord = round3(r.Concord)
	}
	if r.HasBaseline {
		f.Baseline = round3(r.Baseline)
	}
	if x := r.X(); x != 0 {
		f.X = round3(x)
	}
	b, _ := json.Marshal(f)
	fmt.Println(string(b))
}

func printTable(out io.Writer, rs []Result, on, raft string) {
	fmt.Fprintf(out, "# on %s\n# %s\n", on, raft)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "figure\tunit\tconcord\tbaseline\tbaseline is\tx\tnote\t")
	num := func(ok bool, v float64) string {
		if !ok {
			return "-"
		}
		switch {
		case v >= 1000:
			return fmt.Sprintf("%.0f", v)
		case v >= 10:
			return fmt.Sprintf("%.1f", v)
		default:
			return fmt.Sprintf("%.3f", v)
		}
	}
	for _, r := range rs {
		x := "-"
		if v := r.X(); v != 0 {
			x = fmt.Sprintf("%.2f", v)
		}
		var note []string
		if r.Skipped != "" {
			note = append(note, "skipped: "+r.Skipped)
		}
		if r.Retried > 0 {
			note = append(note, fmt.Sprintf("%d round(s) of its group retried", r.Retried))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Name, r.Unit, num(r.HasConcord, r.Concord),
			num(r.HasBaseline, r.Baseline), r.BaselineName, x, strings.Join(note, "; "))
	}
	_ = w.Flush()
}
