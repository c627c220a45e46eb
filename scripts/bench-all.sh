#!/usr/bin/env bash
# Runs every measurement quoted in BENCHMARKS.md, writes the reports to docs/bench/ and
# prints the summary (medians of the repeated comparisons). Needs redis-server on the PATH
# and python3. Takes about eight minutes; run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
b=target/release/lockbench
out=docs/bench
mkdir -p "$out"
rm -f "$out"/*.json
run() { local name=$1; shift; echo "== $name: lockbench $*"; $b --spawn --json "$@" > "$out/$name.json"; }

# Targets 1 and 2: lockd against Redis, three interleaved rounds, without and with --pin
# (the server alone on one CPU, lockbench on the other).
for r in 1 2 3; do
  for p in native legacy redis; do
    run "pipelined-$p-r$r"        --protocol $p -c 50 -d 5 --depth 16
    run "pingpong-$p-r$r"         --protocol $p -c 50 -d 5
    run "pinned-pipelined-$p-r$r" --protocol $p -c 50 -d 5 --depth 16 --pin
    run "pinned-pingpong-$p-r$r"  --protocol $p -c 50 -d 5 --pin
  done
  run "pipelined-native-2t-r$r" --protocol native -c 50 -d 5 --depth 16 --lockd-threads 2
  run "pingpong-native-2t-r$r"  --protocol native -c 50 -d 5 --lockd-threads 2
  run "pingpong-legacy-2t-r$r"  --protocol legacy -c 50 -d 5 --lockd-threads 2
done

run conns10k-native --protocol native -c 10000 -d 10
run conns10k-redis  --protocol redis  -c 10000 -d 10
run hold-native  --protocol native --workload hold --hold 1000000 -c 50
run hold-legacy  --protocol legacy --workload hold --hold 1000000 -c 50
run idle-native  --protocol native --workload idle -c 10000
run idle-legacy  --protocol legacy --workload idle -c 10000
run idle-redis   --protocol redis  --workload idle -c 10000
run hotkey         --protocol native --workload hotkey -c 1000 -d 10
run hotkey-nopoll  --protocol native --workload hotkey -c 1000 -d 10 --lockd-arg=--busy-poll-us=0
run fairness       --protocol native --workload fairness -c 20 --hold-us 10000 -d 10
run fairness-nopoll --protocol native --workload fairness -c 20 --hold-us 10000 -d 10 --lockd-arg=--busy-poll-us=0
# The wait graph's worst case (issue 10): a further request amid 1,000 sessions queued on
# 4,094 keys, with PINGs timed meanwhile.
run waitgraph-holder --protocol native --workload waitgraph --keys 4094 -c 1000 -d 10
run waitgraph-other  --protocol native --workload waitgraph --keys 4094 -c 1000 -d 10 --requester other
echo "== sweep"
$b --spawn --sweep 1,10,50,200,1000,10000 --protocols native,legacy,redis -d 5 --plot "$out/pingpong.svg" > "$out/pingpong-sweep.txt"
cat "$out/pingpong-sweep.txt"
python3 scripts/bench-summary.py "$out" | tee "$out/summary.md"
