#!/usr/bin/python3
"""Summary of bench/rollout.sh: summary.py OUT "STRATEGIES" ROUNDS FLAGGER_FLOOR_SECONDS."""

import datetime
import json
import os
import statistics
import sys

out, strategies, rounds, floor = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), float(sys.argv[4])
raw = os.path.join(out, "raw")
cap = json.load(open(os.path.join(out, "capacity.json")))
capacity = cap["capacity"]


def epoch(rfc3339):
    if not rfc3339:
        return None
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def procs(p, m):
    """CPU ticks over the load of the instances (tug-demo, ours) and of every other process (by
    command, without ours: the daemon, wrk, the drivers), from two /proc snapshots."""
    try:
        a, b = json.load(open(p + ".procs0.json")), json.load(open(p + ".procs1.json"))
    except (OSError, ValueError):
        return None, None
    demo, others = 0, {}
    for pid, (ticks, cmd) in b.items():
        delta = ticks - a.get(pid, [0])[0] if pid in a and a[pid][1] == cmd else ticks
        if delta <= 0:
            continue
        if out in cmd and cmd.split()[0].endswith("/tug-demo"):
            demo += delta
        elif (out in cmd and "/tug " in cmd + " ") or cmd.startswith("wrk ") or "procs.py" in cmd:
            continue
        else:
            words = cmd.split()
            label = " ".join([os.path.basename(words[0])] + words[1:2]) if words else cmd
            others[label] = others.get(label, 0) + delta
    return demo, others


def fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


print()
print(f"capacity of the stack's port (3 tug-demo behind tug's router, wrk -t{cap['threads']} -c{cap['conns']} -d5s): "
      f"runs {', '.join(f'{r:,.0f}' for r in cap['runs'])} req/s, median {capacity:,.0f}; "
      f"paced load: {cap['rate']:,} req/s ({cap['fraction']} of it)")
print()

# --- 1. strategies -------------------------------------------------------------------------------
rows = [["strategy", "requests", "failures", "non-2xx", "socket errors", "rate req/s (× capacity)",
         "during rollout (× cap.)", "deploy CLI s", "rollout s", "p99 / max ms", "new version share"]]
details = []
machine = [["strategy", "CPU busy (2 cores)", "steal", "daemon CPU", "wrk CPU", "tug-demo ×3+", "others (top)",
            "daemon RSS before→after (peak)", "load1 before→after"]]
checks = []
for s in strategies:
    p = os.path.join(raw, f"load-{s}")
    try:
        d, m = json.load(open(p + ".json")), json.load(open(p + ".meta.json"))
    except (OSError, ValueError) as e:
        rows.append([s, f"missing: {e}"] + [""] * (len(rows[0]) - 2))
        continue
    st = {}
    if os.path.exists(p + ".status.json"):
        try:
            st = json.load(open(p + ".status.json"))
        except ValueError:
            pass
    e = d["errors"]
    sock = e["connect"] + e["read"] + e["write"] + e["timeout"]
    failures = d["non_2xx"] + sock
    secs = d["duration_us"] / 1e6
    rate = d["requests"] / secs
    # the rate while the rollout ran: whole 100 ms buckets from the deploy to the rollout's end
    t0, t1 = m["t_deploy"], m["t_end"]
    during = [b for b in d["timeline"] if t0 <= b["t"] and b["t"] + 0.1 <= t1]
    during_rate = sum(b["n"] for b in during) / (len(during) / 10) if during else None
    deploy_s = float(m["t_deploy_returned"]) - t0 if m["t_deploy_returned"] else None
    rollout_s = None
    if st.get("started_at") and st.get("finished_at"):
        rollout_s = epoch(st["finished_at"]) - epoch(st["started_at"])
    versions = d["versions"]
    label = s + (" (no deploy: noise floor)" if s == "none" else "")
    label += " (peer-less baseline: stop all, start all)" if s == "recreate" else ""
    newest = max((v for v in versions if v.isdigit()), key=int, default=None)
    share = f"{versions.get(newest, 0) / max(d['responses'], 1):.0%} v{newest}" if s != "none" else "-"
    sock_text = f"{sock}" + (f" (c{e['connect']} r{e['read']} w{e['write']} t{e['timeout']})" if sock else "")
    rows.append([label, f"{d['requests']:,}", f"{failures:,}", f"{d['non_2xx']:,}", sock_text,
                 f"{rate:,.0f} ({rate / capacity:.2f})",
                 "-" if during_rate is None else f"{during_rate:,.0f} ({during_rate / capacity:.2f})",
                 fmt(deploy_s), fmt(rollout_s), f"{d['latency_us']['p99'] / 1000:.1f} / {d['latency_us']['max'] / 1000:.0f}",
                 share])
    hz, wall = m["hz"], m["t_stop"] - m["t_load"]
    busy = 1 - m["idle_ticks"] / max(m["cpu_ticks"], 1)
    demo_cpu, others = procs(p, m)
    others_text = "-"
    if others is not None:
        top = [(k, v) for k, v in sorted(others.items(), key=lambda kv: -kv[1])[:2] if v / hz / wall >= 0.02]
        others_text = f"{sum(others.values()) / hz / wall:.0%}" + (
            " (" + "; ".join(f"{k[:40]} {v / hz / wall:.0%}" for k, v in top) + ")" if top else "")
    machine.append([s, f"{busy:.0%}", f"{m['steal_ticks'] / max(m['cpu_ticks'], 1):.1%}",
                    f"{m['daemon_ticks'] / hz / wall:.0%} of a core", f"{m['wrk_ticks'] / hz / wall:.0%} of a core",
                    "-" if demo_cpu is None else f"{demo_cpu / hz / wall:.0%}", others_text,
                    f"{m['daemon_rss_kb'][0] / 1024:.0f}→{m['daemon_rss_kb'][1] / 1024:.0f} MiB "
                    f"({m.get('daemon_hwm_kb', 0) / 1024:.0f})",
                    f"{m['load1'][0]}→{m['load1'][1]}"])
    # wrk's own count ("Non-2xx or 3xx responses", i.e. status > 399) against the Lua hook's
    wrk_non = 0
    for line in open(p + ".wrk.txt"):
        if "Non-2xx or 3xx responses:" in line:
            wrk_non = int(line.split(":")[1])
    lua_4xx5xx = sum(n for k, n in d["statuses"].items() if int(k) > 399)
    checks.append(f"{s}: {'ok' if wrk_non == lua_4xx5xx else 'MISMATCH'} (wrk {wrk_non}, hook {lua_4xx5xx}"
                  f"{', of which 1xx/3xx ' + str(d['non_2xx'] - lua_4xx5xx) if d['non_2xx'] != lua_4xx5xx else ''})")
    # stalls: 100 ms buckets with under half the paced rate (whole buckets only)
    tl = d["timeline"][1:-1]
    slow = [b for b in tl if b["n"] < m["rate_target"] / 10 / 2]
    missing = sum(round((b2["t"] - b1["t"]) * 10) - 1 for b1, b2 in zip(tl, tl[1:]))
    if slow or missing:
        offsets = ", ".join("%+.1f" % (b["t"] - t0) for b in slow[:12]) + (" …" if len(slow) > 12 else "")
        details.append(f"{s}: {len(slow)} of {len(tl)} 100-ms buckets under half the paced rate and {missing} with "
                       f"no response at all (offsets of the slow ones from the deploy, s: {offsets})")
    if failures:
        f = d["failures"]
        by = {int(k): n for k, n in d["statuses"].items() if not 200 <= int(k) <= 299}
        text = f"{s}: {failures} failures: " + ", ".join(f"{n} × HTTP {k}" for k, n in sorted(by.items()))
        if sock:
            text += f", {sock} socket errors (connect {e['connect']}, read {e['read']}, write {e['write']}, timeout {e['timeout']})"
        if f:
            text += (f"; non-2xx from {d['first_fail'] - t0:+.3f} s to {d['last_fail'] - t0:+.3f} s after the deploy "
                     f"started (answering instances: {sorted({x['instance'] for x in f})}, '-': the router itself)")
        details.append(text)
        # the deploy's progress lines around the failures, on the same clock
        if os.path.exists(p + ".deploy.txt"):
            for line in open(p + ".deploy.txt"):
                t, _, rest = line.partition(" ")
                try:
                    details.append(f"    {float(t) - t0:+.3f} s  {rest.rstrip()}")
                except ValueError:
                    pass

