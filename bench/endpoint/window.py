#!/usr/bin/env python3
"""Measures the daemon (and optionally a Chromium) over a window of wall time.

Usage: window.py SECONDS DAEMON_PID [PROFILE_DIR]

Prints one JSON object: the daemon's CPU over the window as a percentage of one core (utime+stime
from /proc/PID/stat, clock ticks; exited threads included), its VmRSS at the end, the mean and max
of samples taken every 0.5 s, and, with PROFILE_DIR, the CPU of the Chromium processes whose
command line names it (per process alive at both ends of the window: no navigation happens inside
a window, so none comes or goes).
"""
import json
import os
import sys
import time

seconds, daemon = float(sys.argv[1]), int(sys.argv[2])
profile = sys.argv[3] if len(sys.argv) > 3 else None
ticks = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except OSError:
        return None


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def browser_pids():
    if not profile:
        return []
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if profile.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                found.append(int(pid))
        except OSError:
            pass
    return found


b0 = {p: cpu(p) for p in browser_pids()}
c0, t0 = cpu(daemon), time.monotonic()
samples = []
while True:
    samples.append(rss_kib(daemon))
    left = seconds - (time.monotonic() - t0)
    if left <= 0:
        break
    time.sleep(min(0.5, left))
c1, elapsed = cpu(daemon), time.monotonic() - t0
b1 = {p: cpu(p) for p in b0}
browser = sum(b1[p] - b0[p] for p in b0 if b0[p] is not None and b1[p] is not None)
print(json.dumps({
    "seconds": round(elapsed, 3),
    "daemon_cpu_pct": 100 * (c1 - c0) / ticks / elapsed,
    "rss_end_kib": samples[-1], "rss_mean_kib": sum(samples) / len(samples), "rss_max_kib": max(samples),
    "browser_processes": len(b0),
    "browser_cpu_pct": 100 * browser / ticks / elapsed if profile else None,
}))
