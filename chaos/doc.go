// Package chaos holds concord's chaos suite: workloads that use the recipes
// on a real multi-member etcd (testcluster) while a nemesis injects faults,
// and checkers that decide, from what the workloads and an independent
// observer saw, whether a recipe broke its promise.
//
// The package has no API; it is all tests, named TestChaos*. Each checker is
// also run once against a workload with its protection switched off (writes
// without Guard, work that ignores the holding's context, a register that
// accepts any token), in a test named TestChaos*CheckerCatches*, which fails
// unless the checker reports violations: a checker that cannot fail proves
// nothing.
//
// # Running
//
//	go test -race ./chaos/                           # bounded form, as CI runs it
//	go test -race -timeout 60m ./chaos/ -chaos.long  # long form (flags after the package)
//	go test -race ./chaos/ -run TestChaosLock -chaos.seed=1234 -v
//
// Every test logs its seed. The seed fixes the nemesis's schedule (which
// fault, on which member or client, how long it lasts, how long until the
// next) and the workloads' random choices; the interleaving with the
// cluster's own timing is not reproducible, so a replay re-runs the same
// schedule, not the same history.
//
// At the end the package prints one line per chaos test: operations, faults
// injected by kind, violations, seed and duration.
//
// # Faults
//
// kill (crash a member, restart it later), partition (cut a follower off from
// its peers, heal later), leader-stop and leader-partition (force a leader
// change), leader-pause (SIGSTOP the leader's process for longer than an
// election, then let it run: it resumes as a stale leader; with member
// processes only, CONCORD_ETCD — embedded members get a leader-partition
// instead), client-cut (stall one workload client's connections so its
// leases expire on the server while the process lives, restore later),
// compact (compact the history to the current revision). One member fault
// at a time, so a majority always remains; client cuts overlap with member
// faults.
//
// The suite runs on embedded members and, with CONCORD_ETCD, on member
// processes with etcd's default timings; client cuts are lengthened there
// to outlast the longer minimum lease TTL.
package chaos