print(f"1. rollouts under a paced load of {cap['rate']:,} req/s ({cap['fraction']} of capacity), wrk -t{cap['threads']} "
      f"-c{cap['conns']} keep-alive; failures = non-2xx + socket errors (connect/read/write/timeout 2 s)")
print(table(rows))
print()
print("machine during each load (2 cores; CPU from /proc/stat over the load; daemon = tug daemon incl. its router)")
print(table(machine))
print()
print("counting check, wrk's \"Non-2xx or 3xx responses\" (status > 399) against the response hook: " + "; ".join(checks))
if details:
    print()
    print("\n".join(details))

# --- 2. bad canary -------------------------------------------------------------------------------
print()
crow = [["round", "requests", "rate req/s", "deploy → first bad s", "first bad → last bad s",
         "first bad → weight 0 (status) s", "first bad → rolled_back s", "bad answers (500)", "deploy exit",
         "reason"]]
last, rolled = [], []
for r in range(1, rounds + 1):
    p = os.path.join(raw, f"canary-{r}.json")
    try:
        c = json.load(open(p))
    except (OSError, ValueError) as e:
        crow.append([r, f"missing: {e}"] + [""] * (len(crow[0]) - 2))
        continue
    if c["first_bad_to_last_bad_s"] is not None:
        last.append(c["first_bad_to_last_bad_s"])
    if c["first_bad_to_rolled_back_s"] is not None:
        rolled.append(c["first_bad_to_rolled_back_s"])
    crow.append([r, c["requests"], c["rate"], fmt(c["deploy_to_first_bad_s"], 3), fmt(c["first_bad_to_last_bad_s"], 3),
                 fmt(c["first_bad_to_weight_zero_s"], 3), fmt(c["first_bad_to_rolled_back_s"], 3),
                 f"{c['bad_responses']} ({c['bad_500']})", c["deploy_rc"], (c["reason"] or c["phase"] or "")[:70]])
print("2. bad canary (30% of its answers 500, steps 10/50/100, step_duration 30s, max_error_rate 1%, "
      "min_requests 20) at ~200 req/s")
print(table(crow))
if last:
    print()
    print(f"first bad response → last bad response (all traffic back on stable): median {statistics.median(last):.2f} s, "
          f"max {max(last):.2f} s (goal < 5 s); × Flagger's floor ({floor:.0f} s): median "
          f"{statistics.median(last) / floor:.3f}, max {max(last) / floor:.3f}")
if rolled:
    print(f"first bad response → `tug rollout status` says rolled_back: median {statistics.median(rolled):.2f} s, "
          f"max {max(rolled):.2f} s; × Flagger's floor: median {statistics.median(rolled) / floor:.3f}")
print(f"Flagger's floor, assumed: one analysis interval of 10 s plus its metric window (1 m default) = {floor:.0f} s "
      f"before a first failed check can even be counted.")
print()
print(open(os.path.join(out, "machine.txt")).read().rstrip())
