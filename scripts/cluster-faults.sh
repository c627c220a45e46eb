#!/usr/bin/env bash
# The cluster fault test (issues 13, 14): three lockd processes on loopback under lockbench
# load (its connections spread over the nodes, one shadow table), and faults injected one
# at a time, FAULTS rounds of them taken in turn from the list (default: kill-leader):
#   kill-leader    SIGKILL to the leader, restarted from its data directory after 6 s
#   kill-follower  the same to a follower
#   pause-leader   SIGSTOP to the leader for 4 s (past twice the election timeout, so the
#                  others elect a new leader), then SIGCONT: the old leader wakes believing
#                  it leads, and must not grant, expire or answer anything as leader
#   slow-disk      the leader's fsyncs take 300 ms each for 4 s (the log store's test-only
#                  switch, LOCKD_FAULT_SLOW_FSYNC), then are fast again
#   isolate-leader the leader cut off from both others, both ways, for 5 s (the peer
#                  network's test-only switch, LOCKD_FAULT_PARTITION: a blackhole, its
#                  connections kept open); clients of every node keep their connections
#   isolate-follower  the same for a follower
#   deaf-leader    one way: the leader hears nothing from the others for 5 s (what it
#                  sends still arrives)
#   mute-leader    one way: nothing the leader sends arrives for 5 s (it still hears)
#   slow-leader    a slow link: every request the leader sends waits 60 ms for 5 s (below
#                  the 100 ms openraft gives an append: commits slow down, nothing stops)
# At the end, the three nodes' tables are compared (CLUSTER DIGEST, once they applied the
# same log index) and must be the same.
# Passes when lockbench reports 0 violations (no two sessions ever held conflicting locks,
# no release found a lock gone that its holder believed held, no token at or below an
# earlier one on its key) and 0 errors (failures of a lost node's connections are
# reconnects, counted apart). Prints lockbench's report, with the longest time in which no
# operation completed (the client-seen outage).
#
# With MAX_OUTAGE_MS set, it also fails when the longest outage was longer (a paused
# leader once held every follower's forwarded batch until it woke: 4.1 s without a grant
# through a 4 s pause; now about 1.6 s, an election).
#
# `upgrade` (with NEW_BIN=DIR) is a rolling upgrade, one node a round, the followers
# first and the leader last, as docs/cluster.md says: the node is stopped (SIGTERM) and
# started again from its data directory with DIR's lockd; so a run from an older build's
# BIN_DIR mixes the two versions under load, faults in between.
#
# usage: [MAX_OUTAGE_MS=N] [NEW_BIN=DIR] scripts/cluster-faults.sh [BIN_DIR] [SECONDS] [ROUNDS] [FAULTS]
#        (SECONDS >= 2 + 8 x ROUNDS; FAULTS comma-separated, e.g. kill-leader,pause-leader)
set -euo pipefail
bin=${1:-target/release}
secs=${2:-20}
kills=${3:-3}
IFS=, read -r -a faults <<<"${4:-kill-leader}"
key=cluster-faults-key
dir=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -a cport rport pid nodebin
for i in 1 2 3; do cport[$i]=$(free_port); rport[$i]=$(free_port); nodebin[$i]=$bin; done
new_bin=${NEW_BIN:-}
initial="1=127.0.0.1:${rport[1]},2=127.0.0.1:${rport[2]},3=127.0.0.1:${rport[3]}"
start() {
  local i=$1
  LOCKD_FAULT_SLOW_FSYNC="$dir/slow$i" LOCKD_FAULT_PARTITION="$dir/part$i" \
  "${nodebin[$i]}/lockd" --node-id "$i" --port "${cport[$i]}" --raft-address "127.0.0.1:${rport[$i]}" \
    --data-dir "$dir/n$i" --initial-cluster "$initial" --auth-key "$key" --lock-timeout 5 \
    >>"$dir/log$i" 2>&1 &
  pid[$i]=$!
}
cleanup() { for i in 1 2 3; do kill -9 "${pid[$i]:-0}" 2>/dev/null || true; done; }
trap cleanup EXIT
cli() { redis-cli -p "$1" -a "$key" --no-auth-warning "${@:2}" 2>/dev/null; }
for i in 1 2 3; do start "$i"; done
for i in 1 2 3; do
  for _ in $(seq 100); do [ "$(cli "${cport[$i]}" SESSION GRACE 1000)" = OK ] && break; sleep 0.1; done
