// Command bench measures concord's recipes side by side with etcd's own
// concurrency package and raw etcd operations, on one embedded 3-member
// cluster, in one run. Each figure is the median of several rounds; both
// sides of a comparison alternate within each round. Absolute numbers on a
// shared machine are noise; the ratio x (>1: concord is better) is the figure.
//
//	go run ./bench                # table
//	go run ./bench -json          # one JSON object per figure
//	go run ./bench -run 'lock\.'  # figures whose names match
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"regexp"
	"runtime/pprof"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/concordkit/concord/testcluster"
)

func main() { os.Exit(run()) }

func run() int {
	var (
		jsonOut = flag.Bool("json", false, "print one JSON object per figure")
		run     = flag.String("run", "", "only figures whose names match this regular expression")
		rounds  = flag.Int("rounds", 5, "rounds per figure (median taken; at least 5)")
		quick   = flag.Bool("quick", false, "smaller workloads, for a smoke run")
		list    = flag.Bool("list", false, "list figure names and exit")
		cpuProf = flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	)
	flag.Parse()
	if *rounds < 5 && !*quick {
		fmt.Fprintln(os.Stderr, "bench: -rounds must be at least 5 (or use -quick)")
		return 2
	}
	re, err := regexp.Compile(*run)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: -run: %v\n", err)
		return 2
	}
	var selected []Group
	for _, g := range groups {
		if slices.ContainsFunc(g.Figures, re.MatchString) {
			selected = append(selected, g)
		}
	}
	if *list {
		for _, g := range groups {
			for _, f := range g.Figures {
				fmt.Println(f)
			}
		}
		return 0
	}
	if len(selected) == 0 {
		fmt.Fprintf(os.Stderr, "bench: no figure matches %q\n", *run)
		return 2
	}

	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 2
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}

	ctx := context.Background()
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	cluster, err := testcluster.Start(startCtx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	env := &Env{Cluster: cluster, Rounds: *rounds, Quick: *quick}

	var results []Result
	failed := false
	for _, g := range selected {
		rs, err := g.Run(ctx, env)
		env.closeClients()
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s: %v\n", g.Name, err)
			failed = true
		}
		for _, r := range rs {
			if !re.MatchString(r.Name) {
				continue
			}
			results = append(results, r)
			if *jsonOut {
				printJSON(r)
			}
		}
	}
	_ = cluster.Close()
	if !*jsonOut {
		printTable(results)
	}
	if failed {
		return 1
	}
	return 0
}

type jsonFigure struct {
	Name         string   `json:"name"`
	Unit         string   `json:"unit"`
	Concord      *float64 `json:"concord,omitempty"`
	Baseline     *float64 `json:"baseline,omitempty"`
	BaselineName string   `json:"baseline_name,omitempty"`
	X            *float64 `json:"x,omitempty"`
}

func round3(v float64) *float64 {
	r := float64(int64(v*1000+0.5)) / 1000
	return &r
}

func printJSON(r Result) {
	f := jsonFigure{Name: r.Name, Unit: r.Unit, BaselineName: r.BaselineName}
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

func printTable(rs []Result) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "figure\tunit\tconcord\tbaseline\tbaseline is\tx\t")
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
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Name, r.Unit, num(r.HasConcord, r.Concord), num(r.HasBaseline, r.Baseline), r.BaselineName, x)
	}
	_ = w.Flush()
}
