#!/usr/bin/env python3
"""Writes the stack tug serves in bench/router.sh: one service, REPLICAS instances of
bench/router/backend.sh (the same single-process nginx `return 200 "ok"` that nginx and HAProxy
front), behind `port: PORT`. Each instance listens on the private `$PORT` tug gives it.

Usage: gen_stack.py --port 31810 --backend /abs/path/backend.sh --dir /tmp/x [--replicas 3]
                    [--protocol http|tcp] > tug.yaml
       gen_stack.py --port 31831 --redis [--replicas 1] --protocol tcp > tug-tcp.yaml
                    (the TCP section: redis-server instances, probed with `tcp: true`)"""
import argparse

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--backend", help="absolute path of bench/router/backend.sh")
p.add_argument("--dir", help="BACKEND_DIR of the instances (configs, pids)")
p.add_argument("--redis", action="store_true", help="instances are redis-server (no persistence)")
p.add_argument("--replicas", type=int, default=3)
p.add_argument("--protocol", choices=["http", "tcp"], default="http")
a = p.parse_args()
if a.redis:
    print(f"""name: bench-router-tcp
services:
  redis:
    command: exec redis-server --port $PORT --bind 127.0.0.1 --save '' --appendonly no
    replicas: {a.replicas}
    port: {a.port}
    protocol: {a.protocol}
    healthcheck: {{ tcp: true, interval: 10s, start_interval: 10ms }}""")
    raise SystemExit
if not (a.backend and a.dir):
    p.error("--backend and --dir are required (or --redis)")
print(f"""name: bench-router
services:
  web:
    command: exec {a.backend!r}
    replicas: {a.replicas}
    port: {a.port}
    protocol: {a.protocol}
    environment: {{ BACKEND_DIR: {a.dir!r} }}
    healthcheck: {{ http: /, interval: 10s, start_interval: 10ms }}""")
