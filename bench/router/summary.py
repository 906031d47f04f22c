#!/usr/bin/env python3
"""Summarises bench/router.sh's raw wrk/h2load/redis-benchmark outputs: per target and load, the
median over rounds of requests/s, p50 and p99 (with the range), and the ratios against the better
peer (nginx, HAProxy); for TCP (redis-benchmark), requests/s per test and the ratio to direct.

Usage: summary.py OUT ROUNDS "LOADS" TARGET... (target names as bench/router.sh labels them)"""
import csv
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
    requests = int(re.search(r"(\d+) requests in", t)[1])
    return {"cmd": t.splitlines()[0][2:], "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", t)[1]),
            "p50": ms(pct["50"]), "p99": ms(pct["99"]), "errors": errors, **cpu(path + ".cpu", requests)}


def cpu(path, requests):
    """CPU µs a request (and of it in user space) of the target's processes, from PATH's ticks."""
    if not (os.path.exists(path) and requests):
        return {"cpu_us": None, "user_us": None}
    user, system, hz = (int(x) for x in open(path).read().split())
    return {"cpu_us": (user + system) / hz * 1e6 / requests, "user_us": user / hz * 1e6 / requests}


def h2(base):
    t = open(base + ".txt").read()
    lat = sorted(int(line.split()[2]) / 1000 for line in open(base + ".log") if line.strip())
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", t)
    return {"cmd": t.splitlines()[0][2:], "rps": float(re.search(r"([\d.]+) req/s", t)[1]),
            "p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "errors": int(m[5]) + int(m[6]) + int(m[7]), **cpu(base + ".cpu", int(m[4]))}


def round_of(path):
    """The round a raw file belongs to (its `-rN-` part)."""
    return int(re.search(r"-r(\d+)-", os.path.basename(path))[1])


def fmt_range(xs, f):
    return f"{f(statistics.median(xs))} ({f(min(xs))}-{f(max(xs))})"


def paired(v, runs, peers):
    """Per round, the target's req/s over the better peer's in that same round: the targets of a
    round run back to back, so this ratio cancels what drifts between rounds (another tenant, the
    CPU's clock). Median (min-max) and how many rounds it won."""
    ratios = []
    for x in v:
        same = [r for p in peers for r in runs[p] if r["round"] == x["round"]]
        if len(same) == len(peers):
            ratios.append(x["rps"] / max(r["rps"] for r in same))
    if not ratios:
        return "-"
    won = sum(r >= 1.0 for r in ratios)
    return f"{fmt_range(ratios, lambda x: f'{x:.2f}x')}, {won}/{len(ratios)}"


def table(title, runs):
    """runs: {target: [result per round]}"""
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("rps", "p50", "p99")} for k, v in runs.items() if v}
    peers = [p for p in PEERS if p in med]
    best = max(peers, key=lambda p: med[p]["rps"])   # throughput reference
    best_p99 = min(med[p]["p99"] for p in peers)     # latency reference: the lower peer p99
    rows = [("target", "req/s median (min-max)", "p50 ms", "p99 ms", f"req/s vs {best}", "p99 vs best peer",
             "per round vs better peer (won)", "CPU µs/req (user)", "errors", "goal")]
    for k, v in runs.items():
        if not v:
            continue
        r, p99r = med[k]["rps"] / med[best]["rps"], med[k]["p99"] / best_p99
        goal = "" if k in PEERS else ("met" if r >= 1.0 and p99r <= 1.2 else "NOT met") + " (>= 1.00x, p99 <= 1.20x)"
        cpu = [x["cpu_us"] for x in v if x.get("cpu_us") is not None]
        user = [x["user_us"] for x in v if x.get("user_us") is not None]
        rows.append((k, fmt_range([x["rps"] for x in v], lambda x: f"{x:,.0f}"),
                     fmt_range([x["p50"] for x in v], lambda x: f"{x:.2f}"),
                     fmt_range([x["p99"] for x in v], lambda x: f"{x:.2f}"),
                     f"{r:.2f}x", f"{p99r:.2f}x", "" if k in PEERS else paired(v, runs, peers),
                     f"{statistics.median(cpu):.1f} ({statistics.median(user):.1f})" if cpu else "-",
                     str(sum(x["errors"] for x in v)), goal))
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
    runs = {t: [dict(wrk(f), round=round_of(f)) for f in sorted(glob.glob(f"{out}/raw/c{c}-r*-{slug(t)}.txt"))]
            for t in targets}
    cmd = next(iter(runs.values()))[0]["cmd"]
    cmd = re.sub(r":(\d+)/", ":PORT/", cmd)
    table(f"HTTP/1.1, {rounds} interleaved rounds of `{cmd}` (medians; range over rounds)", runs)
