#!/usr/bin/env python3
"""Writes the stacks of bench/containers.sh.

Usage:
  gen.py levels --tool tug|compose --probe exec|http --image IMAGE [--levels 5] [--width 4]
         [--ready-after 200ms] [--start-interval 100ms] [--base-port 31300] [--init] > FILE
  gen.py flat --kind container|process --image IMAGE --demo PATH [--count 20]
         [--probe none|tcp] [--start-interval 10ms] [--init] > FILE

levels: LEVELS levels of WIDTH long-running `tug-demo` containers on the host's network; every
        service of level k > 0 depends on every service of level k-1 with condition healthy
        (Compose: `service_healthy`), so the critical path is LEVELS x READY_AFTER. Each answers
        /health with 503 until READY_AFTER after it started (DEMO_READY_AFTER).
  --probe exec: the same readiness check for both tools, run inside the container by the engine:
        `wget -q -O /dev/null http://127.0.0.1:$PORT/health` (busybox wget) through `sh -c`.
        tug: `{ exec: …, interval: 1s, start_interval: START_INTERVAL }`.
        Compose (file format 2.4; Engine 20.10 has no start_interval): `interval: START_INTERVAL`,
        `timeout: 1s`, `retries: 3`, `start_period: 10s` (failures in it do not count: tug counts
        at most one failure per `interval`, so neither can fail a container that is still starting).
  --probe http (tug only): tug's own probe from the host, `{ http: /health, … }`.
  Ports: tug gives each instance its own `$PORT` (TUG_PORT_RANGE); Compose gets the same
  variables explicitly, BASE_PORT + index.
flat:   COUNT independent services (no dependencies), as containers of IMAGE (its CMD) or as
        processes (`command: [DEMO]`), each on its own `$PORT`; without a probe (`--probe none`:
        `up -d` returns once every instance has started) or with a tcp probe.
"""
import argparse
import json
import re

p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="what", required=True)
lv = sub.add_parser("levels")
lv.add_argument("--tool", choices=["tug", "compose"], required=True)
lv.add_argument("--probe", choices=["exec", "http"], default="exec")
lv.add_argument("--image", required=True)
lv.add_argument("--levels", type=int, default=5)
lv.add_argument("--width", type=int, default=4)
lv.add_argument("--ready-after", default="200ms")
lv.add_argument("--start-interval", default="100ms")
lv.add_argument("--base-port", type=int, default=31300)
lv.add_argument("--init", action="store_true")
fl = sub.add_parser("flat")
fl.add_argument("--kind", choices=["container", "process"], required=True)
fl.add_argument("--image", required=True)
fl.add_argument("--demo", required=True, help="path of the tug-demo binary (processes)")
fl.add_argument("--count", type=int, default=20)
fl.add_argument("--probe", choices=["none", "tcp"], default="none")
fl.add_argument("--start-interval", default="10ms")
fl.add_argument("--init", action="store_true")
a = p.parse_args()

q = json.dumps   # a YAML double-quoted scalar is a JSON string
WGET = "wget -q -O /dev/null http://127.0.0.1:{port}/health"

if a.what == "levels":
    if not re.fullmatch(r"\d+ms", a.ready_after) or not re.fullmatch(r"\d+(ms|s)", a.start_interval):
        raise SystemExit("--ready-after: milliseconds, such as 200ms; --start-interval: such as 100ms or 1s")
    names = [[f"l{level}-s{i}" for i in range(a.width)] for level in range(a.levels)]
    if a.tool == "tug":
        out = [f"name: bench-containers-{a.probe}", "services:"]
        for level, row in enumerate(names):
            for name in row:
                out += [
                    f"  {name}:",
                    f"    image: {a.image}",
                    "    pull: never",
                    f"    environment: {{ DEMO_READY_AFTER: {a.ready_after} }}",
                ]
                if a.init:
                    out.append("    init: true")
                if a.probe == "exec":
                    check = "exec: " + q(WGET.format(port="$PORT"))
                else:
                    check = "http: /health"
                out.append(f"    healthcheck: {{ {check}, interval: 1s, timeout: 1s, start_interval: {a.start_interval} }}")
                if level > 0:
                    out.append("    depends_on: { " + ", ".join(f"{d}: healthy" for d in names[level - 1]) + " }")
    else:
        if a.probe != "exec":
            raise SystemExit("compose: only --probe exec (an engine healthcheck)")
        out = ["version: '2.4'", "services:"]
        port = a.base_port
        for level, row in enumerate(names):
            for name in row:
                out += [
                    f"  {name}:",
                    f"    image: {a.image}",
                    "    network_mode: host",
                    f"    environment: {{ HOST: 127.0.0.1, PORT: '{port}', DEMO_READY_AFTER: {a.ready_after} }}",
                ]
                if a.init:
                    out.append("    init: true")
                # `$$` is Compose's escape: the container's shell expands $PORT.
                test = q(["CMD-SHELL", WGET.format(port="$$PORT")])
                out.append(f"    healthcheck: {{ test: {test}, interval: {a.start_interval}, timeout: 1s, retries: 3, start_period: 10s }}")
                if level > 0:
                    out.append("    depends_on: { " + ", ".join(f"{d}: {{ condition: service_healthy }}" for d in names[level - 1]) + " }")
                port += 1
else:
    out = [f"name: bench-start-{a.kind}s-{a.probe}", "services:"]
    for i in range(a.count):
        out.append(f"  s{i}:")
        if a.kind == "container":
            out += [f"    image: {a.image}", "    pull: never"]
            if a.init:
                out.append("    init: true")
        else:
            out.append(f"    command: [{q(a.demo)}]")
        if a.probe == "tcp":
            out.append(f"    healthcheck: {{ tcp: true, interval: 1s, start_interval: {a.start_interval} }}")
print("\n".join(out))
