#!/usr/bin/env bash
# lockd against etcd (issue 14), same client, same machine, one run: a 3-node etcd cluster
# (Debian's etcd-server, installed if missing) and a 3-node lockd cluster, both on loopback
# with their logs fsynced on every commit (both defaults), driven by lockbench: exclusive
# lock + unlock of one key among 100,000, connections spread over the three nodes. etcd
# through its v3 lock API with a lease per connection, as `etcdctl lock` does; lockd
# through its native protocol, ping-pong (one request in flight a connection, as etcd's
# HTTP/1.1 client), then pipelined (16 in flight), which etcd's client cannot do.
#
# usage: [CONNS="1 50 1000"] scripts/bench-etcd.sh [SECONDS]
#        (release builds; prints one report per run; CONNS: the connection counts to run)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
command -v etcd >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; }
}
cargo build --release -q -p lockd -p lockbench
bin=target/release
dir=$(mktemp -d)
key=bench-etcd-key
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -a pids ec ep lc lr
for i in 1 2 3; do ec[$i]=$(free_port); ep[$i]=$(free_port); lc[$i]=$(free_port); lr[$i]=$(free_port); done
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

peers="e1=http://127.0.0.1:${ep[1]},e2=http://127.0.0.1:${ep[2]},e3=http://127.0.0.1:${ep[3]}"
for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$dir/e$i" \
        --listen-client-urls "http://127.0.0.1:${ec[$i]}" --advertise-client-urls "http://127.0.0.1:${ec[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${ep[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${ep[$i]}" \
        --initial-cluster "$peers" --initial-cluster-state new --initial-cluster-token lockbench \
        --logger zap --log-level error >"$dir/etcd$i.log" 2>&1 &
    pids+=($!)
done
initial="1=127.0.0.1:${lr[1]},2=127.0.0.1:${lr[2]},3=127.0.0.1:${lr[3]}"
for i in 1 2 3; do
    "$bin/lockd" --node-id "$i" --port "${lc[$i]}" --raft-address "127.0.0.1:${lr[$i]}" \
        --data-dir "$dir/l$i" --initial-cluster "$initial" --auth-key "$key" \
        --max-clients 2000 --max-locks 100000 >"$dir/lockd$i.log" 2>&1 &
    pids+=($!)
done
for i in 1 2 3; do
    for _ in $(seq 100); do
        curl -fs -X POST -d '{}' "http://127.0.0.1:${ec[$i]}/v3/maintenance/status" >/dev/null && break
        sleep 0.1
    done
    for _ in $(seq 100); do
        [ "$(redis-cli -p "${lc[$i]}" -a "$key" --no-auth-warning SESSION GRACE 1000 2>/dev/null)" = OK ] && break
        sleep 0.1
    done
done
etcd_addrs="127.0.0.1:${ec[1]},127.0.0.1:${ec[2]},127.0.0.1:${ec[3]}"
lockd_addrs="127.0.0.1:${lc[1]},127.0.0.1:${lc[2]},127.0.0.1:${lc[3]}"
run() {
    local name=$1; shift
    echo "=== $name"
    "$bin/lockbench" --keys 100000 --mode ex -d "$secs" "$@"
}
for c in ${CONNS:-1 50 1000}; do
    run "etcd, $c connections" --protocol etcd --addr "$etcd_addrs" -c "$c"
    run "lockd, $c connections" --protocol native --addr "$lockd_addrs" --auth-key "$key" -c "$c"
done
run "lockd, 50 connections, pipelined 16" --protocol native --addr "$lockd_addrs" --auth-key "$key" -c 50 --depth 16
