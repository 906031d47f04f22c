#!/usr/bin/env python3
"""The summary of bench/endpoint.sh, from the files in its results folder.

Usage: summary.py OUT DURATION SCRAPE_RATE WINDOW LIGHT_RATE
"""
import collections
import csv
import glob
import json
import re
import statistics
import sys

out, duration, scrape_rate, window, light_rate = sys.argv[1:6]
med = statistics.median


def seconds(text):   # wrk's latency: 812.00us, 5.23ms, 1.02s
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60}[m.group(2)]


def wrk(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p99 = seconds(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return rps, p99, errors + (int(non2xx.group(1)) if non2xx else 0)


def pct(values, q):   # nearest rank
    values = sorted(values)
    return values[max(0, min(len(values) - 1, round(q * len(values) + 0.5) - 1))]


def spread(values, fmt):
    return f"{fmt(med(values))} ({fmt(min(values))}–{fmt(max(values))})" if len(values) > 1 else fmt(values[0])


def table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def series(path):
    lines = [line for line in open(path) if line.strip()]
    return sum(1 for line in lines if not line.startswith("#")), sum(1 for line in lines if line.startswith("# TYPE"))


lines = []
say = lines.append
say("tug endpoint benchmark (bench/endpoint.sh)")
say(open(f"{out}/build.txt").read().strip() if glob.glob(f"{out}/build.txt") else "")
say(open(f"{out}/machine.txt").read().strip())
say("")

import os
has = lambda name: os.path.exists(f"{out}/raw/{name}")
times1, size1 = [], 0   # part 1's scrapes: part 3 compares with them

# --- part 1 -----------------------------------------------------------------------------------------
def part1():
    global times1, size1
    runs = {"off": [], "on": []}
    for row in csv.DictReader(open(f"{out}/raw/part1.tsv"), delimiter="\t"):
        rps, p99, errors = wrk(f"{out}/raw/wrk-r{row['round']}-{row['mode']}.txt")
        cpu = 100 * int(row["daemon_ticks"]) / 100 / float(row["seconds"])   # USER_HZ = 100
        runs[row["mode"]].append({"round": row["round"], "rps": rps, "p99": p99, "errors": errors, "cpu": cpu,
                                  "scrapes": int(row["scrapes"]), "scrape_s": float(row["scrape_seconds"])})
    scrape_lines = [line.split() for f in sorted(glob.glob(f"{out}/raw/scrapes-r*.txt")) for line in open(f)]
    ok = [line for line in scrape_lines if line[0] == "200"]
    times1 = [float(line[1]) for line in ok]
    size1 = int(ok[-1][2]) if ok else 0
    rate = sum(r["scrapes"] for r in runs["on"]) / max(1e-9, sum(r["scrape_s"] for r in runs["on"]))
    off, on = runs["off"], runs["on"]
    rps_ratio = med([r["rps"] for r in on]) / med([r["rps"] for r in off])
    p99_ratio = med([r["p99"] for r in on]) / med([r["p99"] for r in off])
    say(f"1. Router throughput, /metrics scraped at {scrape_rate} (on) vs never (off): wrk -t2 -c64 -d{duration} --latency,")
    say(f"   one service, 2 tug-demo instances behind port:; {len(off)} rounds interleaved; medians (range)")
    say(table([
        ("", "off", "on", "on/off", "goal"),
        ("requests/s", spread([r["rps"] for r in off], lambda v: f"{v:,.0f}"), spread([r["rps"] for r in on], lambda v: f"{v:,.0f}"),
         f"{rps_ratio:.3f}", f"within 3%: {'met' if abs(rps_ratio - 1) < 0.03 else 'NOT met'}"),
        ("p99", spread([r["p99"] * 1e3 for r in off], lambda v: f"{v:.2f} ms"), spread([r["p99"] * 1e3 for r in on], lambda v: f"{v:.2f} ms"),
         f"{p99_ratio:.3f}", f"within 3%: {'met' if abs(p99_ratio - 1) < 0.03 else 'NOT met'}"),
        ("daemon CPU (% of a core)", spread([r["cpu"] for r in off], lambda v: f"{v:.0f}%"), spread([r["cpu"] for r in on], lambda v: f"{v:.0f}%"),
         f"{med([r['cpu'] for r in on]) / max(1e-9, med([r['cpu'] for r in off])):.3f}", ""),
        ("errors (socket + non-2xx)", str(sum(r["errors"] for r in off)), str(sum(r["errors"] for r in on)), "", ""),
    ]))
    # The same ratios within each round (its off and on run back to back): slow drift of a shared
    # machine cancels out; the range says how far a single pair can stray.
    pairs = [(a, b) for a in off for b in on if a["round"] == b["round"]]
    for key, label in (("rps", "requests/s"), ("p99", "p99")):
        ratios = [b[key] / a[key] for a, b in pairs]
        say(f"   on/off within each round, {label}: median {med(ratios):.3f} (range {min(ratios):.3f}–{max(ratios):.3f})")
    statuses = ", ".join(f"{n} x {code}" for code, n in sorted(collections.Counter(l[0] for l in scrape_lines).items()))
    every = [float(line[1]) for line in scrape_lines]
    if every:
        say(f"   scrapes while on: {len(scrape_lines)} ({rate:.1f}/s; {statuses}), each {med(every) * 1e3:.2f} ms median "
            f"(p95 {pct(every, 0.95) * 1e3:.2f}), {int(scrape_lines[-1][2]):,} bytes")
    say("")

if has("part1.tsv"):
    part1()
elif has("metrics-1.prom"):
    size1 = os.path.getsize(f"{out}/raw/metrics-1.prom")

# --- part 2 -----------------------------------------------------------------------------------------
def part2():
    windows = [json.loads(line) for line in open(f"{out}/raw/part2.jsonl")]
    by = {m: [w for w in windows if w["mode"] == m] for m in ("blank", "ui")}
    def figure(key, scale=1.0):
        return [w[key] * scale for w in by["blank"]], [w[key] * scale for w in by["ui"]]
    rows = [("", "no dashboard (about:blank)", "dashboard open (/ui/)", "difference", "per round: median (range)")]
    for label, key, scale, fmt in (("daemon CPU (% of a core)", "daemon_cpu_pct", 1, "{:.2f}%"),
                                   ("daemon VmRSS at the end", "rss_end_kib", 1 / 1024, "{:.1f} MiB"),
                                   ("daemon VmRSS, max of samples", "rss_max_kib", 1 / 1024, "{:.1f} MiB"),
                                   ("Chromium CPU (all its processes)", "browser_cpu_pct", 1, "{:.1f}%"),
                                   ("light load achieved (req/s)", "light_rps", 1, "{:.1f}")):
        a, b = figure(key, scale)
        f = lambda v: fmt.format(v)
        # Paired: open minus not open within each round (back to back), so drift between rounds
        # (the allocator returning memory, a neighbour's load) does not count as the dashboard's.
        paired = [u[key] * scale - w[key] * scale for w in by["blank"] for u in by["ui"] if u["round"] == w["round"]]
        signed = lambda v: ("+" if v >= 0 else "") + fmt.format(v)
        rows.append((label, spread(a, f), spread(b, f), signed(med(b) - med(a)),
                     f"{signed(med(paired))} ({signed(min(paired))} to {signed(max(paired))})"))
    say(f"2. The dashboard's cost to the daemon: {window} s windows at {light_rate} req/s (wrk -t1 -c4, paced), "
        f"{len(by['ui'])} rounds interleaved; medians (range)")
    say(table(rows))
    flowing = sum(1 for w in by["ui"] if w["page_before"].split("|")[0] != w["page_after"].split("|")[0])
    say(f"   the page's clock moved across {flowing} of {len(by['ui'])} dashboard windows "
        f"(e.g. {by['ui'][0]['page_before']} -> {by['ui'][0]['page_after']})")
    sse = json.load(open(f"{out}/raw/sse.json"))
    if sse["snapshots"]:
        say(f"   event stream (curl -N /ui/events, {sse['seconds']} s): {sse['snapshots']} snapshots, "
            f"{sse['bytes'] / sse['snapshots'] / 1024:.1f} KiB each")
    say("")


# --- part 3 -----------------------------------------------------------------------------------------
def part3():
    p3 = json.load(open(f"{out}/raw/part3.json"))
    rows3 = [line.split() for line in open(f"{out}/raw/scrapes-3.txt")]
    good = [r for r in rows3 if r[0] == "200"]
    total = [float(r[1]) for r in good]
    first_byte = [float(r[2]) for r in good]
    size3 = int(good[-1][3]) if good else 0
    n3, fam3 = series(f"{out}/raw/metrics-3.prom")
    n1, fam1 = series(f"{out}/raw/metrics-1.prom")
    idle_rate = p3["idle"]["daemon_cpu_pct"] / 100   # core-seconds per second
    cpu_per_scrape = max(0.0, p3["daemon_ticks"] / 100 - idle_rate * p3["seconds"]) / max(1, len(rows3))
    say(f"3. /metrics with {p3['instances']} instances (`tug up -d` took {p3['up_seconds']:.2f} s): "
        f"{len(rows3)} sequential scrapes with curl, {len(rows3) - len(good)} not 200")
    say(table([
        ("", "median", "p95", "max"),
        ("scrape time (curl time_total)", f"{med(total) * 1e3:.2f} ms", f"{pct(total, 0.95) * 1e3:.2f} ms", f"{max(total) * 1e3:.2f} ms"),
        ("time to first byte", f"{med(first_byte) * 1e3:.2f} ms", f"{pct(first_byte, 0.95) * 1e3:.2f} ms", f"{max(first_byte) * 1e3:.2f} ms"),
    ]))
    gz = "not compressed when gzip is asked for" if p3["gzip_bytes"] == size3 else f"{p3['gzip_bytes']:,} when gzip is asked for"
    say(f"   body: {size3:,} bytes ({gz}), {n3:,} series in {fam3} families; "
        f"daemon CPU {cpu_per_scrape * 1e3:.1f} ms per scrape (less its idle {idle_rate * 100:.2f}%), VmRSS {p3['rss_kib'] / 1024:.1f} MiB")
    if times1:
        say(f"   for scale, part 1's stack (1 service, 2 instances): {med(times1) * 1e3:.2f} ms, {size1:,} bytes, {n1} series "
            f"-> {med(total) / med(times1):.1f}x the time for {size3 / max(1, size1):.0f}x the bytes")

if has("part2.jsonl"):
    part2()
if has("part3.json"):
    part3()

text = "\n".join(lines)
print(text)
