#!/usr/bin/python3
"""Snapshot of every process's CPU time (utime+stime, clock ticks) with its command line, as JSON:
procs.py FILE. bench/rollout/summary.py subtracts two snapshots to tell who used the CPU."""

import json
import os
import sys

snap = {}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        continue
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15
    snap[pid] = [int(fields[11]) + int(fields[12]), cmd[:120] or "[kernel]"]
with open(sys.argv[1], "w") as f:
    json.dump(snap, f)
