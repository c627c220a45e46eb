#!/usr/bin/env python3
"""Summarises the lockbench reports written by bench-all.sh: for each repeated comparison,
every round and the median, with lockd's ratio to Redis; then the single runs."""
import json
import pathlib
import statistics
import sys

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "docs/bench")


def load(name):
    return json.loads((out / f"{name}.json").read_text())


def rounds(name):
    return [load(f"{name}-r{r}") for r in (1, 2, 3) if (out / f"{name}-r{r}.json").exists()]


def med(reports, field):
    return statistics.median(r[field] for r in reports)


print("| comparison | server | ops/s (rounds) | median ops/s | ratio to Redis | CPU µs/op (rounds) | median CPU/op | ratio to Redis |")
print("|---|---|---|---|---|---|---|---|")
for kind in ("pipelined", "pingpong", "pinned-pipelined", "pinned-pingpong"):
    redis = rounds(f"{kind}-redis")
    if not redis:
        continue
    r_ops, r_cpu = med(redis, "ops_per_sec"), med(redis, "server_cpu_us_per_op")
    servers = ["native", "legacy", "redis"]
    if kind in ("pipelined", "pingpong"):
        servers.insert(1, "native-2t")
        if kind == "pingpong":
            servers.insert(3, "legacy-2t")
    for p in servers:
        rs = rounds(f"{kind}-{p}")
        if not rs:
            continue
        ops = med(rs, "ops_per_sec")
        cpu = med(rs, "server_cpu_us_per_op")
        all_ops = ", ".join("{:,.0f}".format(r["ops_per_sec"]) for r in rs)
        all_cpu = ", ".join("{:.2f}".format(r["server_cpu_us_per_op"]) for r in rs)
        print(
            f"| {kind} | {p} | {all_ops} | {ops:,.0f} | {ops / r_ops:.2f} | "
            f"{all_cpu} | {cpu:.2f} | {cpu / r_cpu:.2f} |"
        )

print()
print("| run | ops/s | p50 µs | p99 µs | p99.9 µs | max µs | ops/conn min/p50/max | CPU µs/op | RSS | per lock | per conn | extra p50/p99/max µs (n) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for name in ("conns10k-native", "conns10k-redis", "hold-native", "hold-legacy", "idle-native",
             "idle-legacy", "idle-redis", "hotkey", "hotkey-nopoll", "fairness", "fairness-nopoll",
             "waitgraph-holder", "waitgraph-other"):
    if not (out / f"{name}.json").exists():
        continue
    r = load(name)

    def f(k, fmt="{:,}"):
        v = r.get(k)
        return "-" if v is None else fmt.format(v)

    extra = "-"
    if r.get("extra_name"):
        name_ = r["extra_name"]
        extra = f"{name_} {f('extra_us_p50')}/{f('extra_us_p99')}/{f('extra_us_max')} ({f('extra_count')})"
        if r.get("hold_us_max") is not None:
            held = r["hold_us_max"]
            extra += f"; longest SH hold {held:,} µs"
        if r.get("ex_after_release_us"):
            p50, p99, mx, n = r["ex_after_release_us"]
            extra += f"; EX granted after the last SH ahead let go {p50:,}/{p99:,}/{mx:,} ({n})"
    print(
        f"| {name} | {r['ops_per_sec']:,.0f} | {f('latency_us_p50')} | {f('latency_us_p99')} | "
        f"{f('latency_us_p999')} | {f('latency_us_max')} | "
        f"{f('conn_ops_min')}/{f('conn_ops_p50')}/{f('conn_ops_max')} | "
        f"{f('server_cpu_us_per_op', '{:.2f}')} | {f('server_rss_bytes')} | "
        f"{f('bytes_per_lock', '{:.1f}')} | {f('bytes_per_connection', '{:.0f}')} | {extra} |"
    )
