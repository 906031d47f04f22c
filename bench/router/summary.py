#!/usr/bin/env python3
"""Summarises bench/router.sh's raw wrk/h2load outputs: per target and load, the median over rounds
of requests/s, p50 and p99 (with the range), and the ratios against the better peer (nginx, HAProxy).

Usage: summary.py OUT ROUNDS "LOADS" TARGET... (target names as bench/router.sh labels them)"""
import glob
import os
import re
import statistics
import sys

out, rounds, loads, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
PEERS = ["nginx", "haproxy"]
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def slug(name):
    return re.sub(r"[^a-zA-Z0-9]", "_", name)


def ms(text):
    v, u = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(v) * UNIT[u]


def wrk(path):
    t = open(path).read()
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", t, re.M))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t))
    errors += int((re.search(r"Non-2xx or 3xx responses: (\d+)", t) or [0, 0])[1])
    return {"cmd": t.splitlines()[0][2:], "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", t)[1]),
            "p50": ms(pct["50"]), "p99": ms(pct["99"]), "errors": errors}


def h2(base):
    t = open(base + ".txt").read()
    lat = sorted(int(line.split()[2]) / 1000 for line in open(base + ".log") if line.strip())
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", t)
    return {"cmd": t.splitlines()[0][2:], "rps": float(re.search(r"([\d.]+) req/s", t)[1]),
            "p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "errors": int(m[5]) + int(m[6]) + int(m[7])}


def fmt_range(xs, f):
    return f"{f(statistics.median(xs))} ({f(min(xs))}-{f(max(xs))})"


def table(title, runs):
    """runs: {target: [result per round]}"""
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("rps", "p50", "p99")} for k, v in runs.items() if v}
    peers = [p for p in PEERS if p in med]
    best = max(peers, key=lambda p: med[p]["rps"])   # throughput reference
    best_p99 = min(med[p]["p99"] for p in peers)     # latency reference: the lower peer p99
    rows = [("target", "req/s median (min-max)", "p50 ms", "p99 ms", f"req/s vs {best}", "p99 vs best peer", "errors", "goal")]
    for k, v in runs.items():
        if not v:
            continue
        r, p99r = med[k]["rps"] / med[best]["rps"], med[k]["p99"] / best_p99
        goal = "" if k in PEERS else ("met" if r >= 1.0 and p99r <= 1.2 else "NOT met") + " (>= 1.00x, p99 <= 1.20x)"
        rows.append((k, fmt_range([x["rps"] for x in v], lambda x: f"{x:,.0f}"),
                     fmt_range([x["p50"] for x in v], lambda x: f"{x:.2f}"),
                     fmt_range([x["p99"] for x in v], lambda x: f"{x:.2f}"),
                     f"{r:.2f}x", f"{p99r:.2f}x", str(sum(x["errors"] for x in v)), goal))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(title)
    for row in rows:
        print("  " + "  ".join(c.ljust(x) for c, x in zip(row, w)).rstrip())
    print()


print(open(f"{out}/machine.txt").read().strip())
print()
direct = sorted(glob.glob(f"{out}/raw/backend-*.txt"))
if direct:
    rs = [wrk(p) for p in direct]
    cmd = re.sub(r":(\d+)/", ":PORT/", rs[0]["cmd"])
    print(f"backends direct (each alone, `{cmd}`): "
          + ", ".join(f"{os.path.basename(p)[8:-4]}: {r['rps']:,.0f} req/s p99 {r['p99']:.2f} ms" for p, r in zip(direct, rs)))
    print()
for c in loads:
    runs = {t: [wrk(f) for f in sorted(glob.glob(f"{out}/raw/c{c}-r*-{slug(t)}.txt"))] for t in targets}
    cmd = next(iter(runs.values()))[0]["cmd"]
    cmd = re.sub(r":(\d+)/", ":PORT/", cmd)
    table(f"HTTP/1.1, {rounds} interleaved rounds of `{cmd}` (medians; range over rounds)", runs)
h2runs = {p: [h2(f[:-4]) for f in sorted(glob.glob(f"{out}/raw/h2-r*-{p}.txt"))] for p in PEERS}
if all(h2runs.values()):
    cmd = h2runs["nginx"][0]["cmd"]
    cmd = re.sub(r"--log-file=\S+ ", "", re.sub(r":(\d+)/", ":PORT/", cmd))
    table(f"HTTP/2 (h2c, prior knowledge), {rounds} rounds of `{cmd}`", h2runs)
