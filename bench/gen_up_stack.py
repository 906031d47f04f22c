#!/usr/bin/env python3
"""Writes the `tug up -d` benchmark stack: LEVELS levels of WIDTH long-running services; every
service of level k > 0 depends (`condition: healthy`) on two services of level k-1, so the
critical path is LEVELS x READY_AFTER. Each service becomes ready READY_AFTER after it starts.

Usage: gen_up_stack.py [--probe http|log] [--start-interval 10ms] [--levels 5] [--width 10]
                       [--ready-after 200ms] [--demo PATH] > tug.yaml

--probe http: the service is `tug-demo` with DEMO_READY_AFTER; readiness is `GET /health`
              (503 until READY_AFTER, then 200), probed every START_INTERVAL until it first passes.
--probe log:  the service is `sh -c 'sleep READY_AFTER; echo ready; exec sleep ...'`; readiness is
              the log line `ready`, checked every START_INTERVAL until it first passes.
After the first success both probe every 2s (the default `interval`)."""
import argparse
import re

p = argparse.ArgumentParser()
p.add_argument("--probe", choices=["http", "log"], default="http")
p.add_argument("--start-interval", default="10ms")
p.add_argument("--levels", type=int, default=5)
p.add_argument("--width", type=int, default=10)
p.add_argument("--ready-after", default="200ms")
p.add_argument("--demo", default="tug-demo", help="path of the tug-demo binary (http probe)")
a = p.parse_args()

m = re.fullmatch(r"(\d+)ms", a.ready_after)
if not m:
    raise SystemExit("--ready-after: write milliseconds, such as 200ms")
seconds = int(m.group(1)) / 1000

out = [f"name: bench-up-{a.probe}", "services:"]
for level in range(a.levels):
    for i in range(a.width):
        out.append(f"  l{level}-s{i}:")
        if a.probe == "http":
            out += [
                f"    command: [{a.demo!r}]",
                f"    environment: {{ DEMO_READY_AFTER: {a.ready_after} }}",
                f"    healthcheck: {{ http: /health, interval: 2s, start_interval: {a.start_interval} }}",
            ]
        else:
            out += [
                f"    command: [sh, -c, 'sleep {seconds:g}; echo ready; exec sleep 86400']",
                f"    healthcheck: {{ log: '^ready$', interval: 2s, start_interval: {a.start_interval} }}",
            ]
        if level > 0:
            deps = sorted({f"l{level - 1}-s{i}", f"l{level - 1}-s{(i + 1) % a.width}"})
            out.append("    depends_on: { " + ", ".join(f"{d}: healthy" for d in deps) + " }")
print("\n".join(out))
