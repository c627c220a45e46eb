#!/usr/bin/env bash
# Runs every measurement quoted in BENCHMARKS.md and writes the reports to docs/bench/.
# Needs redis-server on the PATH. Takes about five minutes; run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
b=target/release/lockbench
out=docs/bench
mkdir -p "$out"
run() { local name=$1; shift; echo "== $name: lockbench $*"; $b --spawn --json "$@" > "$out/$name.json"; }
run pipelined-native-1t --protocol native -c 50 -d 5 --depth 16
run pipelined-native-2t --protocol native -c 50 -d 5 --depth 16 --lockd-threads 2
run pipelined-redis     --protocol redis  -c 50 -d 5 --depth 16
run pipelined-legacy    --protocol legacy -c 50 -d 5 --depth 16
run conns10k-native     --protocol native -c 10000 -d 10
run conns10k-redis      --protocol redis  -c 10000 -d 10
run hold-native  --protocol native --workload hold --hold 1000000 -c 50
run hold-legacy  --protocol legacy --workload hold --hold 1000000 -c 50
run idle-native  --protocol native --workload idle -c 10000
run idle-legacy  --protocol legacy --workload idle -c 10000
run idle-redis   --protocol redis  --workload idle -c 10000
run hotkey       --protocol native --workload hotkey -c 1000 -d 10
run fairness     --protocol native --workload fairness -c 20 --hold-us 10000 -d 10
echo "== sweep"
$b --spawn --sweep 1,10,50,200,1000 --protocols native,legacy,redis -d 5 --plot "$out/pingpong.svg" > "$out/pingpong-sweep.txt"
cat "$out/pingpong-sweep.txt"