h2_loads = sorted({re.match(r"h2-(\d+x\d+)-r", os.path.basename(f))[1]
                   for f in glob.glob(f"{out}/raw/h2-*x*-r*.txt")}, key=lambda l: -int(l.split("x")[0]) * int(l.split("x")[1]))
for load in h2_loads:
    h2runs = {t: [dict(h2(f[:-4]), round=round_of(f)) for f in sorted(glob.glob(f"{out}/raw/h2-{load}-r*-{slug(t)}.txt"))]
              for t in targets}
    if all(h2runs[p] for p in PEERS):
        cmd = h2runs["nginx"][0]["cmd"]
        cmd = re.sub(r"--log-file=\S+ ", "", re.sub(r":(\d+)/", ":PORT/", cmd))
        table(f"HTTP/2 (h2c, prior knowledge), {rounds} interleaved rounds of `{cmd}`", h2runs)


def redis(path):
    """One redis-benchmark --csv run: {TEST: (requests/s, p50 ms, p99 ms)}, and its CPU a request."""
    lines = open(path).read().splitlines()
    r = {"cmd": lines[0][2:]}
    rows = [row for row in csv.reader(lines[1:]) if row and row[0] != "test"]
    for row in rows:
        r[row[0]] = (float(row[1]), float(row[4]), float(row[6]))
    n = re.search(r"-n (\d+)", r["cmd"])
    r.update(cpu(path + ".cpu", int(n[1]) * len(rows) if n else 0))
    return r


if os.path.exists(f"{out}/tcp-targets.txt"):
    tcp_targets = open(f"{out}/tcp-targets.txt").read().split("\n")[:-1]
    runs = {t: [redis(f) for f in sorted(glob.glob(f"{out}/raw/tcp-r*-{slug(t)}.txt"))] for t in tcp_targets}
    if runs.get("direct"):
        cmd = re.sub(r"-p \d+", "-p PORT", runs["direct"][0]["cmd"])
        tests = [k for k in runs["direct"][0] if k not in ("cmd", "cpu_us", "user_us")]
        print(f"TCP (redis-server, one instance), {rounds} interleaved rounds of `{cmd}` (per test: requests/s "
              "median (min-max), p99 ms median, ratios of medians to direct and to HAProxy; CPU µs a request "
              "over all tests)")
        med = {t: {test: tuple(statistics.median(r[test][i] for r in v if test in r) for i in range(3))
                   for test in tests} for t, v in runs.items() if v}
        rows = [("target",) + tuple(tests) + ("CPU µs/req (user)",)]
        for t, v in runs.items():
            if not v:
                continue
            cells = []
            for test in tests:
                xs = [r[test][0] for r in v if test in r]
                rps, _, p99 = med[t][test]
                cell = fmt_range(xs, lambda x: f"{x:,.0f}") + f" p99 {p99:.3f}"
                if t != "direct":
                    cell += f" = {rps / med['direct'][test][0]:.2f}x"
                if t not in ("direct", "haproxy") and "haproxy" in med:
                    h = med["haproxy"][test]
                    cell += f", {rps / h[0]:.2f}x HAProxy (p99 {p99 / h[2]:.2f}x)"
                cells.append(cell)
            cpus = [r["cpu_us"] for r in v if r.get("cpu_us") is not None]
            users = [r["user_us"] for r in v if r.get("user_us") is not None]
            cells.append(f"{statistics.median(cpus):.1f} ({statistics.median(users):.1f})" if cpus else "-")
            rows.append((t,) + tuple(cells))
        w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  " + "  ".join(c.ljust(x) for c, x in zip(row, w)).rstrip())
        print()