done
addrs="127.0.0.1:${cport[1]},127.0.0.1:${cport[2]},127.0.0.1:${cport[3]}"
"$bin/lockbench" --protocol native --addr "$addrs" --auth-key "$key" --reconnect \
  -c 30 -d "$secs" --keys 50 --mode mix --hold-us 200 --client-threads 2 \
  --stall-log "$dir/stalls" >"$dir/bench" 2>&1 &
bench=$!
leader() {
  for i in 1 2 3; do
    if cli "${cport[$i]}" HELLO 2 | grep -A1 -x role | grep -qx master; then echo "$i"; return; fi
  done
}
# A node that exits on its own (its Raft stopped on an error: it fails rather than serve
# as a zombie) is started again at once, as its service manager would (the unit's
# Restart=on-failure), and counted; `down` is the node a kill round restarts itself.
down=""
restarts=0
revive() {
  for i in 1 2 3; do
    [ "$i" = "$down" ] && continue
    if ! kill -0 "${pid[$i]}" 2>/dev/null; then
      echo "node $i exited on its own: $(tail -n 1 "$dir/log$i" | cut -c1-300)"
      echo "node $i restarted"
      restarts=$((restarts + 1))
      start "$i"
    fi
  done
}
nap() {
  local end=$(( $(date +%s%N) + $1 * 1000000000 ))
  while [ "$(date +%s%N)" -lt "$end" ]; do sleep 0.25; revive; done
}
nap 2
for k in $(seq "$kills"); do
  fault=${faults[$(( (k - 1) % ${#faults[@]} ))]}
  l=$(leader)
  if [ -z "$l" ]; then echo "round $k: no leader found"; nap 2; continue; fi
  echo "$(date +%s.%N) $k $fault $l" >>"$dir/rounds"
  case "$fault" in
    kill-leader|kill-follower)
      victim=$l
      if [ "$fault" = kill-follower ]; then victim=$(( l % 3 + 1 )); fi
      echo "round $k: SIGKILL to node $victim ($fault)"
      down=$victim
      kill -9 "${pid[$victim]}"; wait "${pid[$victim]}" 2>/dev/null || true
      # Past the failover (the survivors elect a new leader within about twice the
      # election timeout, 4 s with the defaults), then back from its data directory.
      nap 6
      start "$victim"
      down=""
      nap 2 ;;
    pause-leader)
      echo "round $k: SIGSTOP to the leader, node $l, for 4 s"
      kill -STOP "${pid[$l]}"
      nap 4
      kill -CONT "${pid[$l]}"
      nap 4 ;;
    slow-disk)
      echo "round $k: the leader's (node $l) fsyncs take 300 ms, for 4 s"
      echo 300 >"$dir/slow$l"
      nap 4
      rm -f "$dir/slow$l"
      nap 4 ;;
    slow-leader)
      others=""; for j in 1 2 3; do [ "$j" = "$l" ] || others="$others $j"; done
      mine=$(for j in $others; do printf '~%s:60 ' "$j"; done)
      echo "round $k: slow-leader: node $l's requests wait [$mine], for 5 s"
      echo "$mine" >"$dir/part$l"
      nap 5
      rm -f "$dir"/part*
      nap 3 ;;
    isolate-leader|isolate-follower|deaf-leader|mute-leader)
      victim=$l
      if [ "$fault" = isolate-follower ]; then victim=$(( l % 3 + 1 )); fi
      others=""; for j in 1 2 3; do [ "$j" = "$victim" ] || others="$others $j"; done
      case "$fault" in
        isolate-*) mine="$others"; theirs="$victim" ;;
        deaf-leader) mine=$(for j in $others; do printf '<%s ' "$j"; done); theirs=">$victim" ;;
        mute-leader) mine=$(for j in $others; do printf '>%s ' "$j"; done); theirs="<$victim" ;;
      esac
      echo "round $k: $fault: node $victim cut [$mine], the others cut [$theirs], for 5 s"
      echo "$mine" >"$dir/part$victim"
      for j in $others; do echo "$theirs" >"$dir/part$j"; done
      nap 5
      rm -f "$dir"/part*
      nap 3 ;;
    upgrade)
      [ -n "$new_bin" ] || { echo "the upgrade fault needs NEW_BIN=DIR"; exit 2; }
      victim=""
      for j in $(( l % 3 + 1 )) $(( (l + 1) % 3 + 1 )) "$l"; do
        if [ "${nodebin[$j]}" != "$new_bin" ]; then victim=$j; break; fi
      done
      if [ -z "$victim" ]; then echo "round $k: upgrade: every node runs $new_bin already"; nap 8; continue; fi
      echo "round $k: upgrade: node $victim (the leader is node $l) stopped, started from $new_bin"
      down=$victim
      kill -TERM "${pid[$victim]}"; wait "${pid[$victim]}" 2>/dev/null || true
      nodebin[$victim]=$new_bin
      start "$victim"
      down=""
      nap 8 ;;
    *) echo "unknown fault $fault"; exit 2 ;;
  esac
done
status=0
wait "$bench" || status=$?
revive
cat "$dir/bench"
if [ "$restarts" -gt 0 ]; then
  echo "restarts      $restarts times a node exited on its own and was started again"
fi
# Each stall with the fault it followed: the last round begun before the stall ended (a
# stall starts at the last grant before it, so a fault's own stall starts a moment before
# the fault), and when the stall began from that round's start; then where lockbench's
# connections were as it ended (on nodes 1/2/3, and how many were reconnecting): a stall
# with every connection on, or just off, the faulty node stopped the clients, not the
# cluster.
if [ -s "$dir/stalls" ] && [ -s "$dir/rounds" ]; then
  awk 'NR == FNR { t[NR] = $1; what[NR] = "round " $2 ": " $3 " (leader was node " $4 ")"; n = NR; next }
       { end = $1 + $2 / 1000; r = 0; for (i = 1; i <= n; i++) if (t[i] <= end) r = i
         where = ($3 != "") ? sprintf("; connections %s, %d reconnecting", $3, $4) : ""
         if (r) printf "stall %6d ms, from %+5.1f s of %s%s\n", $2, $1 - t[r], what[r], where
         else printf "stall %6d ms, before the first fault%s\n", $2, where }' "$dir/rounds" "$dir/stalls"
fi
# The nodes' tables compared: once no entries are coming (every node at the same applied
# index), each node's CLUSTER DIGEST (a CRC-32 of its table's image) must be the same.
# Retried for 30 s: the load's sessions are ending meanwhile (disconnects, then expiry
# at the end of their grace), and an apply under way can put one node a batch ahead.
tables=""
for _ in $(seq 60); do
  d1=$(cli "${cport[1]}" CLUSTER DIGEST); d2=$(cli "${cport[2]}" CLUSTER DIGEST); d3=$(cli "${cport[3]}" CLUSTER DIGEST)
  if [ -n "$d1" ] && [ "$d1" = "$d2" ] && [ "$d2" = "$d3" ]; then tables="$d1"; break; fi
  sleep 0.5
done
if [ -n "$tables" ]; then
  echo "tables        the same on the 3 nodes ($tables)"
else
  echo "FAIL: the nodes' tables differ: node 1 $d1, node 2 $d2, node 3 $d3"; exit 1
fi
grep -q '^violations    0$' "$dir/bench" || { echo "FAIL: violations"; exit 1; }
grep -q '^errors        0$' "$dir/bench" || { echo "FAIL: errors"; exit 1; }
[ "$status" = 0 ] || { echo "FAIL: lockbench exited $status"; exit 1; }
case "${4:-kill-leader}" in
  *kill*) grep -q '^reconnects' "$dir/bench" \
            || { echo "FAIL: no connection was lost: the kills did not reach the load"; exit 1; } ;;
esac
if [ -n "${MAX_OUTAGE_MS:-}" ]; then
  outage=$(sed -n 's/^outage *\([0-9]*\) ms.*/\1/p' "$dir/bench")
  [ -n "$outage" ] && [ "$outage" -le "$MAX_OUTAGE_MS" ] \
    || { echo "FAIL: an outage of ${outage:-?} ms, more than $MAX_OUTAGE_MS ms"; exit 1; }
fi
echo "cluster faults: passed ($kills rounds of ${4:-kill-leader} in $secs s)"
